#!/usr/bin/env bash
# Builds the envtest tier's tools from their Go modules, once, into a cache outside the repo:
#   kube-apiserver and kubectl  k8s.io/kubernetes  (cmd/kube-apiserver, cmd/kubectl)
#   etcd                        go.etcd.io/etcd/server/v3
#   helm                        helm.sh/helm/v3    (cmd/helm; for the chart's lint/template tests)
# Versions: scripts/envtest-versions.env. Cache: $VMLEASE_TOOLS_DIR (default
# ~/.cache/vmlease-tools)/envtest-k8s<v>-etcd<v>-helm<v>/bin, the path tests/envtest/apiserver.py
# looks in.
#
# Why build: no download site is reachable here, only the Go module proxy, and setup-envtest fetches
# prebuilt archives. Why not Debian's etcd-server: it is 3.4, two minors behind what Kubernetes
# 1.34 is tested with (3.6). Why not /usr/bin/kubectl: it is the Cloud SDK's dispatcher
# (v1.32.4-dispatcher, bundled kubectls up to 1.33), and against this 1.34 server it warns that the
# skew exceeds +/-1; a kubectl built from the same tree as the apiserver has no skew at all.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces the k8s.io/* staging modules by
# local paths. So a throwaway wrapper module requires it and replaces each staging module by its
# published v0.<minor>.<patch> twin; the list of staging modules is read from that go.mod, so it
# is right for whichever version is pinned. etcd's server module has local replaces too.
#
# Idempotent: if every binary exists and runs, nothing happens (well under a second). A cold build
# takes minutes on 2 cores; parallelism is capped at 2 packages (GOFLAGS=-p=2). The Go module and
# build caches stay where `go env` puts them (outside the repo); nothing is written to the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/envtest-versions.env

TOOLS_DIR=${VMLEASE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmlease-tools}
DEST=$TOOLS_DIR/envtest-k8s$K8S_VERSION-etcd$ETCD_VERSION-helm$HELM_VERSION/bin

say() { echo "install-envtest: $*"; }
die() { echo "install-envtest: ERROR: $*" >&2; exit 1; }

# tools_work DIR: true when every binary in DIR runs and reports the pinned version.
tools_work() {
    "$1/kube-apiserver" --version 2>/dev/null | grep -qx "Kubernetes v$K8S_VERSION" \
        && "$1/kubectl" version --client 2>/dev/null | grep -q "v$K8S_VERSION" \
        && "$1/etcd" --version 2>/dev/null | grep -q "etcd Version: $ETCD_VERSION" \
        && "$1/helm" version --short 2>/dev/null | grep -q "^v$HELM_VERSION"
}

if tools_work "$DEST"; then
    say "up to date: $DEST"
    exit 0
fi

GO=$(command -v go || true)
[ -n "$GO" ] || GO=/usr/local/go/bin/go
[ -x "$GO" ] || die "no Go toolchain (looked in PATH and /usr/local/go/bin)"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-p=2 -trimpath -buildvcs=false"
say "building into $DEST with $("$GO" version) (GOFLAGS=$GOFLAGS)"

WORK=$(mktemp -d)
step="preparing"
# One exit trap both cleans up and names the failed step. (`build_x || die` would not work:
# bash ignores `set -e` inside a function called on the left of `||`.)
trap 'rc=$?; rm -rf "$WORK"; [ $rc -eq 0 ] || echo "install-envtest: ERROR: failed while $step (exit $rc; output above)" >&2' EXIT
STAGE=$WORK/bin
mkdir -p "$STAGE"
start=$SECONDS

# wrapper_module DIR: an empty module to build other modules' commands from.
wrapper_module() {
    mkdir -p "$1"
    (cd "$1" && "$GO" mod init "vmlease.invalid/envtest-tools/$(basename "$1")" >/dev/null 2>&1)
}

build_kubernetes() {
    local mod=$WORK/kubernetes minor=${K8S_VERSION#*.} staging
    minor=${minor%%.*}
    wrapper_module "$mod"
    cd "$mod"
    "$GO" mod download k8s.io/kubernetes@"v$K8S_VERSION"
    staging=$("$GO" mod download -json k8s.io/kubernetes@"v$K8S_VERSION" \
        | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' \
        | xargs sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => \./staging/.*#\1#p')
    [ -n "$staging" ] || die "found no staging replaces in k8s.io/kubernetes v$K8S_VERSION go.mod"
    for m in $staging; do
        "$GO" mod edit -replace "$m=$m@v0.${K8S_VERSION#*.}"
    done
    say "k8s.io/kubernetes v$K8S_VERSION: resolving modules ($(wc -w <<<"$staging") staging replaces)"
    "$GO" get k8s.io/kubernetes/cmd/kube-apiserver@"v$K8S_VERSION" \
        k8s.io/kubernetes/cmd/kubectl@"v$K8S_VERSION"
    local ldflags="-s -w" pkg
    for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
        ldflags+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        ldflags+=" -X $pkg.gitTreeState=clean"
    done
    for cmd in kube-apiserver kubectl; do
        say "building $cmd v$K8S_VERSION"
        "$GO" build -ldflags "$ldflags" -o "$STAGE/$cmd" "k8s.io/kubernetes/cmd/$cmd"
    done
}

build_etcd() {
    local mod=$WORK/etcd
    wrapper_module "$mod"
    cd "$mod"
    say "building etcd v$ETCD_VERSION"
    "$GO" get go.etcd.io/etcd/server/v3@"v$ETCD_VERSION"
    "$GO" build -ldflags "-s -w" -o "$STAGE/etcd" go.etcd.io/etcd/server/v3
}

build_helm() {
    local mod=$WORK/helm
    wrapper_module "$mod"
    cd "$mod"
    say "building helm v$HELM_VERSION"
    "$GO" get helm.sh/helm/v3/cmd/helm@"v$HELM_VERSION"
    "$GO" build -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION" \
        -o "$STAGE/helm" helm.sh/helm/v3/cmd/helm
}

step="building etcd v$ETCD_VERSION"; build_etcd
step="building helm v$HELM_VERSION"; build_helm
step="building kube-apiserver and kubectl v$K8S_VERSION"; build_kubernetes
step="checking the built binaries"

tools_work "$STAGE" || die "the built binaries do not report the pinned versions"
# Swap the whole directory in at once, so a concurrent reader never sees half a set.
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST.old"
[ -e "$DEST" ] && mv "$DEST" "$DEST.old"
mv "$STAGE" "$DEST"
rm -rf "$DEST.old"
say "done in $((SECONDS - start))s: $(cd "$DEST" && echo *) in $DEST"

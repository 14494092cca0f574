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
# k8s.io/kubernetes is built through a wrapper module: scripts/lib.sh, k8s_build.
#
# Idempotent: if every binary exists and runs, nothing happens (well under a second). A cold build
# takes minutes on 2 cores; parallelism is capped at 2 packages (GOFLAGS=-p=2). The Go module and
# build caches stay where `go env` puts them (outside the repo); nothing is written to the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
. scripts/envtest-versions.env

TOOLS_DIR=${VMLEASE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmlease-tools}
DEST=$TOOLS_DIR/envtest-k8s$K8S_VERSION-etcd$ETCD_VERSION-helm$HELM_VERSION/bin

say() { echo "install-envtest: $*"; }
die() { echo "install-envtest: ERROR: $*" >&2; exit 1; }

# tools_work DIR: true when every binary in DIR runs and reports the pinned version. (Output is
# captured, not piped into `grep -q`: grep exiting at its first match can SIGPIPE the tool, and
# with pipefail a good set then looks broken and is rebuilt.)
tools_work() {
    [[ "$("$1/kube-apiserver" --version 2>/dev/null)" == "Kubernetes v$K8S_VERSION" ]] \
        && [[ "$("$1/kubectl" version --client 2>/dev/null)" == *"v$K8S_VERSION"* ]] \
        && [[ "$("$1/etcd" --version 2>/dev/null)" == *"etcd Version: $ETCD_VERSION"* ]] \
        && [[ "$("$1/helm" version --short 2>/dev/null)" == "v$HELM_VERSION"* ]]
}

if tools_work "$DEST"; then
    say "up to date: $DEST"
    exit 0
fi

go_toolchain
say "building into $DEST with $("$GO" version) (GOFLAGS=$GOFLAGS)"

WORK=$(mktemp -d)
step="preparing"
# One exit trap both cleans up and names the failed step. (`build_x || die` would not work:
# bash ignores `set -e` inside a function called on the left of `||`.)
trap 'rc=$?; rm -rf "$WORK"; [ $rc -eq 0 ] || echo "install-envtest: ERROR: failed while $step (exit $rc; output above)" >&2' EXIT
STAGE=$WORK/bin
mkdir -p "$STAGE"
start=$SECONDS

build_kubernetes() {
    k8s_build "$GO" "$WORK/kubernetes" "$K8S_VERSION" "$STAGE" kube-apiserver kubectl
}

build_etcd() {
    say "building etcd v$ETCD_VERSION"
    go_module_build "$GO" "$WORK/etcd" go.etcd.io/etcd/server/v3 "v$ETCD_VERSION" "$STAGE/etcd"
}

build_helm() {
    say "building helm v$HELM_VERSION"
    go_module_build "$GO" "$WORK/helm" helm.sh/helm/v3/cmd/helm "v$HELM_VERSION" "$STAGE/helm" \
        "-X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION"
}

step="building etcd v$ETCD_VERSION"; build_etcd
step="building helm v$HELM_VERSION"; build_helm
step="building kube-apiserver and kubectl v$K8S_VERSION"; build_kubernetes
step="checking the built binaries"

tools_work "$STAGE" || die "the built binaries do not report the pinned versions"
swap_in "$STAGE" "$DEST"
say "done in $((SECONDS - start))s: $(cd "$DEST" && echo *) in $DEST"

#!/usr/bin/env bash
# Builds everything the kind e2e tier runs, offline, once, into the tools cache:
#
#   binaries  $TOOLS/kind-<kind>-k8s<k8s>/bin: kind, kubelet, kubeadm, kube-controller-manager,
#             kube-scheduler, kube-proxy (k8s.io/kubernetes, like the envtest tier's apiserver),
#             crictl (sigs.k8s.io/cri-tools), coredns (github.com/coredns/coredns), all from the
#             Go module proxy at the pins in scripts/{envtest,kind}-versions.env;
#   images    debian:<suite>-slim   made from Debian's packages with mmdebstrap (hack/kind/base.sh):
#                                   the base the Dockerfile names, so it builds here unchanged;
#             vmlease-kind-node:<k8s>  kind's node image on Debian's systemd, containerd, runc and
#                                   CNI plugins, the binaries above, and the control-plane images
#                                   preloaded, so kubeadm never pulls (hack/kind/node.sh).
#
# No image registry is reachable here; the Go module proxy and Debian's mirror are. Each part is
# rebuilt only when its pins or recipe change (a hash of them is kept beside the binaries and as
# a label on each image). Needs a Docker engine: scripts/install-docker.sh runs first.
# Cold (empty Go build cache): about 25 min on 2 cores; warm, with the images present: 2 s.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
. scripts/envtest-versions.env
. scripts/kind-versions.env

TOOLS_DIR=${VMLEASE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmlease-tools}
DEST=$TOOLS_DIR/kind-$KIND_VERSION-k8s$K8S_VERSION/bin
say() { echo "install-kind: $*"; }

bash scripts/install-envtest.sh >/dev/null  # kubectl and the apiserver, etcd: the same pins
bash scripts/install-docker.sh

PINS="kind=$KIND_VERSION k8s=$K8S_VERSION crictl=$CRICTL_VERSION coredns=$COREDNS_VERSION"
if [ "$(cat "$DEST/.pins" 2>/dev/null)" != "$PINS" ]; then
    go_toolchain
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    STAGE=$WORK/bin
    start=$SECONDS
    say "building $PINS with $("$GO" version) into $DEST"
    go_module_build "$GO" "$WORK/kind" sigs.k8s.io/kind "$KIND_VERSION" "$STAGE/kind"
    k8s_build "$GO" "$WORK/kubernetes" "$K8S_VERSION" "$STAGE" \
        kubelet kubeadm kube-controller-manager kube-scheduler kube-proxy
    go_module_build "$GO" "$WORK/crictl" sigs.k8s.io/cri-tools/cmd/crictl "$CRICTL_VERSION" \
        "$STAGE/crictl" "-X sigs.k8s.io/cri-tools/pkg/version.Version=${CRICTL_VERSION#v}"
    go_module_build "$GO" "$WORK/coredns" github.com/coredns/coredns "$COREDNS_VERSION" \
        "$STAGE/coredns"
    [[ "$("$STAGE/kubelet" --version)" == "Kubernetes v$K8S_VERSION" ]]
    [[ "$("$STAGE/kind" version)" == "kind $KIND_VERSION "* ]]
    echo "$PINS" >"$STAGE/.pins"
    swap_in "$STAGE" "$DEST"
    say "binaries built in $((SECONDS - start))s"
fi

# --- images -----------------------------------------------------------------------------------
bash hack/kind/base.sh "$DEBIAN_SUITE"
NODE_IMAGE=vmlease-kind-node:v$K8S_VERSION
RECIPE=$(cat scripts/envtest-versions.env scripts/kind-versions.env "$DEST/.pins" \
    $(find hack/kind -type f | sort) | sha256sum | cut -c1-16)
if [ "$(docker image inspect -f '{{index .Config.Labels "io.vmlease.recipe"}}' "$NODE_IMAGE" 2>/dev/null)" != "$RECIPE" ]; then
    start=$SECONDS
    go_toolchain
    # kind's images/base/files tree, from the module cache (the binary's build put it there)
    KIND_SRC=$("$GO" mod download -json "sigs.k8s.io/kind@$KIND_VERSION" \
        | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
    RECIPE=$RECIPE bash hack/kind/node.sh "$NODE_IMAGE" "$DEST" \
        "$TOOLS_DIR/envtest-k8s$K8S_VERSION-etcd$ETCD_VERSION-helm$HELM_VERSION/bin" "$KIND_SRC"
    say "node image built in $((SECONDS - start))s"
fi
say "ready: $DEST/kind, node image $NODE_IMAGE"

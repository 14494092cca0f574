#!/usr/bin/env bash
# Builds kind's node image for the e2e tier, offline (hack/kind/node/Dockerfile says what is in it):
#
#   hack/kind/node.sh TAG BIN_DIR ENVTEST_BIN_DIR KIND_MODULE_DIR
#
# 1. the control-plane images kubeadm 1.34 deploys, from the binaries built from their Go modules
#    (BIN_DIR, ENVTEST_BIN_DIR), on the same Debian base as everything else; saved into one tar
#    (shared layers once), preloaded into every node's containerd at boot:
#      registry.k8s.io/kube-{apiserver,controller-manager,scheduler,proxy}:v<k8s>
#      registry.k8s.io/etcd:<etcd>-0        the envtest tier's etcd (kind-config sets its tag)
#      registry.k8s.io/coredns/coredns:<v>  kubeadm passes only arguments: ENTRYPOINT /coredns
#      registry.k8s.io/pause:3.10, :3.10.1  Debian's catatonit in pause mode (-P), as podman does
#    kube-proxy carries Debian's iptables (nf_tables backend, as the node's and the host's).
# 2. the node image: kind's files/ tree from the pinned kind module, the binaries, the images.
set -euo pipefail
TAG=$1 BIN=$2 ENVTEST_BIN=$3 KIND_SRC=$4
cd "$(dirname "$0")"
. ../../scripts/envtest-versions.env
. ../../scripts/kind-versions.env
BASE=debian:$DEBIAN_SUITE-slim
K=v$K8S_VERSION
WORK=$(mktemp -d /var/tmp/vmlease-node.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
say() { echo "node-image: $*"; }

# image NAME DOCKERFILE_BODY FILE...: docker build NAME from BASE with FILEs in its context.
image() {
    local name=$1 body=$2 ctx
    shift 2
    ctx=$WORK/ctx-$(basename "${name%%:*}")
    mkdir -p "$ctx"
    [ $# -eq 0 ] || cp "$@" "$ctx/"
    printf 'FROM %s\n%s\n' "$BASE" "$body" | docker build -q --network host -t "$name" -f - "$ctx" >/dev/null
    IMAGES+=("$name")
}
IMAGES=()
say "control-plane images on $BASE"
for c in kube-apiserver kube-controller-manager kube-scheduler; do
    src=$BIN/$c
    [ "$c" = kube-apiserver ] && src=$ENVTEST_BIN/$c
    image "registry.k8s.io/$c:$K" "COPY $c /usr/local/bin/$c" "$src"
done
image "registry.k8s.io/kube-proxy:$K" "RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables conntrack nftables ipset kmod \\
    && rm -rf /var/lib/apt/lists/*
COPY kube-proxy /usr/local/bin/kube-proxy" "$BIN/kube-proxy"
image "registry.k8s.io/etcd:$ETCD_VERSION-0" "COPY etcd /usr/local/bin/etcd" "$ENVTEST_BIN/etcd"
image "registry.k8s.io/coredns/coredns:$COREDNS_VERSION" "COPY coredns /coredns
ENTRYPOINT [\"/coredns\"]" "$BIN/coredns"
image registry.k8s.io/pause:3.10 "RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends catatonit \\
    && rm -rf /var/lib/apt/lists/*
ENTRYPOINT [\"/usr/bin/catatonit\", \"-P\"]"
docker tag registry.k8s.io/pause:3.10 registry.k8s.io/pause:3.10.1
IMAGES+=(registry.k8s.io/pause:3.10.1)

say "node image $TAG"
CTX=$WORK/node
mkdir -p "$CTX/bin" "$CTX/images"
cp -r "$KIND_SRC/images/base/files" "$CTX/files"
chmod -R u+w "$CTX/files"  # the module cache is read-only
cp -r node/rootfs "$CTX/rootfs"
cp "$BIN/kubelet" "$BIN/kubeadm" "$BIN/crictl" "$ENVTEST_BIN/kubectl" "$CTX/bin/"
docker save "${IMAGES[@]}" -o "$CTX/images/kubernetes.tar"
cp node/Dockerfile "$CTX/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q --network host --build-arg "BASE_IMAGE=$BASE" \
    --build-arg "K8S_VERSION=$K8S_VERSION" --label "io.vmlease.recipe=${RECIPE:-}" -t "$TAG" "$CTX" >/dev/null
say "$TAG built ($(docker image inspect -f '{{.Size}}' "$TAG" | numfmt --to=iec))"

#!/usr/bin/env bash
# The kind e2e tier, end to end: needs a Docker engine (not just the docker CLI).
#
#   tests/e2e/run.sh [pytest args...]      e.g. tests/e2e/run.sh -k failover
#
# 1. builds kind from its Go module (sigs.k8s.io/kind, pinned below) into the tools cache, and
#    uses the envtest tier's pinned kubectl and helm (scripts/install-envtest.sh builds them);
# 2. creates cluster vmlease-e2e from tests/e2e/kind-config.yaml: a control plane and three
#    workers sharing one fresh host directory as the shared volume;
# 3. builds the two images from the Dockerfile (targets operator, agent) as :e2e and loads them
#    into the nodes (no registry involved);
# 4. installs charts/vmlease with tests/e2e/values-kind.yaml into namespace vmlease-system
#    (labelled Pod Security "privileged", as NOTES.txt asks) and waits for it;
# 5. runs the e2e tests (pytest -m e2e tests/e2e) against that cluster;
# 6. deletes the cluster and the shared directory, unless KEEP_CLUSTER=1.
#
# Environment: KIND_NODE_IMAGE (default: the node image of the pinned kind, Kubernetes 1.34),
# KEEP_CLUSTER=1, VMLEASE_TOOLS_DIR (the tools cache, as for the envtest tier).
set -euo pipefail
cd "$(dirname "$0")/../.."

KIND_VERSION=v0.30.0
CLUSTER=vmlease-e2e
NAMESPACE=vmlease-system
RELEASE=vmlease

say() { echo "e2e: $*"; }
die() { echo "e2e: ERROR: $*" >&2; exit 1; }

command -v docker >/dev/null || die "no docker client"
docker info >/dev/null 2>&1 || die "no Docker engine (docker info fails): kind cannot run here"

# shellcheck source=scripts/envtest-versions.env
. scripts/envtest-versions.env
TOOLS_DIR=${VMLEASE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmlease-tools}
ENVTEST_BIN=$TOOLS_DIR/envtest-k8s$K8S_VERSION-etcd$ETCD_VERSION-helm$HELM_VERSION/bin
KIND_BIN=$TOOLS_DIR/kind-$KIND_VERSION/bin

# --- tools ------------------------------------------------------------------------------------
bash scripts/install-envtest.sh
KUBECTL=$ENVTEST_BIN/kubectl
HELM=$ENVTEST_BIN/helm
if ! "$KIND_BIN/kind" version 2>/dev/null | grep -q "kind $KIND_VERSION "; then
    GO=$(command -v go || echo /usr/local/go/bin/go)
    [ -x "$GO" ] || die "no Go toolchain to build kind with"
    say "building kind $KIND_VERSION from sigs.k8s.io/kind"
    mkdir -p "$KIND_BIN"
    GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-p=2 -trimpath" GOBIN=$KIND_BIN \
        "$GO" install "sigs.k8s.io/kind@$KIND_VERSION"
fi
KIND=$KIND_BIN/kind
[ -x .venv/bin/python ] || die "no .venv: run \`make deps\` first"

# --- cluster ----------------------------------------------------------------------------------
WORK=$(mktemp -d)
SHARED=$(mktemp -d /var/tmp/vmlease-e2e-shared.XXXXXX)  # not /tmp: O_DIRECT fails on tmpfs
chmod 0777 "$SHARED"
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    rc=$?
    if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
        say "kept cluster $CLUSTER (KUBECONFIG=$WORK/kubeconfig), shared directory $SHARED"
    else
        # The shared files were written by root inside the node containers: remove them from
        # inside one (a node stopped by a test is started again for that), then the cluster.
        docker start "$CLUSTER-worker" >/dev/null 2>&1 || true
        docker exec "$CLUSTER-worker" sh -c 'rm -rf /var/lib/vmlease/shared/*' 2>/dev/null || true
        "$KIND" delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
        rm -rf "$SHARED" "$WORK" || say "could not remove $SHARED"
    fi
    exit "$rc"
}
trap cleanup EXIT

sed "s#@SHARED_DIR@#$SHARED#" tests/e2e/kind-config.yaml > "$WORK/kind-config.yaml"
"$KIND" delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
say "creating cluster $CLUSTER (shared directory $SHARED)"
"$KIND" create cluster --name "$CLUSTER" --config "$WORK/kind-config.yaml" \
    ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --kubeconfig "$WORK/kubeconfig" --wait 120s
export KUBECONFIG=$WORK/kubeconfig

# --- images -----------------------------------------------------------------------------------
for target in operator agent; do
    say "building vmlease-$target:e2e"
    docker build --target "$target" -t "vmlease-$target:e2e" .
    "$KIND" load docker-image "vmlease-$target:e2e" --name "$CLUSTER"
done

# --- chart ------------------------------------------------------------------------------------
"$KUBECTL" create namespace "$NAMESPACE"
"$KUBECTL" label namespace "$NAMESPACE" pod-security.kubernetes.io/enforce=privileged
say "installing charts/vmlease"
"$HELM" install "$RELEASE" charts/vmlease --namespace "$NAMESPACE" \
    -f tests/e2e/values-kind.yaml --wait --timeout 5m

# --- tests ------------------------------------------------------------------------------------
export VMLEASE_E2E_CLUSTER=$CLUSTER VMLEASE_E2E_NAMESPACE=$NAMESPACE VMLEASE_E2E_KUBECTL=$KUBECTL
export VMLEASE_E2E_SHARED=$SHARED
set +e
.venv/bin/python -m pytest -m e2e tests/e2e -p no:cacheprovider "$@"
rc=$?
set -e
if [ $rc -ne 0 ]; then
    "$KUBECTL" get all,lockspaces,hostids,diskleases -A -o wide || true
    "$KUBECTL" -n "$NAMESPACE" logs -l app.kubernetes.io/component=agent --tail=100 --prefix || true
    "$KUBECTL" -n "$NAMESPACE" logs -l app.kubernetes.io/component=operator --tail=100 --prefix || true
fi
exit $rc

#!/usr/bin/env bash
# The kind e2e tier, end to end: needs a Docker engine (not just the docker CLI).
#
#   tests/e2e/run.sh [pytest args...]      e.g. tests/e2e/run.sh -k failover
#   tests/e2e/run.sh --bench                the kind benchmark (bench/kind_failover.py) instead
#
# 1. builds, offline and once (scripts/install-kind.sh, cached in the tools cache): kind, the
#    Kubernetes node binaries and kind's node image from Debian's packages and the Go module proxy;
#    starts dockerd if none answers (scripts/install-docker.sh) and stops it again at the end;
# 2. creates cluster vmlease-e2e from tests/e2e/kind-config.yaml: a control plane and three
#    workers sharing one fresh host directory as the shared volume, each with its own host
#    directory for its file-backed watchdog (the tests' harness `docker kill`s a starved node);
#    where the container runtime withholds CAP_SYS_RESOURCE (these machines), kind runs through
#    hack/kind/docker-shim, which asks for --privileged minus that capability;
# 3. builds the two images from the Dockerfile (targets operator, agent; and venv-agent, the
#    agent's build stage) as :e2e with the locked wheels fetched by this machine's pip
#    (hack/image/wheels.sh; no index inside the build), loads the two into the nodes (no
#    registry involved) and removes the images earlier runs left untagged;
# 4. installs charts/vmlease with tests/e2e/values-kind.yaml into namespace vmlease-system
#    (labelled Pod Security "privileged", as NOTES.txt asks) and waits for it;
# 5. runs the e2e tests (pytest -m e2e tests/e2e) against that cluster, or with --bench the
#    benchmark; on failure dumps the objects, the agents' and operator's logs and the watchdog
#    harness events;
# 6. deletes the cluster, its docker network, the shared and watchdog directories, and the
#    dockerd it started, unless KEEP_CLUSTER=1.
#
# Environment: KEEP_CLUSTER=1, VMLEASE_TOOLS_DIR (the tools cache, as for the envtest tier).
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=vmlease-e2e
NAMESPACE=vmlease-system
RELEASE=vmlease

say() { echo "e2e: $*"; }
die() { echo "e2e: ERROR: $*" >&2; exit 1; }

# shellcheck source=scripts/envtest-versions.env
. scripts/envtest-versions.env
# shellcheck source=scripts/kind-versions.env
. scripts/kind-versions.env
TOOLS_DIR=${VMLEASE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmlease-tools}
ENVTEST_BIN=$TOOLS_DIR/envtest-k8s$K8S_VERSION-etcd$ETCD_VERSION-helm$HELM_VERSION/bin
KIND=$TOOLS_DIR/kind-$KIND_VERSION-k8s$K8S_VERSION/bin/kind
NODE_IMAGE=vmlease-kind-node:v$K8S_VERSION
DOCKERD_PIDFILE=/run/vmlease-e2e-dockerd.pid
export DOCKERD_PIDFILE

# --- tools ------------------------------------------------------------------------------------
[ -x .venv/bin/python ] || die "no .venv: run \`make deps\` first"
bash scripts/install-kind.sh
KUBECTL=$ENVTEST_BIN/kubectl
HELM=$ENVTEST_BIN/helm
REAL_DOCKER=$(command -v docker)
# kind: through the shim where --privileged cannot work (CAP_SYS_RESOURCE, bit 24, missing from
# the bounding set every container inherits), as it is on these machines.
kind() {
    if (( (0x$(awk '/^CapBnd/ {print $2}' /proc/self/status) >> 24 & 1) == 0 )); then
        PATH="$PWD/hack/kind/docker-shim:$PATH" VMLEASE_REAL_DOCKER=$REAL_DOCKER "$KIND" "$@"
    else
        "$KIND" "$@"
    fi
}

# --- cluster ----------------------------------------------------------------------------------
WORK=$(mktemp -d)
SHARED=$(mktemp -d /var/tmp/vmlease-e2e-shared.XXXXXX)  # not /tmp: O_DIRECT fails on tmpfs
WATCHDOGS=$(mktemp -d /var/tmp/vmlease-e2e-watchdog.XXXXXX)
chmod 0777 "$SHARED"
mkdir -p "$WATCHDOGS/worker" "$WATCHDOGS/worker2" "$WATCHDOGS/worker3"
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    rc=$?
    if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
        say "kept cluster $CLUSTER (KUBECONFIG=$WORK/kubeconfig), shared directory $SHARED"
    else
        # The shared files were written by root inside the node containers: remove them from
        # inside one (a node stopped by a test is started again for that), then the cluster.
        docker unpause "$CLUSTER-worker" >/dev/null 2>&1 || true
        docker start "$CLUSTER-worker" >/dev/null 2>&1 || true
        docker exec "$CLUSTER-worker" sh -c 'rm -rf /var/lib/vmlease/shared/*' 2>/dev/null || true
        kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
        docker network rm kind >/dev/null 2>&1 || true  # kind leaves it; in use elsewhere: kept
        rm -rf "$SHARED" "$WATCHDOGS" "$WORK" || say "could not remove $SHARED or $WATCHDOGS"
        if [ -s "$DOCKERD_PIDFILE" ]; then
            say "stopping the dockerd scripts/install-docker.sh started"
            kill "$(cat "$DOCKERD_PIDFILE")" 2>/dev/null || true
            rm -f "$DOCKERD_PIDFILE"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT

sed -e "s#@SHARED_DIR@#$SHARED#" -e "s#@WATCHDOG_DIR@#$WATCHDOGS#" \
    -e "s#@ETCD_TAG@#$ETCD_VERSION-0#" tests/e2e/kind-config.yaml > "$WORK/kind-config.yaml"
kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
say "creating cluster $CLUSTER (shared directory $SHARED, watchdogs $WATCHDOGS)"
kind create cluster --name "$CLUSTER" --config "$WORK/kind-config.yaml" --image "$NODE_IMAGE" \
    --kubeconfig "$WORK/kubeconfig" --wait 180s  # Ready after ~60 s here: images import at boot
export KUBECONFIG=$WORK/kubeconfig

# --- images -----------------------------------------------------------------------------------
bash hack/image/wheels.sh
BUILD_START=$(date +%s)
# venv-agent, the agent's build stage (compiler, headers, libvirt-python built), is tagged too:
# untagged, it would be the one image of this build that the prune below cannot tell from an
# earlier run's, and the next build's cache of its slowest step would go with it.
for target in operator venv-agent agent; do
    say "building vmlease-$target:e2e"
    DOCKER_BUILDKIT=0 docker build -q --network host --build-arg PIP_NO_INDEX=1 \
        --target "$target" -t "vmlease-$target:e2e" . >/dev/null
done
for target in operator agent; do
    kind load docker-image "vmlease-$target:e2e" --name "$CLUSTER"
done
# The new tags leave the images they named before untagged: about 2 GB a run. Every image built
# on our base carries its io.vmlease.built-by label; the untagged ones made before this build go,
# nobody else's images and none of this build's.
docker image prune -f --filter label=io.vmlease.built-by --filter "until=$BUILD_START" >/dev/null \
    || say "could not remove the untagged images of earlier runs"

# --- chart ------------------------------------------------------------------------------------
"$KUBECTL" create namespace "$NAMESPACE"
"$KUBECTL" label namespace "$NAMESPACE" pod-security.kubernetes.io/enforce=privileged
say "installing charts/vmlease"
"$HELM" install "$RELEASE" charts/vmlease --namespace "$NAMESPACE" \
    -f tests/e2e/values-kind.yaml --wait --timeout 5m  # ~1 min here: 3 agents join, 2 s I/O timeouts

# --- tests ------------------------------------------------------------------------------------
export VMLEASE_E2E_CLUSTER=$CLUSTER VMLEASE_E2E_NAMESPACE=$NAMESPACE VMLEASE_E2E_KUBECTL=$KUBECTL
export VMLEASE_E2E_SHARED=$SHARED VMLEASE_E2E_WATCHDOGS=$WATCHDOGS
set +e
if [ "${1:-}" = --bench ]; then
    .venv/bin/python bench/kind_failover.py
else
    .venv/bin/python -m pytest -m e2e tests/e2e -p no:cacheprovider "$@"
fi
rc=$?
set -e
if [ $rc -ne 0 ]; then
    "$KUBECTL" get all,lockspaces,hostids,diskleases -A -o wide || true
    "$KUBECTL" -n "$NAMESPACE" logs -l app.kubernetes.io/component=agent --tail=100 --prefix || true
    "$KUBECTL" -n "$NAMESPACE" logs -l app.kubernetes.io/component=operator --tail=100 --prefix || true
    "$KUBECTL" get events -A --sort-by=.lastTimestamp | tail -40 || true
    cat "$WATCHDOGS"/*/events 2>/dev/null || true
fi
exit $rc

#!/usr/bin/env bash
# Runs the Dockerfile's Python steps outside Docker (there is no Docker engine on every machine):
# a fresh venv, the hashed lock with --require-hashes, vmlease itself without dependencies,
# `pip check`, both entry points, then libvirt-python from requirements-agent.txt when libvirt's
# headers are here (pkg-config libvirt). It proves the lock is complete and consistent; it does
# not prove the base image or the apt packages, which only a real `docker build` does.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3.11}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# Like the image: no local wheel directory or index override from this machine's pip config.
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
"$PYTHON" -m venv "$WORK/venv"
PIP="$WORK/venv/bin/pip"
"$PIP" install --quiet --require-hashes --no-deps -r hack/image/requirements.txt
cp -r pyproject.toml README.md api node-agent operator "$WORK/"
find "$WORK" -name '*.egg-info' -prune -exec rm -rf {} +
"$PIP" install --quiet --no-deps "$WORK"
"$PIP" check
"$WORK/venv/bin/vmlease-operator" --help >/dev/null
"$WORK/venv/bin/vmlease-agent" --help >/dev/null
"$WORK/venv/bin/vmlease" --help >/dev/null
echo "check-deps: the lock installs with --require-hashes; pip check ok; entry points start"
if pkg-config --exists libvirt 2>/dev/null; then
    "$PIP" install --quiet --require-hashes --no-deps -r hack/image/requirements-agent.txt
    "$WORK/venv/bin/python" -c "import libvirt; print('check-deps: libvirt-python', libvirt.getVersion())"
else
    echo "check-deps: libvirt headers absent (apt-get install libvirt-dev pkg-config): libvirt-python not built"
fi

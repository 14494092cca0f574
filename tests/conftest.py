"""Test tiers: each marker maps to a probe that says whether its real parts exist here.

A tier that cannot run is skipped loudly: the reason is in the report header and in every skip.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable

import pytest


def _probe_interop() -> str | None:
    if not shutil.which("sanlock"):
        return "the sanlock binary is missing: apt-get install sanlock python3-sanlock"
    try:
        import sanlock  # noqa: F401
    except ImportError:
        return "python3-sanlock is not importable: run tests in the venv made by `make test`"
    return None


def _probe_libvirt() -> str | None:
    # Cheap checks only: starting libvirtd for real costs seconds (the lab fixture does it).
    import pwd

    fix = "run `bash scripts/install-libvirt.sh` (part of `make deps`)"
    missing = [
        b for b in ("libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img") if not shutil.which(b)
    ]
    if missing:
        return f"{', '.join(missing)} missing: {fix}"
    try:
        import libvirt  # noqa: F401
    except ImportError as e:
        return f"the libvirt python binding does not import ({e}): {fix}, use .venv/bin/python"
    try:
        rc = subprocess.run(["libvirtd", "--version"], capture_output=True, timeout=20).returncode
    except (OSError, subprocess.TimeoutExpired):
        rc = 1
    if rc != 0:
        return f"`libvirtd --version` fails: the daemon cannot start here; {fix}"
    try:
        pwd.getpwnam("libvirt-qemu")
    except KeyError:
        return f"no libvirt-qemu user (QEMU runs as it; libvirt-daemon-system creates it): {fix}"
    return None


def _probe_envtest() -> str | None:
    # tests/ is on sys.path (pytest's rootdir-conftest insertion), and tests/envtest is a package.
    from envtest.apiserver import find_tools

    return find_tools()[1]


def _probe_e2e() -> str | None:
    if not shutil.which("docker"):
        return "no docker client: kind needs a Docker engine"
    try:
        rc = subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode
    except (OSError, subprocess.TimeoutExpired):
        rc = 1
    if rc != 0:
        return "no Docker engine on this machine (docker info fails): kind cannot run here"
    return None


PROBES: dict[str, Callable[[], str | None]] = {
    "interop": _probe_interop,
    "libvirt": _probe_libvirt,
    "envtest": _probe_envtest,
    "e2e": _probe_e2e,
}


@functools.cache
def tier_skip_reason(tier: str) -> str | None:
    if os.geteuid() != 0 and tier in ("interop", "libvirt"):
        return "needs root"
    return PROBES[tier]()


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    for tier in PROBES:
        reason = tier_skip_reason(tier)
        lines.append(f"tier {tier}: " + ("runs" if reason is None else f"SKIPPED: {reason}"))
    return lines


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for tier in PROBES:
            if item.get_closest_marker(tier):
                reason = tier_skip_reason(tier)
                if reason is not None:
                    item.add_marker(pytest.mark.skip(reason=f"tier {tier} skipped: {reason}"))

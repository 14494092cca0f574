"""Fixtures of the libvirt tier: one lab per session (daemons up, a work dir), fresh domains.

This directory is deliberately not a package: as a package it would be called ``libvirt`` and
shadow the libvirt binding. pytest puts it on sys.path, hence ``import lab``.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lab import Lab, TinyDomain


@pytest.fixture(scope="session")
def libvirt_lab() -> Iterator[Lab]:
    """Daemons up for the whole session; stops only what it started, removes its work dir.

    The work dir is in /var/tmp, not pytest's tmp_path: those are 0700 root, and QEMU runs as
    ``libvirt-qemu`` and must reach the images.
    """
    workdir = Path(tempfile.mkdtemp(prefix="vmlease-libvirt-", dir="/var/tmp"))
    workdir.chmod(0o755)
    lab = Lab(workdir)
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def new_domain(libvirt_lab: Lab) -> Iterator[Callable[..., TinyDomain]]:
    """Factory of defined (not started) tiny domains, each with its own directory; all are
    destroyed and undefined after the test, even when it fails."""
    conn = libvirt_lab.connect()
    made: list[TinyDomain] = []

    def make(**options: object) -> TinyDomain:
        name = f"vmlt-{uuid.uuid4().hex[:8]}"
        domain = TinyDomain(conn, name, libvirt_lab.workdir / name, **options)
        made.append(domain)
        domain.define()
        return domain

    try:
        yield make
    finally:
        for domain in made:
            domain.undefine()
        conn.close()


@pytest.fixture
def tiny_domain(new_domain: Callable[..., TinyDomain]) -> TinyDomain:
    """A fresh defined domain with just its qcow2 disk."""
    return new_domain()

"""The libvirt Python binding, or a loud skip where it is not installed.

``pytest.importorskip("libvirt")`` alone is not enough: without the binding, ``import libvirt``
finds the ``tests/libvirt`` folder (the libvirt tier) as a namespace package, since pytest puts
``tests/`` on the path, and the tests then fail on missing attributes instead of skipping.
"""

from __future__ import annotations

from types import ModuleType

import pytest


def libvirt_or_skip() -> ModuleType:
    libvirt = pytest.importorskip("libvirt")
    if not hasattr(libvirt, "open"):
        pytest.skip(
            "the libvirt Python binding is not installed (scripts/install-libvirt.sh installs it)",
            allow_module_level=True,
        )
    return libvirt

"""Where the install scripts cache the tools they build (scripts/install-envtest.sh,
install-kind.sh, hack/image/lint.sh): the tests look there with the same default expression,
so a cache moved with VMLEASE_TOOLS_DIR is found by both."""

from __future__ import annotations

import os
from pathlib import Path


def tools_cache() -> Path:
    """``${VMLEASE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmlease-tools}``."""
    root = os.environ.get("VMLEASE_TOOLS_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vmlease-tools"

"""JSON merge patches (RFC 7386) between two status documents, shared by operator and agent.

Status writes send only what changed, so a write never clobbers fields another writer owns and
its size stays small; lists are replaced whole, as merge patches do.
"""

from __future__ import annotations

from typing import Any


def merge_patch(old: Any, new: Any) -> Any:
    """The merge patch turning ``old`` into ``new`` ({} when equal; lists whole)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    return patch

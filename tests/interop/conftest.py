"""Fixtures of the interop tier (the real sanlock 3.8.5 binary and daemon)."""

from leasekit import lease_dir  # noqa: F401
from test_sanlock_api import both, mixed  # noqa: F401  (the sanlock API files share them)

"""Fixtures of the unit tier that need real files (the lease engine's tests)."""

from leasekit import lease_dir, loop_device_4k  # noqa: F401
from stallfs_fixture import stallfs  # noqa: F401

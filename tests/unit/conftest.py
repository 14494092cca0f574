"""Fixtures of the unit tier that need real files (the lease engine's tests).

The tests live in folders that mirror the house (engine/, core/, rpc/, kube/, virt/, cli/,
daemon/, api/, kopf_operator/); the fakes they share stay here, on the path for all of them.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from leasekit import lease_dir, loop_device_4k  # noqa: F401
from stallfs_fixture import stallfs  # noqa: F401

"""Configuration: the process ``Settings`` (environment, ``HEARTH_`` prefix, ``.env``) and the pools file.

This is the top layer: it imports nothing from Hearth, and everything else reads its configuration
from here.
"""

from settings.config import Backend, Settings
from settings.pools import PoolsFile, PoolSpec
from settings.pools_errors import PoolsFileError, PoolsFileIssue
from settings.pools_loader import load_pools

__all__ = ["Backend", "PoolSpec", "PoolsFile", "PoolsFileError", "PoolsFileIssue", "Settings", "load_pools"]

"""Configuration: the process ``Settings`` (environment, ``HEARTH_`` prefix, ``.env``) and the pools file.

This is the top layer: it imports nothing from Hearth, and everything else reads its configuration
from here.
"""

from settings.config import Backend, Settings

__all__ = ["Backend", "Settings"]

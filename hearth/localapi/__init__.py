"""Hearth's own implementation of the OpenAI Containers API (and the Files API subset it needs).

It exists so that Hearth runs and is tested with no API key and no network: ``hearth api`` serves it,
``hearth up`` and the tests embed it. Metadata lives in SQLite and file bytes on disk under the data
dir (a restart loses nothing); expiry runs on an injectable clock; faults can be injected on cue.

Public API: :class:`LocalAPIServer` (run it in a background thread or the foreground),
:func:`create_app` (the ASGI app), :class:`Store` (the persistent state), :data:`ENDPOINT_NAMES`.
"""

from __future__ import annotations

from hearth.localapi.app import create_app
from hearth.localapi.faults import ENDPOINT_NAMES, FaultInjector
from hearth.localapi.server import LocalAPIServer
from hearth.localapi.store import DataDirInUse, Store

__all__ = ["ENDPOINT_NAMES", "DataDirInUse", "FaultInjector", "LocalAPIServer", "Store", "create_app"]

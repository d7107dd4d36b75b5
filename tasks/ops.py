"""Hearth's Celery tasks: thin adapters over ``hearth`` (JSON ids in, JSON out, no logic here).

Apps enqueue them by name (``hearth.lease``, ``hearth.harvest``, ...) without importing Hearth.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from celery import shared_task


@shared_task(name="hearth.ping")
def ping() -> dict[str, Any]:
    """Liveness of a worker: which host and process answered."""
    return {"host": socket.gethostname(), "pid": os.getpid()}

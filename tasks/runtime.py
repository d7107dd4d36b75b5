"""One ``Runtime`` per worker process, built when the process starts, closed when it exits.

Celery's prefork children and the threads pool share nothing with the parent's sockets: the
runtime (Redis and HTTP connection pools) is built in the process that runs the tasks, at
``worker_process_init`` (prefork) or on first use (threads/solo), never at import time.
"""

from __future__ import annotations

import atexit
import threading

from celery import current_app
from celery.signals import worker_process_init, worker_process_shutdown

from hearth.runtime import Runtime
from settings import Settings

_lock = threading.Lock()
_runtime: Runtime | None = None


def current_runtime() -> Runtime:
    """The runtime of this process (built on first use with the app's settings)."""
    global _runtime
    with _lock:
        if _runtime is None:
            settings = getattr(current_app.conf, "hearth_settings", None) or Settings()
            _runtime = Runtime.from_settings(settings)
            atexit.register(close_runtime)
        return _runtime


def close_runtime(**_: object) -> None:
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.close()
            _runtime = None


@worker_process_init.connect
def _fresh_runtime_in_child(**_: object) -> None:
    # A forked child must not reuse the parent's sockets: start without a runtime.
    global _runtime
    _runtime = None


worker_process_shutdown.connect(close_runtime)

"""One ``Runtime`` per worker process, built when the process starts, closed when it exits.

Celery's prefork children and the threads pool share nothing with the parent's sockets: the
runtime (Redis and HTTP connection pools) is built in the process that runs the tasks, at
``worker_process_init`` (prefork) or on first use (threads/solo), never at import time.

The worker entry point (``hearth worker``) sets up observability before Celery starts and hands
its observer over with ``set_observer``; every runtime built afterwards reports to it (API calls,
leases, refreshes, harvests). A prefork child inherits the observer across the fork: its metrics
go to the multiprocess files the parent serves. Without ``set_observer`` (e.g. ``celery -A
tasks.app worker`` run directly) nothing is reported.
"""

from __future__ import annotations

import atexit
import threading

from celery import current_app
from celery.signals import worker_process_init, worker_process_shutdown

from hearth.events import Observer
from hearth.runtime import Runtime
from settings import Settings

_lock = threading.Lock()
_runtime: Runtime | None = None
_observer: Observer | None = None


def set_observer(observer: Observer | None) -> None:
    """The observer runtimes of this process report to; call before the first task builds one."""
    global _observer
    with _lock:
        _observer = observer


def current_runtime() -> Runtime:
    """The runtime of this process (built on first use with the app's settings)."""
    global _runtime
    with _lock:
        if _runtime is None:
            settings = getattr(current_app.conf, "hearth_settings", None) or Settings()
            _runtime = Runtime.from_settings(settings, observer=_observer, publish_pools=True)
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

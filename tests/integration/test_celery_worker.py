"""The real-worker fixture: a task sent by name runs in another process."""

import os

from celery import Celery


def test_ping_runs_in_a_real_worker_process(celery_app: Celery, start_worker) -> None:  # type: ignore[no-untyped-def]
    worker = start_worker()
    result = celery_app.send_task("hearth.ping").get(timeout=20)
    assert result["pid"] != os.getpid()
    assert worker.proc.poll() is None

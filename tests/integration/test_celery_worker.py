"""The real-worker fixture: a task sent by name runs in another process."""

import os

from celery import Celery


def test_ping_runs_in_a_real_worker_process(celery_app: Celery, start_worker) -> None:  # type: ignore[no-untyped-def]
    worker = start_worker()
    result = celery_app.send_task("hearth.ping").get(timeout=20)
    assert result["pid"] != os.getpid()
    assert worker.proc.poll() is None


def test_a_worker_consumes_the_default_and_the_keepalive_queue(celery_app: Celery, start_worker) -> None:  # type: ignore[no-untyped-def]
    start_worker()
    queues = celery_app.control.inspect(timeout=5).active_queues() or {}
    names = {q["name"] for worker_queues in queues.values() for q in worker_queues}
    assert {"hearth", "hearth.keepalive"} <= names
    route = celery_app.amqp.router.route({}, "hearth.refresh")
    assert route["queue"].name == "hearth.keepalive"

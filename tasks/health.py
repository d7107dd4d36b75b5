"""A worker's health key in Redis, kept alive while the worker consumes: what ``hearth check`` counts.

Why a consumer bootstep: it starts once the worker's task consumer is set up on a live broker
connection, is stopped when Celery loses that connection (and started again when it reconnects), and is
shut down with the worker. So the key says "this worker takes tasks now": it is written every
``HEARTH_WORKER_HEALTH_INTERVAL`` seconds with a TTL of ``HEARTH_WORKER_HEALTH_TTL``, deleted on a clean
shutdown (and on a lost connection, best effort), and simply expires when the worker is killed or
stalls. The writer is a thread of its own, not a task: a worker busy with long tasks is still alive.

The key format and the reading side are in ``hearth.health``; ``tasks.app.create_app`` adds the step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from typing import Any

import redis
from celery import bootsteps

from hearth.clock import Clock, SystemClock
from hearth.events import log_event
from hearth.health import clear_worker_health, write_worker_health
from settings import Settings

log = logging.getLogger(__name__)


class HealthWriter:
    """Writes one worker's health key every ``interval`` s until stopped; Redis errors are logged, not raised."""

    def __init__(
        self, client: redis.Redis, clock: Clock, *, prefix: str, hostname: str, interval: float, ttl: float,
        info: dict[str, Any],
    ) -> None:
        self.client = client
        self.clock = clock
        self.prefix = prefix
        self.hostname = hostname
        self.interval = interval
        self.ttl = ttl
        self.info = info
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def __repr__(self) -> str:
        return f"HealthWriter(prefix={self.prefix!r}, hostname={self.hostname!r})"

    def write(self) -> bool:
        try:
            write_worker_health(self.client, self.prefix, self.hostname, self.ttl, self.clock.now(), self.info)
        except redis.RedisError as exc:
            if not self._failing:  # once per outage, not every few seconds
                log_event(log, "worker.health_unwritable", level=logging.WARNING, error=type(exc).__name__)
            self._failing = True
            return False
        self._failing = False
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.write()

    def start(self) -> None:
        self._stop.clear()
        self.write()
        self._thread = threading.Thread(target=self._run, name="hearth-health", daemon=True)
        self._thread.start()

    def stop(self, *, clear: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 5)
            self._thread = None
        if clear:
            # Redis may be away (a lost connection): then the key expires by itself.
            with contextlib.suppress(redis.RedisError):
                clear_worker_health(self.client, self.prefix, self.hostname)


class WorkerHealth(bootsteps.StartStopStep):
    """Consumer bootstep: the health key lives while the task consumer does."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.writer: HealthWriter | None = None

    def start(self, parent: Any) -> None:
        settings = getattr(parent.app.conf, "hearth_settings", None)
        url = settings.resolved_redis_url if isinstance(settings, Settings) else None
        if settings is None or not url:
            return
        queues = sorted(q.name for q in parent.app.amqp.queues.consume_from.values())
        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5, health_check_interval=25)
        self.writer = HealthWriter(
            client, SystemClock(), prefix=settings.key_prefix, hostname=parent.hostname,
            interval=settings.worker_health_interval, ttl=settings.worker_health_ttl,
            info={"pid": os.getpid(), "host": socket.gethostname(), "queues": queues},
        )
        self.writer.start()

    def stop(self, parent: Any) -> None:
        self._end()

    def shutdown(self, parent: Any) -> None:
        self._end()

    def _end(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.stop()
            writer.client.close()


__all__ = ["HealthWriter", "WorkerHealth"]

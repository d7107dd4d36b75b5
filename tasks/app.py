"""The Celery app factory.

``create_app(settings)`` builds a configured app; the module-level ``app`` exists only because the
``celery -A tasks.app`` command line needs one. Process-wide clients (Redis, the API client, the pool
store) are not globals: each worker process builds one ``Runtime`` at start (``worker_process_init``)
and tasks reach it through ``current_runtime()``.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from kombu import Queue

from settings import Settings
from tasks.health import WorkerHealth

# kombu's Redis transport with the restore of held messages made safe on a lost connection (see
# tasks/broker.py). ``HEARTH_BROKER_TRANSPORT=kombu`` (a debugging switch) selects kombu's own ("redis")
# instead: a test runs a worker on it and watches it die on a Redis restart, the proof the workaround
# still matters, and whoever suspects the workaround can rule it out.
BROKER_TRANSPORT = "tasks.broker:Transport"
BROKER_TRANSPORTS = {"hearth": BROKER_TRANSPORT, "kombu": "redis"}
BROKER_SCHEMES = ("redis", "rediss")
# Celery's AMQP glue with a connection that retries a lost broker every few seconds (tasks/broker.py).
BROKER_AMQP = "tasks.broker:AMQP"

DEFAULT_QUEUE = "hearth"
KEEPALIVE_QUEUE = "hearth.keepalive"
KEEPALIVE_TASKS = ("hearth.refresh", "hearth.harvest", "hearth.session_harvest", "hearth.session_save")
# The live saves of active sessions (one per session per period: thousands a minute, in batches) have a queue of
# their own, so a refresh never waits behind them; a worker takes from each queue in turn.
SAVES_QUEUE = "hearth.saves"
SAVES_TASKS = ("hearth.session_live_save", "hearth.session_saves")
TASK_MODULES = ("tasks.ops", "tasks.sessions")


def broker_url(settings: Settings) -> str:
    url = settings.resolved_redis_url
    if not url:
        raise RuntimeError(
            "HEARTH_REDIS_URL is not set and no `hearth up` is running in this data dir "
            f"({settings.data_dir}); set HEARTH_REDIS_URL or start `hearth up`"
        )
    return url


def redelivery_options(visibility_timeout: int) -> dict[str, Any]:
    """Redis transport options that redeliver a dead worker's unacked tasks soon after the timeout.

    kombu's Redis transport keeps every delivered, unacked message in the ``unacked`` hash; any worker's
    periodic sweep (``restore_visible``) puts back those delivered more than ``visibility_timeout``
    seconds ago. kombu 5.7 runs the sweep every ``unacked_restore_interval`` seconds (10) but scans
    Redis only on every ``unacked_restore_throttle``-th call (10): ~100 s between real scans, so a task
    lost with its worker came back up to 100 s after the timeout. Scanning on every call (a single
    ZRANGE on an index) at a fifth of the timeout, capped at 10 s, bounds redelivery to the timeout
    plus that interval. The timeout itself must stay above the longest task run and retry countdown,
    or a live worker's task is delivered a second time (harmless, tasks are idempotent, but wasted).
    """
    return {
        "visibility_timeout": visibility_timeout,
        "unacked_restore_interval": max(1, min(10, visibility_timeout // 5)),
        "unacked_restore_throttle": 1,
        # A worker killed while sweeping holds the sweep mutex until it expires (default 300 s); a
        # shorter hold is safe because each restore is a WATCH transaction that cannot run twice.
        "unacked_mutex_expire": 60,
    }


def broker_key_prefix(settings: Settings) -> str:
    """Where every broker key lives: queues, the unacked hash and index, bindings, results, fanout.

    Under ``HEARTH_KEY_PREFIX`` like every other Hearth key, so two deployments on one Redis database
    never take each other's tasks; ``:celery:`` keeps them apart from Hearth's own keys.
    """
    return f"{settings.key_prefix}:celery:"


def resilience_options() -> dict[str, Any]:
    """Broker and result-backend settings that ride out a Redis restart, failover or long outage.

    A worker reconnects forever (Celery's default gives up after 100 tries); a result that cannot be
    stored while Redis is away is retried until it can (by default it would be dropped and the task
    marked failed); sockets are kept alive and health-checked, so a failover that leaves a silent
    peer (no RST) is noticed. The kombu crash on a lost connection is mended by the transport.
    """
    return {
        "broker_connection_retry": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_connection_timeout": 5,
        "result_backend_always_retry": True,
        "result_backend_max_retries": float("inf"),
        "result_backend_max_sleep_between_retries_ms": 5000,
        "redis_backend_health_check_interval": 25,
        "redis_socket_keepalive": True,
        "redis_socket_connect_timeout": 5,
        # Tasks are idempotent: one that runs on through a lost connection may finish (its ack is
        # lost with the channel, so it comes back and finds the work done). Terminating it gains nothing.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }


def transport_options(settings: Settings) -> dict[str, Any]:
    return {
        **redelivery_options(settings.task_visibility_timeout),
        "global_keyprefix": broker_key_prefix(settings),
        "socket_keepalive": True,
        "socket_connect_timeout": 5,
        "health_check_interval": 25,
        "retry_on_timeout": True,
    }


def transport_config(url: str, transport: str = "hearth") -> dict[str, Any]:
    """Hearth's transport (or, by ``transport``, kombu's own) for Redis URLs; any other broker keeps kombu's choice."""
    parts = urlsplit(url)
    if parts.scheme not in BROKER_SCHEMES:
        return {}
    config: dict[str, Any] = {"broker_transport": BROKER_TRANSPORTS[transport]}
    if parts.scheme == "rediss" and "ssl_cert_reqs" not in parts.query:
        # kombu turns TLS on by the scheme name alone, which a transport given by path is not; verify
        # the server as redis-py does for the state store on the same URL.
        config["broker_use_ssl"] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    return config


def celery_config(settings: Settings) -> dict[str, Any]:
    url = broker_url(settings)
    return {
        "broker_url": url,
        **transport_config(url, settings.broker_transport),
        "result_backend": url,
        "result_backend_transport_options": {"global_keyprefix": broker_key_prefix(settings)},
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_expires": 3600,
        "timezone": "UTC",
        "enable_utc": True,
        # Every task is idempotent: ack after the work, requeue when the worker dies mid-task.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_track_started": True,
        **resilience_options(),
        "broker_transport_options": transport_options(settings),
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        # Keepalive work (refresh, harvest) has its own queue so it never waits behind a big fill:
        # a worker consumes both (the declared queues), and takes from them in turn.
        "task_default_queue": DEFAULT_QUEUE,
        "task_queues": (Queue(DEFAULT_QUEUE), Queue(KEEPALIVE_QUEUE), Queue(SAVES_QUEUE)),
        "task_routes": {name: {"queue": KEEPALIVE_QUEUE} for name in KEEPALIVE_TASKS}
        | {name: {"queue": SAVES_QUEUE} for name in SAVES_TASKS},
    }


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings()
    celery_app = Celery("hearth", include=list(TASK_MODULES), amqp=BROKER_AMQP)
    celery_app.conf.update(celery_config(settings))
    celery_app.conf.hearth_settings = settings
    # The worker's health key (``hearth check``), kept while its task consumer runs.
    celery_app.steps["consumer"].add(WorkerHealth)
    return celery_app


def _lazy_app() -> Celery:
    try:
        return create_app()
    except RuntimeError:
        # No Redis configured: an app that can still be imported (e.g. to list task names).
        celery_app = Celery("hearth", include=list(TASK_MODULES))
        celery_app.conf.hearth_settings = Settings()
        return celery_app


app = _lazy_app()

"""The Celery app factory.

``create_app(settings)`` builds a configured app; the module-level ``app`` exists only because the
``celery -A tasks.app`` command line needs one. Process-wide clients (Redis, the API client, the pool
store) are not globals: each worker process builds one ``Runtime`` at start (``worker_process_init``)
and tasks reach it through ``current_runtime()``.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from settings import Settings

TASK_MODULES = ("tasks.ops", "tasks.sessions")


def broker_url(settings: Settings) -> str:
    url = settings.resolved_redis_url
    if not url:
        raise RuntimeError(
            "HEARTH_REDIS_URL is not set and no `hearth up` is running in this data dir "
            f"({settings.data_dir}); set HEARTH_REDIS_URL or start `hearth up`"
        )
    return url


def celery_config(settings: Settings) -> dict[str, Any]:
    url = broker_url(settings)
    return {
        "broker_url": url,
        "result_backend": url,
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
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            # An unacked task whose worker vanished is redelivered after this many seconds.
            "visibility_timeout": settings.task_visibility_timeout,
        },
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
    }


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings()
    celery_app = Celery("hearth", include=list(TASK_MODULES))
    celery_app.conf.update(celery_config(settings))
    celery_app.conf.hearth_settings = settings
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

"""Observability of Hearth's processes: logs, Prometheus metrics, Sentry — one call per process.

The domain reports through ``hearth.events`` (``Observer``, ``log_event``, ``redact``) and never
imports anything from here; entry points (``hearth worker``, ``hearth heartbeat``, ``hearth up``)
call ``setup_observability`` once at start and hand ``.observer`` to the domain objects they build.

    obs = setup_observability(settings, component="heartbeat", secrets=<the domain_secrets values>)
    ...
    with monitored_tick(interval_seconds=settings.heartbeat_interval):
        reconcile(...)
    obs.close()

For a Celery worker also call ``install_celery_logging(settings.log_level, settings.log_json)`` so
Celery keeps this logging setup instead of installing its own; with the prefork pool pass
``multiprocess_dir`` (see ``worker.observability.metrics``) and call it in the parent before the
pool forks (the threads pool needs no multiprocess mode).

Modules: ``logs`` (configure_logging, filters, formatters), ``metrics`` (PrometheusObserver,
start_metrics_server, enable_multiprocess), ``sentry`` (init_sentry, heartbeat_checkin, Scrubber).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hearth.events import Observer, get_logger
from settings import Settings
from worker.observability.logs import configure_logging, install_celery_logging
from worker.observability.metrics import (
    MetricsServer,
    PrometheusObserver,
    enable_multiprocess,
    install_celery_hooks,
    start_metrics_server,
)
from worker.observability.sentry import (
    HEARTBEAT_MONITOR_SLUG,
    flush_sentry,
    heartbeat_checkin,
    init_sentry,
    monitored_tick,
)

__all__ = [
    "HEARTBEAT_MONITOR_SLUG",
    "Observability",
    "configure_logging",
    "heartbeat_checkin",
    "init_sentry",
    "install_celery_logging",
    "monitored_tick",
    "setup_observability",
    "start_metrics_server",
]


@dataclass
class Observability:
    """What ``setup_observability`` started; ``close()`` stops the metrics server and flushes Sentry."""

    observer: Observer
    metrics_server: MetricsServer | None
    sentry: bool

    def close(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.stop()
            self.metrics_server = None
        flush_sentry()


def setup_observability(
    settings: Settings,
    *,
    component: str,
    secrets: Iterable[str] = (),
    multiprocess_dir: str | Path | None = None,
) -> Observability:
    """Configure logging, Sentry and (if ``settings.metrics_port`` is set) the metrics server.

    ``secrets`` are the ``domain_secrets`` values; together with the API key they are masked in logs
    and Sentry. ``multiprocess_dir``: switch metrics to prometheus multiprocess mode (Celery prefork).
    """
    secret_values = [s for s in secrets if s]
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    configure_logging(settings.log_level, settings.log_json, secrets=[s for s in (api_key, *secret_values) if s])
    sentry_on = init_sentry(settings, component=component, extra_secrets=secret_values)
    server = None
    if settings.metrics_port is not None:
        if multiprocess_dir is not None:
            enable_multiprocess(multiprocess_dir)
            install_celery_hooks()
        server = start_metrics_server(settings.metrics_port)
    observer = PrometheusObserver(logger=get_logger(f"hearth.{component}"))
    return Observability(observer=observer, metrics_server=server, sentry=sentry_on)

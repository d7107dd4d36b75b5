"""Sentry for the worker and heartbeat: errors, Celery integration, heartbeat cron check-ins, scrubbed.

Enabled only when ``Settings.sentry_dsn`` (``SENTRY_DSN``) is set; every function here is a no-op
otherwise. Secrets never leave the process: ``Scrubber`` runs on every event, transaction, check-in
and breadcrumb before it is queued, and masks

* the API key (``Settings.api_key``) and every ``domain_secrets`` value (``extra_secrets``), wherever
  they occur as text (exception values, messages, breadcrumbs, request data, extra, contexts,
  tags, source-context lines);
* everything ``hearth.events.redact`` catches (secret-named fields, ``sk-…`` keys, bearer tokens,
  URL passwords);
* and drops frame local variables (``include_local_variables=False`` is set as well).

Public API
----------
``init_sentry(settings, *, component, extra_secrets=()) -> bool``
``heartbeat_checkin(monitor_slug, status, *, duration=None, check_in_id=None, interval_seconds=None)``
``monitored_tick(monitor_slug, *, interval_seconds)``: context manager sending ``in_progress`` then
``ok`` / ``error`` with the duration — one cron check-in pair per heartbeat tick.
``sentry_enabled()``, ``flush_sentry(timeout)``, ``Scrubber``, ``interval_monitor_config(seconds)``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import sentry_sdk

from hearth.events import redact, register_secrets, registered_secrets
from settings import Settings

if TYPE_CHECKING:
    from sentry_sdk.types import Breadcrumb, BreadcrumbHint, Event, Hint, MonitorConfig

HEARTBEAT_MONITOR_SLUG = "hearth-heartbeat"
CHECKIN_STATUSES = frozenset({"in_progress", "ok", "error"})

# Options the scrubber depends on: callers may not override them.
_PROTECTED_OPTIONS = frozenset(
    {"dsn", "before_send", "before_send_transaction", "before_breadcrumb", "include_local_variables",
     "send_default_pii"}
)


class Scrubber:
    """Masks secrets in Sentry payloads; use its methods as ``before_send*`` / ``before_breadcrumb``.

    Literal secrets are this scrubber's own plus those registered process-wide at call time
    (``hearth.events.register_secrets``), so a secret learnt after ``init_sentry`` is still masked.
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets = tuple(s for s in secrets if s)

    def scrub(self, payload: Any) -> Any:
        cleaned = redact(payload, (*self._secrets, *registered_secrets()))
        _drop_frame_vars(cleaned)
        return cleaned

    def before_send(self, event: Event, hint: Hint) -> Event | None:
        return cast("Event", self.scrub(event))

    def before_send_transaction(self, event: Event, hint: Hint) -> Event | None:
        return cast("Event", self.scrub(event))

    def before_breadcrumb(self, crumb: Breadcrumb, hint: BreadcrumbHint) -> Breadcrumb | None:
        return cast("Breadcrumb", self.scrub(crumb))


def _drop_frame_vars(node: Any) -> None:
    """Remove ``vars`` (local variables) from every stack frame, however the event got them."""
    if isinstance(node, dict):
        if "vars" in node and ("lineno" in node or "function" in node or "filename" in node):
            del node["vars"]
        for value in node.values():
            _drop_frame_vars(value)
    elif isinstance(node, list):
        for value in node:
            _drop_frame_vars(value)


def init_sentry(
    settings: Settings,
    *,
    component: str,
    extra_secrets: Iterable[str] = (),
    **sdk_options: Any,
) -> bool:
    """Start the Sentry SDK for ``component`` (``"worker"``, ``"heartbeat"``, …) if a DSN is set.

    ``extra_secrets`` are the ``domain_secrets`` values of the pools file; they and the API key are
    also registered for the log redactor. ``sdk_options`` go to ``sentry_sdk.init`` (e.g.
    ``traces_sample_rate``, ``environment``), except the ones the scrubbing relies on. Returns whether
    Sentry is now enabled.
    """
    if settings.sentry_dsn is None or not settings.sentry_dsn.get_secret_value():
        return False
    bad = _PROTECTED_OPTIONS.intersection(sdk_options)
    if bad:
        raise ValueError(f"init_sentry: options {sorted(bad)} are fixed by Hearth")
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.httpx import HttpxIntegration
    from sentry_sdk.integrations.redis import RedisIntegration

    from hearth import __version__

    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    secrets = [s for s in (api_key, *extra_secrets) if s]
    register_secrets(*secrets)
    scrubber = Scrubber(secrets)
    options: dict[str, Any] = {
        "release": os.environ.get("SENTRY_RELEASE") or f"hearth@{__version__}",
        "max_request_body_size": "never",
        # Auto-enabling would import every supported library that is installed (aiohttp, boto3,
        # flask, openai, …): ~6 s at each process start. Hearth names the ones it uses instead.
        "auto_enabling_integrations": False,
        "integrations": [CeleryIntegration(monitor_beat_tasks=False), HttpxIntegration(), RedisIntegration()],
        **sdk_options,
    }
    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        include_local_variables=False,
        send_default_pii=False,
        before_send=scrubber.before_send,
        before_send_transaction=scrubber.before_send_transaction,
        before_breadcrumb=scrubber.before_breadcrumb,
        **options,
    )
    sentry_sdk.set_tag("component", component)
    return True


def sentry_enabled() -> bool:
    """Whether an initialised Sentry client with a DSN is active in this process."""
    return sentry_sdk.get_client().is_active()


def flush_sentry(timeout: float = 2.0) -> None:
    """Send what is queued (before a process exits)."""
    if sentry_enabled():
        sentry_sdk.flush(timeout=timeout)


def interval_monitor_config(seconds: float) -> MonitorConfig:
    """A Sentry monitor config for a job every ``seconds``.

    Sentry's smallest schedule unit is the minute, so sub-minute ticks are declared as "every
    minute": a tick that stops for longer than a minute plus the margin is reported as missed.
    """
    minutes = max(1, math.ceil(seconds / 60))
    return {
        "schedule": {"type": "interval", "value": minutes, "unit": "minute"},
        "checkin_margin": minutes,
        "max_runtime": max(1, minutes * 2),
    }


def heartbeat_checkin(
    monitor_slug: str,
    status: str,
    *,
    duration: float | None = None,
    check_in_id: str | None = None,
    interval_seconds: float | None = None,
) -> str | None:
    """Send one cron check-in; returns its id (pass it to the closing ``ok``/``error``), or None if off.

    ``status`` is ``in_progress``, ``ok`` or ``error``. With ``interval_seconds`` the check-in carries
    a ``monitor_config`` (an interval schedule) so Sentry creates or updates the monitor itself.
    """
    if status not in CHECKIN_STATUSES:
        raise ValueError(f"check-in status must be one of {sorted(CHECKIN_STATUSES)}, not {status!r}")
    if not sentry_enabled():
        return None
    from sentry_sdk.crons import capture_checkin

    config = interval_monitor_config(interval_seconds) if interval_seconds else None
    return capture_checkin(
        monitor_slug=monitor_slug, check_in_id=check_in_id, status=status, duration=duration, monitor_config=config
    )


@contextmanager
def monitored_tick(monitor_slug: str = HEARTBEAT_MONITOR_SLUG, *, interval_seconds: float) -> Iterator[None]:
    """Wrap one heartbeat tick: ``in_progress`` on entry, then ``ok``, or ``error`` if it raised."""
    started = time.monotonic()
    check_in_id = heartbeat_checkin(monitor_slug, "in_progress", interval_seconds=interval_seconds)
    try:
        yield
    except BaseException:
        heartbeat_checkin(
            monitor_slug, "error", duration=time.monotonic() - started, check_in_id=check_in_id,
            interval_seconds=interval_seconds,
        )
        raise
    heartbeat_checkin(
        monitor_slug, "ok", duration=time.monotonic() - started, check_in_id=check_in_id,
        interval_seconds=interval_seconds,
    )

"""Log output of every Hearth process: one line per event, human or JSON, secrets masked.

``configure_logging(level, json)`` installs one handler on the root logger (replacing the one it
installed before, leaving others' handlers alone) with two filters and a formatter:

* ``RedactFilter`` runs ``hearth.events.redact`` over every record before any formatter sees it:
  the formatted message (args included), every ``extra`` field, the exception text and stack info.
  A secret therefore cannot reach the output whichever way it was passed to the logger.
* ``CeleryTaskFilter`` adds ``task_id`` / ``task_name`` of the Celery task being executed, if any.
  It never imports Celery: if Celery is not loaded in this process, no task can be running.
* ``HumanFormatter``: ``2026-11-22T01:02:03Z INFO hearth.pool event=lease.taken pool=analysts
  container_id=cntr_… task_id=…`` (a traceback, if any, follows on indented lines);
  ``JsonFormatter``: the same fields as one JSON object per line (the traceback in ``exc``).

Records made by ``hearth.events.log_event`` carry ``event`` and a dict of fields; any other record
shows its message, and its ``extra`` attributes are rendered as fields too.
"""

from __future__ import annotations

import json as _json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

from hearth.errors import ConfigError
from hearth.events import (
    EVENT_ATTR,
    FIELDS_ATTR,
    MASK,
    event_text,
    is_secret_key,
    redact,
    redact_text,
    register_secrets,
)

# Attributes every LogRecord has; anything else on a record came from ``extra`` (or a filter).
_STANDARD_ATTRS: frozenset[str] = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime", "taskName"}
)
# Rendered first, in this order, so lines line up when read by eye.
_FIRST_FIELDS = ("pool", "container_id", "lease_id", "task_id", "task_name", "file_id")
_HANDLER_MARK = "_hearth_handler"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields of a record: ``log_event`` fields plus any non-standard attribute, in display order."""
    found: dict[str, Any] = {}
    celery: dict[str, Any] = {}
    for name, value in record.__dict__.items():
        if name in _STANDARD_ATTRS or name in (EVENT_ATTR, FIELDS_ATTR) or name.startswith("_"):
            continue
        if name == "data" and isinstance(value, dict) and ({"args", "kwargs"} & value.keys()):
            # Celery's own context ("Task … received", "… raised"): its args repr may hold an app's
            # session key. Only the task's id and name are rendered, never its arguments.
            celery = {"task_id": value.get("id"), "task_name": value.get("name")}
            continue
        found[name] = value
    for name, value in celery.items():
        if found.get(name) is None:
            found[name] = value
    fields = getattr(record, FIELDS_ATTR, None)
    if isinstance(fields, dict):
        found.update(fields)
    ordered = {k: found.pop(k) for k in _FIRST_FIELDS if k in found}
    ordered.update(found)
    return {k: v for k, v in ordered.items() if v is not None}


class RedactFilter(logging.Filter):
    """Masks secrets in a record in place (message, args, extras, exception and stack text)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        event = getattr(record, EVENT_ATTR, None)
        fields = getattr(record, FIELDS_ATTR, None)
        if fields is not None:
            fields = redact(fields, self._secrets)
            setattr(record, FIELDS_ATTR, fields)
        if isinstance(event, str) and isinstance(fields, dict):
            # A log_event record: its message is made of its fields, so rebuild it from the
            # redacted fields (cheaper than scanning the long text again).
            record.msg = event_text(redact_text(event, self._secrets), fields)
        else:
            try:
                message = record.getMessage()
            except Exception:  # a bad format string must not hide the record, nor leak its args
                message = f"{record.msg!s} (unformattable args)"
            record.msg = redact_text(message, self._secrets)
        record.args = None
        for name, value in list(record.__dict__.items()):
            if name in _STANDARD_ATTRS or name == FIELDS_ATTR or name.startswith("_"):
                continue
            if value is not None and is_secret_key(name):
                setattr(record, name, MASK)
            else:
                setattr(record, name, redact(value, self._secrets))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, self._secrets)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info, self._secrets)
        return True


class CeleryTaskFilter(logging.Filter):
    """Adds ``task_id`` and ``task_name`` of the Celery task running in this thread, if any."""

    def filter(self, record: logging.LogRecord) -> bool:
        state = sys.modules.get("celery._state")
        if state is None:  # Celery not loaded: no task can be running, and we will not import it
            return True
        task = state.get_current_task()
        if task is None:
            return True
        request = getattr(task, "request", None)
        task_id = getattr(request, "id", None)
        fields = getattr(record, FIELDS_ATTR, None)
        already = hasattr(record, "task_id") or (isinstance(fields, dict) and "task_id" in fields)
        if task_id and not already:
            record.task_id = task_id
            record.task_name = getattr(task, "name", None)
        return True


def _utc(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))


def _human_value(value: Any) -> str:
    """A field value as one shell-ish token: bare when safe, JSON-quoted when it has spaces or quotes."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    text = value if isinstance(value, str) else _json.dumps(value, default=str, separators=(",", ":"))
    if not text or any(c in text for c in ' "=\n\r\t'):
        return _json.dumps(text)
    return text


class HumanFormatter(logging.Formatter):
    """``<UTC time> <LEVEL> <logger> event=<name>|<message> key=value …`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, EVENT_ATTR, None)
        head = f"event={event}" if event else record.getMessage().replace("\n", "\\n")
        parts = [_utc(record.created), record.levelname, record.name, head]
        parts += [f"{k}={_human_value(v)}" for k, v in _extras(record).items()]
        line = " ".join(parts)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + "\n".join("    " + x for x in record.exc_text.splitlines())
        if record.stack_info:
            line += "\n" + "\n".join("    " + x for x in record.stack_info.splitlines())
        return line


_JSON_RESERVED = ("ts", "level", "logger", "event", "msg", "exc", "stack")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``event`` or ``msg``, the fields, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": _utc(record.created), "level": record.levelname, "logger": record.name}
        event = getattr(record, EVENT_ATTR, None)
        if event:
            out["event"] = event
        else:
            out["msg"] = record.getMessage()
        for k, v in _extras(record).items():
            out[f"{k}_" if k in _JSON_RESERVED else k] = v
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return _json.dumps(out, default=str, ensure_ascii=False)


def parse_level(level: str | int) -> int:
    """``"info"``/``"INFO"``/``20`` → 20; anything else is a ``ConfigError`` naming HEARTH_LOG_LEVEL."""
    if isinstance(level, int):
        return level
    mapping = logging.getLevelNamesMapping()
    name = level.strip().upper()
    if name in mapping:
        return mapping[name]
    raise ConfigError(f"unknown log level {level!r}; use one of DEBUG, INFO, WARNING, ERROR", where="HEARTH_LOG_LEVEL")


def configure_logging(
    level: str | int = "INFO",
    json: bool = False,
    *,
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
) -> logging.Handler:
    """Send every log record of the process to ``stream`` (stderr), one redacted line per event.

    ``secrets`` (the API key, ``domain_secrets`` values) are registered process-wide
    (``hearth.events.register_secrets``) so that they are masked in logs and Sentry alike. Calling
    this again replaces the handler it installed before. Returns the handler (tests read from it).
    """
    register_secrets(*secrets)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
            old.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.addFilter(CeleryTaskFilter())
    handler.addFilter(RedactFilter())
    handler.setFormatter(JsonFormatter() if json else HumanFormatter())
    root.addHandler(handler)
    root.setLevel(parse_level(level))
    logging.captureWarnings(True)
    return handler


def install_celery_logging(level: str | int = "INFO", json: bool = False, *, secrets: Iterable[str] = ()) -> None:
    """Make Celery use ``configure_logging`` instead of its own logging setup.

    Celery configures logging itself unless a receiver is connected to its ``setup_logging``
    signal; connecting one keeps our redacting handler (children of a prefork pool inherit it).
    Call in the worker entry point before the worker starts.
    """
    from celery.signals import setup_logging

    def _setup(**_: Any) -> None:
        configure_logging(level, json, secrets=secrets)

    setup_logging.connect(_setup, weak=False)

"""The seam between the domain and observability: events, metrics hooks, log lines, redaction.

The domain (pools, leases, harvest, the API client) must report what it does — to Prometheus, to
the log, to the "recent events" of ``hearth status`` — without knowing about any of them. It talks
to an ``Observer`` (a Protocol; ``NullObserver`` when nobody listens); ``worker.observability``
supplies the Prometheus implementation. Nothing here imports a third-party library.

Public API
----------
``Observer``            protocol the domain calls: ``api_call``, ``lease``, ``refresh``, ``harvest``,
                        ``containers``, ``breaker``, ``tick``, ``event``. Every method must be cheap and
                        must never raise into the caller.
``NullObserver``        does nothing (the default everywhere).
``FanoutObserver``      forwards every call to several observers, swallowing (and logging) their errors.
``RecentEvents``        an in-process ring buffer of ``event(...)`` calls, stamped by a ``Clock``.
``get_logger(name)``    a stdlib logger (named ``hearth.*`` by convention).
``log_event(logger, event, **fields)``
                        one log line per event; ``fields`` (pool, container_id, task_id, lease_id, …)
                        travel in the record's ``extra`` and are rendered by the configured formatter.
``redact(value)``       masks secrets in any str / mapping / sequence (see below); used by the log
                        filter and the Sentry scrubber. ``register_secrets(...)`` adds literal values
                        (the API key, ``domain_secrets`` values) that are masked wherever they occur.

What ``redact`` masks
---------------------
* the value of any mapping key whose name contains ``key``, ``secret``, ``token``, ``password``,
  ``passwd``, ``authorization``, ``credential``, ``cookie`` or ``dsn`` (case-insensitive), except a
  few known non-secret names (``fencing_token``, ``key_prefix``, …, see ``SAFE_KEYS``);
* inside strings: OpenAI-style keys (``sk-…``, ``sk-proj-…``), ``Bearer …`` credentials, the password
  of a URL (``redis://:pw@host``), ``name=value`` / ``"name": "value"`` pairs whose name looks secret,
  and every registered literal secret.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from hearth.clock import Clock

MASK = "[REDACTED]"

# Key names whose values are secret. Substring match: over-masking a harmless field is cheap,
# leaking a key is not.
_SECRET_KEY_RE = re.compile(r"key|secret|token|passw(or)?d|authorization|credential|cookie|dsn", re.IGNORECASE)

#: Field names that match the pattern above but are known not to hold secrets.
SAFE_KEYS: frozenset[str] = frozenset(
    {"fencing_token", "key_prefix", "idempotency_key", "redis_key", "cache_key"}
)

# sk-..., sk-proj-..., sk-svcacct-..., sk-admin-...: OpenAI key shapes (and lookalikes of other vendors).
_OPENAI_KEY_RE = re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}")
# The credential must look like one (a digit, or long), so "Basic settings" stays readable.
_BEARER_RE = re.compile(r"(?i)\b(bearer|basic)\s+(?=[\w.~+/\-]*\d|[\w.~+/\-]{16,})[\w.~+/\-]+=*")
_URL_PASSWORD_RE = re.compile(r"([a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)([^@\s/]+)@")
# name=value, name: value, "name": "value" where name looks secret (query strings, reprs, headers).
_KV_RE = re.compile(
    r"""(?ix)
    (?P<name>(?<![\w\-])[\w\-]*?(?:api[_\-]?key|secret|token|passw(?:or)?d|authorization|credential|dsn)[\w\-]*)
    (?P<sep>["']?\s*[:=]\s*["']?)
    (?P<value>(?!\[REDACTED\])[^\s"',;&)}\]]+)
    """
)

# Every shape above needs one of these; a string without any is returned untouched, cheaply.
_TRIGGER_RE = re.compile(r"sk-|bearer|basic|://|[:=]", re.IGNORECASE)

_secrets_lock = threading.Lock()
_registered_secrets: frozenset[str] = frozenset()
_registered_sorted: tuple[str, ...] = ()  # longest first, for redact_text


def register_secrets(*values: str | None) -> None:
    """Add literal secret values (API key, ``domain_secrets`` values) to be masked wherever they appear.

    Process-wide on purpose: a secret learnt anywhere must be masked in every log line and Sentry
    event of the process. Empty values are ignored.
    """
    global _registered_secrets, _registered_sorted
    new = {v for v in values if v}
    if not new:
        return
    with _secrets_lock:
        _registered_secrets = _registered_secrets | new
        _registered_sorted = tuple(sorted(_registered_secrets, key=len, reverse=True))


def registered_secrets() -> frozenset[str]:
    """The literal secrets registered so far (for the Sentry scrubber; never log this)."""
    return _registered_secrets


def is_secret_key(name: str) -> bool:
    """Whether a field called ``name`` holds a secret."""
    return name.lower() not in SAFE_KEYS and bool(_SECRET_KEY_RE.search(name))


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret shape and every literal secret (registered or given) masked."""
    literals = _registered_sorted
    extra = [s for s in secrets if s]
    if extra:
        literals = tuple(sorted(set(literals).union(extra), key=len, reverse=True))
    for secret in literals:  # longest first, so a secret containing another is masked whole
        if secret in text:
            text = text.replace(secret, MASK)
    if not _TRIGGER_RE.search(text):  # the common case (ids, names, numbers): no shape can match
        return text
    text = _OPENAI_KEY_RE.sub(MASK, text)
    text = _BEARER_RE.sub(lambda m: f"{m.group(1)} {MASK}", text)
    text = _URL_PASSWORD_RE.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    return _KV_RE.sub(_mask_pair, text)


def _mask_pair(m: re.Match[str]) -> str:
    if m.group("name").lower() in SAFE_KEYS:
        return m.group(0)
    return f"{m.group('name')}{m.group('sep')}{MASK}"


def redact(value: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of ``value`` (str, mapping, list/tuple/set, anything else) with secrets masked.

    Mapping values under secret-looking keys become ``MASK`` (``None`` stays ``None``); strings are
    passed through ``redact_text``; other scalars are returned as they are.
    """
    extra = tuple(s for s in secrets if s)
    return _redact(value, extra, 0)


def _redact(value: Any, secrets: tuple[str, ...], depth: int) -> Any:
    if depth > 64:  # a cycle or absurd nesting: refuse to echo it
        return MASK
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            key = redact_text(k, secrets) if isinstance(k, str) else k
            if isinstance(k, str) and v is not None and is_secret_key(k):
                out[key] = MASK
            else:
                out[key] = _redact(v, secrets, depth + 1)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        items = [_redact(v, secrets, depth + 1) for v in value]
        return items if isinstance(value, list) else type(value)(items)
    if isinstance(value, bytes | bytearray):
        return redact_text(bytes(value).decode("utf-8", "replace"), secrets)
    return value


# --- the observer seam -------------------------------------------------------------------------


@runtime_checkable
class Observer(Protocol):
    """What the domain reports. Implementations must be cheap and must never raise."""

    def api_call(self, endpoint: str, status: int | str, seconds: float) -> None:
        """One Containers API request finished. ``endpoint`` is a template such as
        ``"POST /containers/{id}/files"`` (ids are normalised away by the metrics layer anyway);
        ``status`` is the HTTP status, or a word for a request with no answer (``"timeout"``,
        ``"transport"``)."""
        ...

    def lease(self, pool: str, seconds: float, outcome: str) -> None:
        """A lease attempt ended: ``outcome`` ``"taken"``, ``"empty"``, ``"released"``, ``"lapsed"``…;
        ``seconds`` is how long the claim (or the lease, for a release) took."""
        ...

    def refresh(self, pool: str, ok: bool) -> None:
        """A container of ``pool`` was touched to keep it from expiring."""
        ...

    def harvest(self, pool: str, files: int, bytes: int, failures: int) -> None:
        """A harvest of one container stored ``files`` files of ``bytes`` bytes; ``failures`` failed."""
        ...

    def containers(self, pool: str, counts: Mapping[str, int]) -> None:
        """The current number of containers of ``pool`` by state (``ready``, ``leased``, …).
        States absent from ``counts`` are taken as zero."""
        ...

    def breaker(self, pool: str, open: bool) -> None:
        """The circuit breaker of ``pool`` is now open (``True``) or closed."""
        ...

    def tick(self, seconds: float, ok: bool) -> None:
        """One heartbeat tick finished after ``seconds``."""
        ...

    def cost(self, pool: str, memory: str, seconds: Mapping[str, float], usd: float) -> None:
        """Metering added container-``seconds`` by state (``idle``, ``leased``, ``other``) and ``usd``."""
        ...

    def spend(self, pool: str, burn_usd_per_hour: float, over_budget: bool) -> None:
        """What ``pool`` costs per hour now, and whether it is over its budget."""
        ...

    def event(self, kind: str, **fields: Any) -> None:
        """Something worth showing among "recent events" (``kind`` like ``"container.expired"``)."""
        ...


class NullObserver:
    """An ``Observer`` that ignores everything: the default when nothing is configured."""

    def api_call(self, endpoint: str, status: int | str, seconds: float) -> None:
        pass

    def lease(self, pool: str, seconds: float, outcome: str) -> None:
        pass

    def refresh(self, pool: str, ok: bool) -> None:
        pass

    def harvest(self, pool: str, files: int, bytes: int, failures: int) -> None:
        pass

    def containers(self, pool: str, counts: Mapping[str, int]) -> None:
        pass

    def breaker(self, pool: str, open: bool) -> None:
        pass

    def tick(self, seconds: float, ok: bool) -> None:
        pass

    def cost(self, pool: str, memory: str, seconds: Mapping[str, float], usd: float) -> None:
        pass

    def spend(self, pool: str, burn_usd_per_hour: float, over_budget: bool) -> None:
        pass

    def event(self, kind: str, **fields: Any) -> None:
        pass

    def __repr__(self) -> str:
        return "NullObserver()"


_log = logging.getLogger("hearth.events")


class FanoutObserver:
    """Forwards each call to every observer; one failing observer neither stops the others nor the caller."""

    def __init__(self, *observers: Observer) -> None:
        self.observers: tuple[Observer, ...] = observers

    def _each(self, method: str, *args: Any, **kwargs: Any) -> None:
        for obs in self.observers:
            try:
                getattr(obs, method)(*args, **kwargs)
            except Exception:  # an observer must never break the domain
                _log.exception("observer %s.%s failed", type(obs).__name__, method)

    def api_call(self, endpoint: str, status: int | str, seconds: float) -> None:
        self._each("api_call", endpoint, status, seconds)

    def lease(self, pool: str, seconds: float, outcome: str) -> None:
        self._each("lease", pool, seconds, outcome)

    def refresh(self, pool: str, ok: bool) -> None:
        self._each("refresh", pool, ok)

    def harvest(self, pool: str, files: int, bytes: int, failures: int) -> None:
        self._each("harvest", pool, files, bytes, failures)

    def containers(self, pool: str, counts: Mapping[str, int]) -> None:
        self._each("containers", pool, counts)

    def breaker(self, pool: str, open: bool) -> None:
        self._each("breaker", pool, open)

    def tick(self, seconds: float, ok: bool) -> None:
        self._each("tick", seconds, ok)

    def cost(self, pool: str, memory: str, seconds: Mapping[str, float], usd: float) -> None:
        self._each("cost", pool, memory, seconds, usd)

    def spend(self, pool: str, burn_usd_per_hour: float, over_budget: bool) -> None:
        self._each("spend", pool, burn_usd_per_hour, over_budget)

    def event(self, kind: str, **fields: Any) -> None:
        self._each("event", kind, **fields)


@dataclass(frozen=True)
class RecordedEvent:
    """One entry of ``RecentEvents``: when (epoch seconds), what, and its (already redacted) fields."""

    at: float
    kind: str
    fields: dict[str, Any] = field(default_factory=dict)


class RecentEvents(NullObserver):
    """Keeps the last ``size`` ``event(...)`` calls of this process, newest last, secrets masked."""

    def __init__(self, clock: Clock, size: int = 100) -> None:
        self._clock = clock
        self._events: deque[RecordedEvent] = deque(maxlen=size)
        self._lock = threading.Lock()

    def event(self, kind: str, **fields: Any) -> None:
        rec = RecordedEvent(self._clock.now(), kind, redact(fields))
        with self._lock:
            self._events.append(rec)

    def recent(self, limit: int | None = None) -> list[RecordedEvent]:
        with self._lock:
            items = list(self._events)
        return items[-limit:] if limit else items


# --- logging helpers ---------------------------------------------------------------------------

#: The record attribute that carries ``log_event`` fields (a dict), read by the formatters.
FIELDS_ATTR = "hearth_fields"
#: The record attribute that carries the event name.
EVENT_ATTR = "event"


def get_logger(name: str) -> logging.Logger:
    """A stdlib logger; pass ``__name__`` (modules under ``hearth.`` log as ``hearth.*``)."""
    return logging.getLogger(name)


def event_text(event: str, fields: Mapping[str, Any]) -> str:
    """The plain message of a ``log_event`` record: ``"lease.taken pool=analysts …"``."""
    return " ".join([event, *(f"{k}={v}" for k, v in fields.items())])


def log_event(
    logger: logging.Logger,
    event: str,
    *,
    level: int = logging.INFO,
    exc_info: bool | BaseException | None = None,
    **fields: Any,
) -> None:
    """Log one line for ``event`` (dotted name like ``"lease.taken"``) with ``fields``.

    Fields go in ``extra`` under ``FIELDS_ATTR`` (so any name is allowed, even ``name`` or ``msg``),
    and the formatter renders them as ``key=value`` (or JSON keys). Values are redacted by the log
    filter; ``None`` values are dropped. Without ``worker.observability.configure_logging`` the
    message is still readable: ``lease.taken pool=analysts …``.
    """
    if not logger.isEnabledFor(level):
        return
    kept = {k: v for k, v in fields.items() if v is not None}
    text = event_text(event, kept)
    # The plain message goes through %s with the text as an arg, so a '%' in a field is harmless.
    logger.log(level, "%s", text, exc_info=exc_info, extra={EVENT_ATTR: event, FIELDS_ATTR: kept}, stacklevel=2)

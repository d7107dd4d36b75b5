"""The ONE place where an HTTP error answer becomes a ``hearth.errors.APIError``.

Backends disagree on how they say what went wrong (GATEWAYS.md §5.6): OpenAI's four-key envelope,
Bifrost's ``BifrostError`` (``is_bifrost_error``, ``status_code``, the OpenAI envelope nested in
``error``), LiteLLM's envelope whose ``code`` is the HTTP status as a string and ``type`` null, and
plain text or HTML from a proxy in between. All of them land here, so the rest of Hearth only sees
the exception tree and asks ``err.temporary``.

Messages are scrubbed of API keys before they reach an exception: OpenAI echoes a (partly masked)
key in "Incorrect API key provided" messages, and a gateway may echo it in full.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

from hearth.errors import (
    APIError,
    AuthError,
    BadRequest,
    ContainerExpired,
    NotFound,
    RateLimited,
    ServerError,
)

# A message that says the container is past its idle window, whichever way a backend words it:
# "Container is expired.", "Container has expired.", and the 400 variant "Container is not running."
# (SEMANTICS.md §3); all mean the same to a caller: this container can never be used again.
_EXPIRED = re.compile(r"\bcontainer\b.*?\b(is|has)\s+expired\b|\bcontainer\s+is\s+not\s+running\b", re.IGNORECASE)
# OpenAI-style keys, masked or not ("sk-abc…xyz", "sk-proj-***"); redacted whatever the key in use.
# An answer that is about the key, whatever its status: LiteLLM's proxy says so in 400s ("No connected
# db." for a key that is not its master key when it has no database), in 401s ("Authentication Error,
# Invalid proxy server token passed"), and in 500s when its own upstream key is missing ("The api_key
# client option must be set", "Required 'OPENAI_API_KEY'"). Retrying any of them cannot help.
_AUTH_MESSAGE = re.compile(
    r"authentication\s*error|no api key passed|invalid proxy server token|incorrect api key provided"
    r"|no connected db|api_key client option must be set|required 'openai_api_key'|invalid api key",
    re.IGNORECASE,
)
_AUTH_TYPES = frozenset({"auth_error", "authentication_error", "no_db_connection", "token_not_found_in_db",
                         "invalid_api_key"})
_KEY_LIKE = re.compile(r"\bsk-[A-Za-z0-9_\-*.…]{6,}")
_MAX_MESSAGE = 500


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every given secret and anything shaped like an OpenAI key replaced."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return _KEY_LIKE.sub("sk-***", text)


# Where a wait may be given, in milliseconds or seconds. LiteLLM's proxy forwards upstream headers
# with an ``llm_provider-`` prefix (its 429s carry ``llm_provider-retry-after`` and no plain
# ``Retry-After``, GATEWAYS.md §2.6); the more precise millisecond forms win.
_RETRY_AFTER_MS = ("retry-after-ms", "llm_provider-retry-after-ms")
_RETRY_AFTER = ("retry-after", "llm_provider-retry-after")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """``headers[name]`` whatever its case (httpx headers ignore case, a plain dict does not)."""
    value = headers.get(name)
    if value is None and not hasattr(headers, "get_list"):
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait from ``Retry-After`` (delta seconds or an HTTP date) or ``retry-after-ms``,
    plain or as a gateway renames them (``llm_provider-retry-after``, ``llm_provider-retry-after-ms``)."""
    for name in _RETRY_AFTER_MS:
        ms = _header(headers, name)
        if ms:
            try:
                value = float(ms) / 1000.0
            except ValueError:
                continue
            if value >= 0:
                return value
    for name in _RETRY_AFTER:
        raw = _header(headers, name)
        if raw:
            seconds = _seconds(raw.strip(), now)
            if seconds is not None:
                return seconds
    return None


def _seconds(raw: str, now: float) -> float | None:
    """A ``Retry-After`` value (delta seconds or an HTTP date) as seconds from ``now``."""
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        return max(0.0, when.timestamp() - now)
    return seconds if seconds >= 0 else None


def _as_status(value: Any) -> int | None:
    """An HTTP status carried inside a body (Bifrost ``status_code``, LiteLLM ``code``), if it is one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 400 <= value <= 599 else None
    if isinstance(value, str) and value.isdigit():
        n = int(value)
        return n if 400 <= n <= 599 else None
    return None


def _str_or_none(value: Any) -> str | None:
    # LiteLLM has emitted the literal string "None" for null type/param (PR #39536).
    if value is None or value == "None" or value == "":
        return None
    return str(value)


class _Envelope:
    """What could be read from an error body, whatever its dialect."""

    def __init__(self, body: bytes, content_type: str) -> None:
        self.message: str | None = None
        self.type: str | None = None
        self.param: str | None = None
        self.code: str | None = None
        self.body_status: int | None = None
        self.gateway: str | None = None
        self.json: dict[str, Any] | None = None
        data: Any = None
        text = body.decode("utf-8", errors="replace").strip()
        if text[:1] in ("{", "["):
            try:
                data = json.loads(text)
            except ValueError:
                data = None
        if isinstance(data, dict):
            self.json = data
            self._read(data)
        elif text:
            # Not JSON (an HTML error page from a proxy, plain text): keep a short excerpt.
            kind = content_type.split(";")[0].strip() or "no content type"
            self.message = f"non-JSON error body ({kind}): {text[:200]}"

    def _read(self, data: dict[str, Any]) -> None:
        if data.get("is_bifrost_error") is not None or "status_code" in data:
            self.gateway = "bifrost"
            self.body_status = _as_status(data.get("status_code"))
        err = data.get("error")
        if isinstance(err, dict):
            msg = err.get("message")
            self.message = str(msg) if msg is not None else None
            self.type = _str_or_none(err.get("type"))
            self.param = _str_or_none(err.get("param"))
            code = err.get("code")
            as_status = _as_status(code)
            if as_status is not None and isinstance(code, str):
                # LiteLLM: ``code`` is the HTTP status as a string, not an OpenAI error code.
                self.gateway = self.gateway or "litellm"
                self.body_status = self.body_status or as_status
                self.code = None
            else:
                self.code = _str_or_none(code)
        elif isinstance(err, str):
            self.message = err
        elif isinstance(data.get("message"), str):
            self.message = data["message"]
        elif isinstance(data.get("detail"), str):  # starlette/FastAPI style
            self.message = data["detail"]
        if self.type is None:
            self.type = _str_or_none(data.get("type")) if isinstance(data.get("type"), str) else None


def error_from_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    what: str,
    now: float,
    secrets: Iterable[str] = (),
    keyless_crash_is_auth: bool = False,
) -> APIError:
    """Map an HTTP error answer to the exception tree.

    ``what`` names the call (``"POST /containers"``) and prefixes the message; ``now`` (the
    injected clock) turns an HTTP-date ``Retry-After`` into seconds. ``keyless_crash_is_auth``: the
    request carried no key and the backend is one that fails with a bare 500 on a keyless request
    (LiteLLM's proxy, whose auth handler raises while reporting "No api key passed in." when its
    optional database client is not installed): such a 500 is the missing key, not an outage.
    """
    env = _Envelope(body, headers.get("content-type", ""))
    effective = status
    # Old LiteLLM proxies answered 500 for any upstream failure but kept the real status in
    # ``code``; trust a body status only when the HTTP status is that generic 500.
    if status == 500 and env.body_status is not None and env.body_status != 500:
        effective = env.body_status
    message = redact((env.message or f"HTTP {status}")[:_MAX_MESSAGE], secrets)
    text = f"{what}: {status} {message}" if effective == status else f"{what}: {status} ({effective}) {message}"
    kw: dict[str, Any] = {"status": effective, "param": env.param, "code": env.code}

    if effective in (400, 404, 409, 410) and env.message and _EXPIRED.search(env.message):
        return ContainerExpired(text, **kw)
    if effective == 429:
        return RateLimited(text, retry_after=parse_retry_after(headers, now), **kw)
    if effective in (401, 403):
        return AuthError(text, **kw)
    if effective == 400 or effective >= 500:
        if (env.type in _AUTH_TYPES or env.code in _AUTH_TYPES
                or (env.message is not None and _AUTH_MESSAGE.search(env.message))):
            # A key the gateway cannot accept (or lacks upstream): a configuration error, at once.
            return AuthError(f"{text} (the API key is missing or wrong: check HEARTH_API_KEY, or the "
                             "gateway's own upstream key)", **kw)
        if keyless_crash_is_auth and effective == 500 and env.json is None:
            return AuthError(f"{text} (no API key was sent, and this gateway fails like this without one: "
                             "set HEARTH_API_KEY to the gateway's key)", **kw)
    if effective == 404:
        return NotFound(text, **kw)
    if effective in (400, 422):
        return BadRequest(text, **kw)
    if effective >= 500:
        return ServerError(text, **kw)
    if effective in (408, 409):
        # Request timeout and lock conflicts: the same request may well succeed later.
        return APIError(text, temporary=True, **kw)
    return APIError(text, **kw)

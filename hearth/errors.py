"""One exception tree for everything Hearth raises.

Library exceptions (httpx, redis, fsspec, pydantic) are translated at the boundary into these, so
callers catch ``HearthError`` and ask ``err.temporary`` to decide between retrying and failing.
Messages never carry secrets: API keys and ``domain_secrets`` values are not placed in any error.
"""

from __future__ import annotations


class HearthError(Exception):
    """Root of every error Hearth raises.

    ``temporary`` says whether the same operation may succeed if retried later.
    """

    temporary: bool = False

    def __init__(self, message: str = "", *, temporary: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if temporary is not None:
            self.temporary = temporary

    def __str__(self) -> str:
        return self.message or type(self).__name__


class ConfigError(HearthError):
    """Settings or a pools file are invalid; ``where`` names the place (file:line, pool, field)."""

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


# --- Containers API ---------------------------------------------------------------------------


class APIError(HearthError):
    """The Containers API (or the way to it) failed. ``status`` is the HTTP status, if any."""

    def __init__(
        self,
        message: str = "",
        *,
        status: int | None = None,
        param: str | None = None,
        code: str | None = None,
        temporary: bool | None = None,
    ) -> None:
        self.status = status
        self.param = param
        self.code = code
        super().__init__(message, temporary=temporary)


class TransportError(APIError):
    """The request did not complete: connection refused, reset, dropped, timed out."""

    temporary = True


class ServerError(APIError):
    """The backend answered 5xx."""

    temporary = True


class RateLimited(APIError):
    """The backend answered 429; ``retry_after`` is its ``Retry-After`` in seconds, if it sent one."""

    temporary = True

    def __init__(self, message: str = "", *, retry_after: float | None = None, **kw: object) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)  # type: ignore[arg-type]


class AuthError(APIError):
    """401/403: the key is missing, wrong or not allowed."""


class BadRequest(APIError):
    """400/422: the request was invalid; ``param`` names the field when the backend says."""


class NotFound(APIError):
    """404: the container, file or Files-API object does not exist (or was deleted)."""


class ContainerExpired(APIError):
    """The container is past its idle expiry; it can never be used again."""


class MalformedResponse(APIError):
    """The backend answered something that is not the documented shape."""


class Conflict(HearthError):
    """A state transition was refused because the record changed under us (lost a race)."""


class LeaseError(HearthError):
    """A lease could not be taken or released (wrong token, lapsed, pool empty)."""


class PoolEmpty(LeaseError):
    """No ready container could be leased within the timeout."""

    temporary = True


class StorageError(HearthError):
    """Durable storage refused a read or a write."""

    temporary = True


class UnsafePath(HearthError):
    """A container path would escape its harvest target; it is refused and recorded."""


class InputsIncomplete(HearthError):
    """After an input sync, the container still lacks an input (or holds it with the wrong size)."""

    temporary = True


class StateStoreError(HearthError):
    """Redis (the state store) failed a command: the change may or may not have happened; retry."""

    temporary = True


class Busy(HearthError):
    """Another process holds the lock this operation needs (e.g. a harvest of the same container); retry."""

    temporary = True

"""How each flavour of the Containers API differs on the wire (GATEWAYS.md), in one place.

The client speaks OpenAI's shapes; a dialect adjusts the few things backends disagree on: where
the API lives, how the key is sent, what a gateway wants to know about routing (``provider``), and
which features a backend silently drops (the list ``name`` filter, ``has_more: false``, the JSON
``file_id`` form of a container-file create). The client asks the dialect; it never branches on
backend names itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hearth.errors import ConfigError


@dataclass(frozen=True)
class Dialect:
    """The OpenAI wire: ``Authorization: Bearer``, the base URL used as given."""

    name: str = "openai"
    # Whether the backend is known to forward the ``name`` filter of ``GET /containers``.
    # The client filters by name client-side in every dialect; when the backend drops the filter,
    # finding a container by name means paging through all of them.
    forwards_name_filter: bool = True
    # Whether ``POST /containers/{id}/files`` with JSON ``{"file_id": …}`` reaches the backend.
    supports_file_id_copy: bool = True
    # Whether a create's ``file_ids`` are copied into the container. Where they are, pool inputs are
    # staged once in the Files API and copied server-side (``hearth.files.staging``); a backend that
    # cannot is given ``False`` here and gets today's streamed per-container uploads.
    copies_create_file_ids: bool = True
    # The create-body fields the backend forwards (None: all). A pool that needs a field left out
    # here is refused before any create (LiteLLM's /v1 routes drop memory_limit, network_policy
    # and skills silently, GATEWAYS.md §2.6), instead of getting containers unlike its spec.
    create_fields: frozenset[str] | None = None
    # Whether a bare (non-JSON) 500 answering a request sent without a key means the key is missing:
    # LiteLLM's proxy fails that way (its auth error handler needs a module it may lack).
    keyless_crash_is_auth: bool = False

    def base_url(self, base: str) -> str:
        return base.rstrip("/")

    def auth_headers(self, key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if key else {}

    def extra_headers(self) -> dict[str, str]:
        return {}

    def params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Query parameters of a call other than create."""
        return {k: v for k, v in (params or {}).items() if v is not None}

    def create_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """The JSON body of ``POST /containers``."""
        return body

    def next_cursor(self, page: Any) -> str | None:
        """The ``after`` value that continues a list, or None at its end."""
        if not getattr(page, "has_more", False):
            return None
        last: str | None = getattr(page, "last_id", None)
        data = getattr(page, "data", None)
        if last is None and data:
            last = data[-1].id
        return last


@dataclass(frozen=True)
class LocalDialect(Dialect):
    """Hearth's local API: the OpenAI wire; a key is sent only if one is configured."""

    name: str = "local"


@dataclass(frozen=True)
class AzureDialect(Dialect):
    """Azure OpenAI / Foundry v1 API: ``{endpoint}/openai/v1`` and the ``api-key`` header."""

    name: str = "azure"

    def base_url(self, base: str) -> str:
        base = base.rstrip("/")
        if base.endswith("/openai/v1"):
            return base
        if base.endswith("/openai"):
            return base + "/v1"
        return base + "/openai/v1"

    def auth_headers(self, key: str | None) -> dict[str, str]:
        return {"api-key": key} if key else {}


@dataclass(frozen=True)
class GatewayDialect(Dialect):
    """Bifrost / LiteLLM in front of a provider (GATEWAYS.md §1, §2).

    ``provider`` goes into the create body and into the query of every other call (Bifrost);
    LiteLLM reads the ``custom-llm-provider`` header first, so that is sent too. Neither forwards
    the list ``name`` filter nor the JSON ``file_id`` form of a file create; Bifrost omits
    ``has_more: false`` (the model defaults it) and may hand back its own ``after`` cursor, which
    must be sent back verbatim to continue a list.
    """

    name: str = "gateway"
    provider: str = "openai"
    forwards_name_filter: bool = False
    supports_file_id_copy: bool = False

    def extra_headers(self) -> dict[str, str]:
        return {"custom-llm-provider": self.provider}

    def params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        out = super().params(params)
        out.setdefault("provider", self.provider)
        return out

    def create_body(self, body: dict[str, Any]) -> dict[str, Any]:
        if not body.get("provider"):
            body = {**body, "provider": self.provider}
        return body

    def next_cursor(self, page: Any) -> str | None:
        if not getattr(page, "has_more", False):
            return None
        extra = getattr(page, "model_extra", None) or {}
        cursor = extra.get("after")
        if isinstance(cursor, str) and cursor:
            return cursor
        return super().next_cursor(page)


# What LiteLLM's /v1 container routes forward of a create body (GATEWAYS.md §2.3, §2.6).
LITELLM_CONTAINERS_CREATE_FIELDS = frozenset({"name", "expires_after", "file_ids"})
GATEWAY_ROUTES = ("containers", "passthrough")
# Path suffixes a LiteLLM base may be given with; stripped to find the proxy's root.
_LITELLM_SUFFIXES = ("/openai/v1", "/openai", "/v1")


def litellm_root(base: str) -> str:
    """The proxy's root URL from any base a user may give (``…``, ``…/v1``, ``…/openai``, ``…/openai/v1``)."""
    base = base.rstrip("/")
    for suffix in _LITELLM_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


@dataclass(frozen=True)
class LiteLLMDialect(Dialect):
    """The LiteLLM proxy (GATEWAYS.md §2), through one of its two route families.

    ``routes="containers"``: its own ``/v1/containers…`` routes. They take the proxy's key, route by
    the ``custom-llm-provider`` header, and forward only ``name``, ``expires_after`` and ``file_ids``
    of a create body (``memory_limit``, ``network_policy`` and ``skills`` are dropped silently), drop
    the list ``name`` filter, and accept file uploads as multipart only.

    ``routes="passthrough"``: its ``/openai`` pass-through, which relays the OpenAI request as it is
    (every create field, the ``name`` filter, the JSON ``file_id`` form), with the proxy's key
    replaced by its configured upstream key. It appends the path after ``/openai`` to the upstream
    base (``OPENAI_API_BASE``, default ``https://api.openai.com/``, where it inserts ``/v1`` itself),
    so Hearth calls ``/openai/containers``: right for the default upstream and for an upstream base
    that ends in ``/v1``, where ``/openai/v1/containers`` would become ``/v1/v1/containers``.

    Either way the base URL may be given as the proxy root or with ``/v1``, ``/openai`` or
    ``/openai/v1`` (Bifrost's layout): the dialect builds the route's own base from the root, so a
    Bifrost-style base never becomes ``/v1/v1/containers``.
    """

    name: str = "litellm"
    routes: str = "containers"
    provider: str = "openai"
    keyless_crash_is_auth: bool = True

    def __post_init__(self) -> None:
        if self.routes not in GATEWAY_ROUTES:
            raise ConfigError(
                f"unknown LiteLLM routes {self.routes!r}; expected one of {', '.join(GATEWAY_ROUTES)}",
                where="HEARTH_GATEWAY_ROUTES",
            )
        containers = self.routes == "containers"
        # Frozen dataclass: the route family decides what the backend forwards.
        object.__setattr__(self, "forwards_name_filter", not containers)
        object.__setattr__(self, "supports_file_id_copy", not containers)
        object.__setattr__(self, "create_fields", LITELLM_CONTAINERS_CREATE_FIELDS if containers else None)
        object.__setattr__(self, "name", "litellm /v1/containers" if containers else "litellm /openai pass-through")

    def base_url(self, base: str) -> str:
        root = litellm_root(base)
        if self.routes == "containers":
            return root + "/v1"
        return root + "/openai"

    def extra_headers(self) -> dict[str, str]:
        # The pass-through relays to OpenAI as is; only LiteLLM's own routes read the provider.
        return {"custom-llm-provider": self.provider} if self.routes == "containers" else {}


DIALECTS = ("openai", "azure", "gateway", "litellm", "local")


def make_dialect(name: str, *, gateway_provider: str = "openai", gateway_routes: str = "containers") -> Dialect:
    """The dialect called ``name``; ``ConfigError`` for an unknown one."""
    if name == "openai":
        return Dialect()
    if name == "local":
        return LocalDialect()
    if name == "azure":
        return AzureDialect()
    if name == "gateway":
        return GatewayDialect(provider=gateway_provider)
    if name == "litellm":
        return LiteLLMDialect(routes=gateway_routes, provider=gateway_provider)
    raise ConfigError(f"unknown API dialect {name!r}; expected one of {', '.join(DIALECTS)}", where="dialect")

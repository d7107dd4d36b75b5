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


DIALECTS = ("openai", "azure", "gateway", "local")


def make_dialect(name: str, *, gateway_provider: str = "openai") -> Dialect:
    """The dialect called ``name``; ``ConfigError`` for an unknown one."""
    if name == "openai":
        return Dialect()
    if name == "local":
        return LocalDialect()
    if name == "azure":
        return AzureDialect()
    if name == "gateway":
        return GatewayDialect(provider=gateway_provider)
    raise ConfigError(f"unknown API dialect {name!r}; expected one of {', '.join(DIALECTS)}", where="dialect")

"""Rows of the local store -> JSON bodies in the shapes of ``hearth.api.models``, in both dialects.

One place decides what goes on the wire so that every route (and the fault middleware) answers
alike: OpenAI format under ``/v1``; under ``/openai/v1`` the gateway format of Bifrost (the seed
``gateway-create-container-openai-format.txt``, GATEWAYS.md §1.2): ``metadata`` echoed on containers,
``extra_fields`` on every object, ``has_more: false`` and nil cursors omitted from lists, and errors
in the OpenAI four-key envelope plus Bifrost's ``is_bifrost_error``/``status_code``/``extra_fields``.
"""

from __future__ import annotations

import json
from typing import Any

from hearth.api.models import (
    Container,
    ContainerFile,
    ContainerFileList,
    ContainerList,
    Deleted,
    ErrorBody,
    ErrorDetail,
    ExpiresAfterOut,
    FileList,
    FileObject,
    NetworkPolicyOut,
)

# Bifrost's provider enum (seed 003). ``provider`` defaults to openai when absent, as Bifrost's code does.
GATEWAY_PROVIDERS: tuple[str, ...] = (
    "openai", "azure", "anthropic", "bedrock", "cohere", "vertex", "vllm", "mistral", "ollama", "groq", "sgl",
    "parasail", "perplexity", "replicate", "cerebras", "gemini", "openrouter", "elevenlabs", "huggingface",
    "nebius", "xai",
)


class Dialect:
    """How one request wants its answer: plain OpenAI, or a gateway (``extra_fields`` and friends)."""

    def __init__(self, gateway: bool, provider: str = "openai", request_type: str = "") -> None:
        self.gateway = gateway
        self.provider = provider
        self.request_type = request_type
        self.latency_ms = 0

    def extra_fields(self) -> dict[str, Any]:
        return {"request_type": self.request_type, "provider": self.provider, "latency": self.latency_ms}

    def decorate(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.gateway:
            body["extra_fields"] = self.extra_fields()
        return body


def _dump(model: Any) -> dict[str, Any]:
    out: dict[str, Any] = model.model_dump(mode="json", exclude_none=True)
    return out


def container_body(row: dict[str, Any], dialect: Dialect | None = None) -> dict[str, Any]:
    policy = json.loads(row["network_policy"]) if row.get("network_policy") else None
    model = Container(
        id=row["id"],
        name=row["name"],
        created_at=int(row["created_at"]),
        status=row["status"],
        last_active_at=int(row["last_active_at"]),
        expires_after=ExpiresAfterOut(anchor="last_active_at", minutes=row["minutes"]),
        memory_limit=row["memory_limit"],
        network_policy=NetworkPolicyOut(**policy) if policy else None,
    )
    body = _dump(model)
    if dialect is not None and dialect.gateway:
        body["metadata"] = json.loads(row["metadata"]) if row.get("metadata") else {}
        body.pop("network_policy", None)  # Bifrost's struct has no such field (GATEWAYS.md §1.2)
        return dialect.decorate(body)
    return body


def container_file_body(row: dict[str, Any], dialect: Dialect | None = None) -> dict[str, Any]:
    model = ContainerFile(
        id=row["id"],
        container_id=row["container_id"],
        created_at=int(row["created_at"]),
        bytes=int(row["bytes"]),
        path=row["path"],
        source=row["source"],
    )
    body = _dump(model)
    return dialect.decorate(body) if dialect is not None else body


def file_body(row: dict[str, Any], dialect: Dialect | None = None) -> dict[str, Any]:
    model = FileObject(
        id=row["id"],
        bytes=int(row["bytes"]),
        created_at=int(row["created_at"]),
        filename=row["filename"],
        purpose=row["purpose"],
        status="processed",
        expires_at=int(row["expires_at"]) if row.get("expires_at") is not None else None,
    )
    body = _dump(model)
    return dialect.decorate(body) if dialect is not None else body


def list_body(kind: str, items: list[dict[str, Any]], has_more: bool, dialect: Dialect) -> dict[str, Any]:
    """A list envelope; ``first_id``/``last_id`` are null on an empty page (SEMANTICS.md §1.3)."""
    model_cls = {"containers": ContainerList, "container_files": ContainerFileList, "files": FileList}[kind]
    # Validate through the shared model (so the shape is the client's), then serialise the items we built.
    model_cls.model_validate({"data": items, "has_more": has_more})
    first = items[0]["id"] if items else None
    last = items[-1]["id"] if items else None
    body: dict[str, Any] = {"object": "list", "data": items, "first_id": first, "last_id": last, "has_more": has_more}
    if dialect.gateway:
        # Bifrost: omitempty on has_more and the cursors, plus its own ``after`` cursor.
        for key in ("first_id", "last_id"):
            if body[key] is None:
                del body[key]
        if not has_more:
            del body["has_more"]
        if last is not None:
            body["after"] = last
        dialect.decorate(body)
    return body


def deleted_body(object_id: str, object_name: str, dialect: Dialect) -> dict[str, Any]:
    return dialect.decorate(_dump(Deleted(id=object_id, object=object_name, deleted=True)))


def error_body(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    dialect: Dialect | None = None,
) -> dict[str, Any]:
    """The OpenAI envelope, all four keys always present (``param``/``code`` may be null)."""
    body: dict[str, Any] = ErrorBody(
        error=ErrorDetail(message=message, type=type_, param=param, code=code)
    ).model_dump(mode="json")
    if dialect is not None and dialect.gateway:
        body["is_bifrost_error"] = False
        body["status_code"] = status
        body["extra_fields"] = dialect.extra_fields()
    return body

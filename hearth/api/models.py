"""Wire models of the Containers API and the Files API subset, shared by client and local server.

One definition serves both sides so that what the local server emits is, by construction, what
the client parses. Response models tolerate unknown fields (gateways add ``extra_fields``,
OpenAI adds fields over time); request models are strict so the server can name the offending
``param``. Shapes follow ``shared/spec/containers-openapi.yaml`` and SEMANTICS.md.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_serializer, model_validator

MemoryLimit = Literal["1g", "4g", "16g", "64g"]
MEMORY_LIMITS: tuple[str, ...] = ("1g", "4g", "16g", "64g")
DEFAULT_MEMORY_LIMIT: MemoryLimit = "1g"
DEFAULT_EXPIRES_MINUTES = 20
USABLE_STATUSES = frozenset({"running"})
FILE_PURPOSES: tuple[str, ...] = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")


class _Response(BaseModel):
    """Base of everything a backend sends: unknown fields are kept, never an error.

    Except a gateway's ``extra_fields``: Bifrost puts the raw request there, which echoes a create
    body's ``domain_secrets`` values; nothing Hearth needs is in it, so it is dropped on arrival.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _drop_gateway_echo(cls, data: Any) -> Any:
        if isinstance(data, dict) and "extra_fields" in data:
            data = {k: v for k, v in data.items() if k != "extra_fields"}
        return data


class _Request(BaseModel):
    """Base of request bodies: unknown fields are refused so the server can name them."""

    model_config = ConfigDict(extra="forbid")


# --- requests ---------------------------------------------------------------------------------


class ExpiresAfter(_Request):
    anchor: Literal["last_active_at"]
    minutes: Annotated[int, Field(ge=1)]


class DomainSecret(_Request):
    domain: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(min_length=1)]
    value: Annotated[SecretStr, Field(min_length=1, max_length=10_485_760)]

    @field_serializer("value", when_used="json")
    def _reveal_on_the_wire(self, v: SecretStr) -> str:
        # Only the JSON sent to the backend carries the value; repr/str/model_dump() stay masked.
        return v.get_secret_value()


class NetworkPolicyDisabled(_Request):
    type: Literal["disabled"]


class NetworkPolicyAllowlist(_Request):
    type: Literal["allowlist"]
    allowed_domains: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    domain_secrets: Annotated[list[DomainSecret], Field(min_length=1)] | None = None


NetworkPolicyParam = Annotated[NetworkPolicyDisabled | NetworkPolicyAllowlist, Field(discriminator="type")]


class SkillReference(_Request):
    type: Literal["skill_reference"]
    skill_id: Annotated[str, Field(min_length=1, max_length=64)]
    version: Annotated[str, Field(pattern=r"^([1-9][0-9]*|latest)$")] | None = None


class InlineSkillSource(_Request):
    type: Literal["base64"]
    media_type: Literal["application/zip"]
    data: Annotated[str, Field(min_length=1, max_length=70_254_592)]


class InlineSkill(_Request):
    type: Literal["inline"]
    name: Annotated[str, Field(min_length=1)]
    description: Annotated[str, Field(min_length=1)]
    source: InlineSkillSource


SkillParam = Annotated[SkillReference | InlineSkill, Field(discriminator="type")]


class CreateContainerRequest(_Request):
    """Body of ``POST /containers``. ``provider`` and ``metadata`` are the gateway additions."""

    name: Annotated[str, Field(min_length=1)]
    expires_after: ExpiresAfter | None = None
    file_ids: list[str] | None = None
    memory_limit: MemoryLimit | None = None
    network_policy: NetworkPolicyParam | None = None
    skills: list[SkillParam] | None = None
    provider: str | None = None
    metadata: dict[str, str] | None = None

    def wire(self) -> dict[str, Any]:
        """The JSON body to send, secrets included, unset fields left out."""
        return self.model_dump(mode="json", exclude_none=True)


class CreateContainerFileByIdRequest(_Request):
    file_id: Annotated[str, Field(min_length=1)]


# --- responses --------------------------------------------------------------------------------


class ExpiresAfterOut(_Response):
    anchor: str | None = None
    minutes: int | None = None


class NetworkPolicyOut(_Response):
    type: str
    allowed_domains: list[str] | None = None


class Container(_Response):
    id: str
    object: str = "container"
    name: str
    created_at: int
    status: str
    last_active_at: int | None = None
    expires_after: ExpiresAfterOut | None = None
    memory_limit: str | None = None
    network_policy: NetworkPolicyOut | None = None

    @property
    def usable(self) -> bool:
        """Only a known-good status is usable; an unknown string is treated as not usable."""
        return self.status in USABLE_STATUSES

    @property
    def expired(self) -> bool:
        return self.status == "expired"

    def expires_at(self) -> float | None:
        """When the container will expire if nothing touches it (epoch seconds)."""
        if self.last_active_at is None:
            return None
        minutes = (self.expires_after.minutes if self.expires_after else None) or DEFAULT_EXPIRES_MINUTES
        return float(self.last_active_at + minutes * 60)


class ContainerFile(_Response):
    id: str
    object: str = "container.file"
    container_id: str
    created_at: int
    bytes: int | None = None  # some backends report null for model-written files
    path: str
    source: str


class ContainerList(_Response):
    object: str = "list"
    data: list[Container]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False  # Bifrost omits ``has_more: false``


class ContainerFileList(_Response):
    object: str = "list"
    data: list[ContainerFile]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class FileObject(_Response):
    """A Files-API file (``file-…``)."""

    id: str
    object: str = "file"
    bytes: int | None = None
    created_at: int
    filename: str
    purpose: str
    status: str | None = None
    status_details: str | None = None
    expires_at: int | None = None


class FileList(_Response):
    object: str = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class Deleted(_Response):
    id: str
    object: str
    deleted: bool


class ErrorDetail(_Response):
    message: str
    type: str | None = None
    param: str | None = None
    code: str | None = None


class ErrorBody(_Response):
    error: ErrorDetail

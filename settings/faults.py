"""Fault injection for the local Containers API: latency, 5xx, 429 with Retry-After, dropped connections,
and create fields dropped the way a gateway drops them.

Off by default. Set overall or per endpoint, deterministic under ``seed``. Lives in settings because
it is configuration (``HEARTH_FAULTS`` as JSON, or ``PUT /_dev/faults`` at run time). Endpoint names
and the order in which faults apply are documented in ``hearth/localapi/faults.py``. Example::

    HEARTH_FAULTS='{"seed": 1, "error_rate": 0.1, "endpoints": {"files.content": {"drop_rate": 0.5}}}'
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

Rate = Annotated[float, Field(ge=0.0, le=1.0)]

# Every faultable endpoint of the local API (hearth/localapi/faults.py maps routes to these; it
# imports this tuple, since settings cannot import hearth).
ENDPOINT_NAMES: tuple[str, ...] = (
    "containers.create", "containers.list", "containers.retrieve", "containers.delete",
    "files.create", "files.list", "files.retrieve", "files.delete", "files.content",
    "uploads.create", "uploads.list", "uploads.retrieve", "uploads.delete", "uploads.content",
)


class EndpointFaults(BaseModel):
    """Faults for one endpoint (or all of them). Rates are probabilities per request, 0..1."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: Annotated[float, Field(ge=0, description="Added latency per request, ms. Default 0.")] = 0.0
    jitter_ms: Annotated[float, Field(ge=0, description="Uniform extra latency 0..jitter, ms. Default 0.")] = 0.0
    error_rate: Rate = Field(0.0, description="Share of requests answered 500 or 503. Default 0.")
    rate_limit_rate: Rate = Field(0.0, description="Share of requests answered 429. Default 0.")
    retry_after_seconds: Annotated[int, Field(ge=0, description="Retry-After sent with a 429, s. Default 1.")] = 1
    drop_rate: Rate = Field(0.0, description="Share of requests whose connection is dropped. Default 0.")
    drop_after_processing: bool = Field(
        True, description="Drop after the request took effect (the response is lost), not before."
    )


# Fields of a create body a gateway can drop (``drop_create_fields``).
CREATE_FIELDS: tuple[str, ...] = (
    "expires_after", "file_ids", "memory_limit", "metadata", "network_policy", "skills",
)


class FaultConfig(EndpointFaults):
    """Overall faults plus per-endpoint overrides keyed by endpoint name (e.g. ``containers.create``)."""

    seed: int | None = Field(None, description="Seed of the fault RNG; same seed, same faults. Default random.")
    drop_create_fields: list[str] = Field(
        default_factory=list,
        description=(
            "Create-body fields removed before the API sees them, as a gateway that does not forward them "
            "(LiteLLM's /v1 routes drop memory_limit, network_policy, skills): the container is made "
            "without them and says so in its answer. Default [] (none)."
        ),
    )
    endpoints: dict[str, EndpointFaults] = Field(
        default_factory=dict,
        description=(
            "Per-endpoint overrides (each replaces the overall values for its endpoint): containers.create|list|"
            "retrieve|delete, files.create|list|retrieve|delete|content (container files), uploads.create|list|"
            "retrieve|delete|content (the Files API). Default none."
        ),
    )

    @field_validator("endpoints")
    @classmethod
    def _known_endpoints(cls, value: dict[str, EndpointFaults]) -> dict[str, EndpointFaults]:
        # A misspelt name would otherwise configure nothing, silently.
        unknown = sorted(set(value) - set(ENDPOINT_NAMES))
        if unknown:
            raise ValueError(f"unknown endpoint name(s) {unknown}; known: {', '.join(ENDPOINT_NAMES)}")
        return value

    @field_validator("drop_create_fields")
    @classmethod
    def _known_create_fields(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(CREATE_FIELDS))
        if unknown:
            raise ValueError(f"unknown create field(s) {unknown}; known: {', '.join(CREATE_FIELDS)}")
        return value

    def for_endpoint(self, name: str) -> EndpointFaults:
        return self.endpoints.get(name, self)

    @property
    def active(self) -> bool:
        every = [self, *self.endpoints.values()]
        return bool(self.drop_create_fields) or any(
            f.latency_ms or f.jitter_ms or f.error_rate or f.rate_limit_rate or f.drop_rate for f in every
        )

"""The one typed ``Settings`` of every Hearth process.

Read from the environment (``HEARTH_`` prefix), then ``.env``, then defaults; constructor arguments
win over all of them. Every field documents its unit and default; the README's settings reference
is generated from these descriptions.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from settings.discovery import discover_api_base, discover_pools, discover_redis_url
from settings.faults import FaultConfig
from settings.prices import PriceTable

DEFAULT_LOCAL_PORT = 8650


class Backend(StrEnum):
    local = "local"
    openai = "openai"
    azure = "azure"
    gateway = "gateway"
    litellm = "litellm"


class Settings(BaseSettings):
    """Process settings. Secrets are ``SecretStr``: they never appear in ``repr`` or logs."""

    model_config = SettingsConfigDict(
        env_prefix="HEARTH_", env_file=".env", env_file_encoding="utf-8", extra="ignore",
        populate_by_name=True,
        hide_input_in_errors=True,  # a bad value may be a secret: errors name the field, never echo it
    )

    # --- backend ---------------------------------------------------------------------------
    backend: Backend = Field(
        Backend.local,
        description="Which Containers API to use: local | openai | azure | gateway (Bifrost) | litellm. Default local.",
    )
    api_base: str | None = Field(
        None,
        description=(
            "Base URL of the API. Default per backend: local http://127.0.0.1:8650/v1, openai "
            "https://api.openai.com/v1; azure wants the resource endpoint (…/openai/v1 is added); "
            "gateway wants Bifrost's OpenAI base (http://localhost:8080/openai/v1); litellm wants the proxy's "
            "address (http://localhost:4000; a /v1, /openai or /openai/v1 suffix is ignored: "
            "HEARTH_GATEWAY_ROUTES picks the route)."
        ),
    )
    api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("HEARTH_API_KEY", "api_key"),
        description="API key. HEARTH_API_KEY (from any source), else OPENAI_API_KEY. Default none (the local "
        "API needs none).",
    )
    openai_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key"),
        description="Fallback API key, used only when HEARTH_API_KEY is set nowhere. Default none.",
    )
    gateway_provider: str = Field(
        "openai", description="Provider a gateway should route to (body on create, query elsewhere). Default openai."
    )
    gateway_routes: Literal["containers", "passthrough"] = Field(
        "containers",
        description=(
            "Which LiteLLM routes the litellm backend uses: containers (its /v1/containers routes; they drop "
            "memory_limit, network_policy and skills on create and the list name filter, so a pool that needs "
            "one is refused) | passthrough (its /openai pass-through, which forwards every field). "
            "Default containers."
        ),
    )
    api_timeout: Annotated[float, Field(gt=0)] = Field(60.0, description="HTTP timeout per request, s. Default 60.")
    api_max_retries: Annotated[int, Field(ge=0)] = Field(
        6, description="Retries of a temporary API error before giving up. Default 6."
    )
    api_retry_budget: Annotated[float, Field(gt=0)] = Field(
        120.0, description="Total time one call may spend retrying, s. Default 120."
    )
    api_backoff_base: Annotated[float, Field(gt=0)] = Field(
        0.5, description="First backoff before jitter, s; doubles per try. Default 0.5."
    )
    api_backoff_cap: Annotated[float, Field(gt=0)] = Field(30.0, description="Largest backoff, s. Default 30.")
    api_max_in_flight: Annotated[int, Field(ge=0)] = Field(
        32, description="In-flight API requests allowed across all processes (Redis-shared); 0 = no limit. Default 32."
    )
    api_requests_per_minute: Annotated[int, Field(ge=0)] = Field(
        0, description="API requests per minute across all processes (Redis-shared); 0 = no limit. Default 0."
    )

    # --- state and storage -----------------------------------------------------------------
    redis_url: str | None = Field(
        None, description="Redis URL (broker and state). Default none: `hearth up` starts an embedded Redis."
    )
    pools: Path = Field(Path("examples/pools.yaml"), description="The pools file. Default examples/pools.yaml.")
    storage_url: str | None = Field(
        None, description="Harvest target (fsspec URL). Default file://<data_dir>/harvest."
    )
    data_dir: Path = Field(
        Path(".hearth"), description="Where embedded parts (Redis, local API) keep their data. Default ./.hearth."
    )
    key_prefix: str = Field(
        "hearth",
        description="Prefix of every Redis key Hearth writes, the broker's included: one deployment per prefix in a "
        "Redis database. Not empty, no spaces or glob characters (* ? [ ] \\). Default hearth.",
    )
    name_prefix: str = Field(
        "hearth", description="Prefix of the names of containers Hearth creates (orphan detection). Default hearth."
    )

    # --- processes ---------------------------------------------------------------------------
    heartbeat_interval: Annotated[float, Field(gt=0)] = Field(
        10.0, description="Seconds between heartbeat ticks. Default 10."
    )
    heartbeat_leader_ttl: Annotated[float, Field(gt=0)] = Field(
        30.0, description="Leader lease of the heartbeat, s; a standby takes over within this. Default 30."
    )
    worker_concurrency: Annotated[int, Field(ge=1)] = Field(
        8, description="Tasks run at once per `hearth worker` (threads or processes). Default 8."
    )
    worker_health_interval: Annotated[float, Field(gt=0)] = Field(
        5.0, description="Seconds between a worker's writes of its health key (`hearth check`). Default 5."
    )
    worker_health_ttl: Annotated[float, Field(gt=0)] = Field(
        15.0,
        description="Lifetime of a worker's health key, s: a worker killed or stalled counts as dead this long "
        "after its last write; must exceed HEARTH_WORKER_HEALTH_INTERVAL. Default 15.",
    )
    worker_pool: Literal["threads", "prefork", "solo"] = Field(
        "threads", description="Celery pool: threads suit Hearth's I/O-bound tasks. Default threads."
    )
    broker_transport: Literal["hearth", "kombu"] = Field(
        "hearth",
        description="Debugging switch: `kombu` runs workers on kombu's stock Redis transport, which a Redis "
        "restart under a held task stops (tasks/broker.py). Default hearth.",
    )
    task_visibility_timeout: Annotated[int, Field(ge=10)] = Field(
        600, description="Seconds before a task whose worker vanished is redelivered. Default 600."
    )
    breaker_threshold: Annotated[int, Field(ge=1)] = Field(
        5, description="Create failures in a row (within the window) that pause a pool's creates. Default 5."
    )
    breaker_window: Annotated[float, Field(gt=0)] = Field(
        600.0, description="Window in which breaker failures count, s. Default 600."
    )
    breaker_cooldown: Annotated[float, Field(gt=0)] = Field(
        300.0, description="How long an open breaker pauses creates before one probe, s. Default 300."
    )
    create_timeout: Annotated[float, Field(gt=0)] = Field(
        600.0,
        description="A container still creating or seeding after this long is treated as failed, s. Default 600.",
    )
    orphan_grace: Annotated[float, Field(ge=0)] = Field(
        300.0, description="Age before an unowned prefixed container is deleted, s. Default 300."
    )
    staged_grace: Annotated[float, Field(ge=0)] = Field(
        3600.0,
        description="How long a staged input (a Files-API copy of a pool input) that no pool uses any more is "
        "kept before `hearth gc` or the heartbeat deletes it, s. Default 3600.",
    )
    session_idle: Annotated[float, Field(gt=0)] = Field(
        1800.0,
        description="A session's idle window, s: its lease lapses (harvest, retire) when unused this long; "
        "a pool's lease.session_idle_seconds overrides it. Default 1800.",
    )
    session_save_every: Annotated[float, Field(ge=0)] = Field(
        15.0,
        description="While a session is active, its new files are saved this often with no app call, s "
        "(one file listing per active session per period); a pool's lease.session_save_every_seconds "
        "overrides it; 0 = off (saved at each lease, after_response and the end only). Default 15.",
    )
    session_retention: Annotated[float, Field(gt=0)] = Field(
        7 * 24 * 3600.0,
        description="How long a session record (its container history) stays in Redis after its last use, s. "
        "Default 604800 (7 days).",
    )

    # --- cost -------------------------------------------------------------------------------------
    prices: PriceTable = Field(
        default_factory=PriceTable,
        description="Container prices per memory tier (JSON, e.g. {\"tiers\": {\"4g\": {\"usd_per_minute\": 0.006, "
        "\"minimum_minutes\": 5}}}); tiers not named keep the published price (settings/prices.py says its source "
        "and date). Default OpenAI's per-minute prices with a 5-minute minimum.",
    )
    budget_usd_per_day: Annotated[float | None, Field(gt=0)] = Field(
        None, description="Daily budget (UTC day) of every pool without a `budget` of its own, $. Default none."
    )
    budget_hard: bool = Field(
        False, description="With HEARTH_BUDGET_USD_PER_DAY: over budget, create nothing (not only no spares). "
        "Default false.",
    )
    cost_retention_days: Annotated[float, Field(gt=0)] = Field(
        35.0, description="How long hourly cost aggregates stay in Redis, days. Default 35."
    )
    demand_fast_tau: Annotated[float, Field(gt=0)] = Field(
        20.0, description="Time constant of the fast lease-rate estimate of `buffer: auto` (how fast a rise is "
        "followed), s. Default 20.",
    )
    demand_slow_tau: Annotated[float, Field(gt=0)] = Field(
        900.0, description="Time constant of the slow lease-rate estimate (how long a spike is remembered), s. "
        "Default 900.",
    )
    demand_ready_default: Annotated[float, Field(gt=0)] = Field(
        10.0, description="Time to ready assumed by `buffer: auto` before any was measured, s. Default 10."
    )

    # --- local API -----------------------------------------------------------------------------
    local_host: str = Field("127.0.0.1", description="Host `hearth api` binds. Default 127.0.0.1.")
    local_port: int = Field(DEFAULT_LOCAL_PORT, description="Port `hearth api` binds. Default 8650.")
    faults: FaultConfig = Field(
        default_factory=FaultConfig,
        description="Local API fault injection (JSON). Default off.",
    )

    # --- observability ---------------------------------------------------------------------
    metrics_port: int | None = Field(None, description="Prometheus metrics port; none = off. Default none.")
    log_json: bool = Field(False, description="Logs as one JSON object per line. Default false.")
    log_level: str = Field("INFO", description="Log level. Default INFO.")
    sentry_dsn: SecretStr | None = Field(
        None, validation_alias=AliasChoices("SENTRY_DSN", "HEARTH_SENTRY_DSN", "sentry_dsn"),
        description="Sentry DSN; enables error reporting and heartbeat check-ins. Default none.",
    )

    @field_validator("key_prefix")
    @classmethod
    def _plain_key_prefix(cls, prefix: str) -> str:
        # The broker subscribes to its fanout with PSUBSCRIBE <prefix>…: a glob character in the prefix
        # would match another deployment's channels.
        if not prefix or any(c.isspace() or c in "*?[]\\" for c in prefix):
            raise ValueError("HEARTH_KEY_PREFIX must be non-empty, without spaces or glob characters (* ? [ ] \\)")
        return prefix

    @field_validator("storage_url")
    @classmethod
    def _no_credentials_in_storage_url(cls, url: str | None) -> str | None:
        from settings.pools import CREDENTIALS_IN_URL, url_has_credentials

        if url is not None and url_has_credentials(url):
            raise ValueError(CREDENTIALS_IN_URL)
        return url

    @model_validator(mode="after")
    def _health_ttl_outlives_interval(self) -> Settings:
        if self.worker_health_ttl <= self.worker_health_interval:
            raise ValueError(
                "HEARTH_WORKER_HEALTH_TTL must exceed HEARTH_WORKER_HEALTH_INTERVAL, or a live worker's "
                "health key expires between two writes"
            )
        return self

    @model_validator(mode="after")
    def _fall_back_to_openai_key(self) -> Settings:
        # A separate field, not an alias: with aliases, OPENAI_API_KEY in the process environment
        # would beat HEARTH_API_KEY in .env (sources win over names), silently using a global key.
        if self.api_key is None and self.openai_api_key is not None:
            self.api_key = self.openai_api_key
        return self

    @property
    def resolved_api_base(self) -> str:
        if self.api_base:
            return self.api_base.rstrip("/")
        if self.backend is Backend.openai:
            return "https://api.openai.com/v1"
        if self.backend is Backend.local:
            return discover_api_base(self.data_dir) or f"http://{self.local_host}:{self.local_port}/v1"
        raise ValueError(f"HEARTH_API_BASE is required for backend {self.backend.value!r}")

    @property
    def resolved_redis_url(self) -> str | None:
        """HEARTH_REDIS_URL, else the embedded Redis of a running `hearth up` in this data dir."""
        if self.redis_url:
            return self.redis_url
        return discover_redis_url(self.data_dir)

    @property
    def resolved_pools(self) -> Path:
        """HEARTH_POOLS (or a constructor value), else the pools file of a running `hearth up` in this
        data dir, else the default."""
        if "pools" in self.model_fields_set:
            return self.pools
        return discover_pools(self.data_dir) or self.pools

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or (self.data_dir / "harvest").resolve().as_uri()

"""What a container costs: the price table Hearth meters container time with.

Containers are billed by memory tier for as long as they exist (create until delete or expiry).
The numbers are configuration, not logic: the shipped defaults below are OpenAI's published
prices, and a deployment overrides them with ``HEARTH_PRICES`` (JSON), e.g. for a negotiated rate
or a gateway's mark-up::

    HEARTH_PRICES='{"tiers": {"4g": {"usd_per_minute": 0.005, "minimum_minutes": 5}}}'

Tiers named in an override replace the default tier whole; tiers not named keep their default.

Source of the defaults (read 2026-12-02): the OpenAI API pricing page
(https://developers.openai.com/api/docs/pricing) lists per container $0.03 (1 GB), $0.12 (4 GB),
$0.48 (16 GB) and $1.92 (64 GB) per 20 minutes, and the API changelog
(https://developers.openai.com/api/docs/changelog) says that from 2026-06-02 container sessions are
billed per minute with a 5-minute minimum (the per-minute rate unchanged): $0.0015, $0.006, $0.024
and $0.096 per minute. Before 2026-06-02 a session was billed per started 20-minute block; set
``block_minutes: 20`` to meter that way.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

PRICES_SOURCE = "https://developers.openai.com/api/docs/pricing, .../changelog (per minute from 2026-06-02)"
PRICES_AS_OF = "2026-12-02"


class TierPrice(BaseModel):
    """The price of one memory tier."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    usd_per_minute: Annotated[float, Field(ge=0, description="Dollars per container-minute.")]
    minimum_minutes: Annotated[
        float, Field(ge=0, description="Minutes billed at least per container, however short it lived. Default 5.")
    ] = 5.0
    block_minutes: Annotated[
        float | None,
        Field(gt=0, description="Bill per started block of this many minutes instead of per minute. Default none."),
    ] = None

    def billed_seconds(self, lived_seconds: float) -> float:
        """Seconds the provider bills for one container that lived ``lived_seconds``."""
        billed = max(float(lived_seconds), self.minimum_minutes * 60.0, 0.0)
        if self.block_minutes is not None:
            block = self.block_minutes * 60.0
            billed = math.ceil(billed / block - 1e-9) * block
        return billed

    def usd(self, seconds: float) -> float:
        """Dollars for ``seconds`` of container time at this tier's rate (no minimum applied)."""
        return self.usd_per_minute * seconds / 60.0

    @property
    def usd_per_hour(self) -> float:
        return self.usd_per_minute * 60.0


DEFAULT_TIERS: dict[str, TierPrice] = {
    "1g": TierPrice(usd_per_minute=0.0015),
    "4g": TierPrice(usd_per_minute=0.006),
    "16g": TierPrice(usd_per_minute=0.024),
    "64g": TierPrice(usd_per_minute=0.096),
}


class PriceTable(BaseModel):
    """Prices per memory tier (``1g``, ``4g``, ``16g``, ``64g``), in dollars."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tiers: dict[str, TierPrice] = Field(default_factory=lambda: dict(DEFAULT_TIERS))

    @model_validator(mode="before")
    @classmethod
    def _keep_unnamed_defaults(cls, data: Any) -> Any:
        # An override names the tiers it changes; the others keep the published price.
        if isinstance(data, dict) and isinstance(data.get("tiers"), dict):
            data = {**data, "tiers": {**DEFAULT_TIERS, **data["tiers"]}}
        return data

    def tier(self, memory_limit: str) -> TierPrice:
        """The price of ``memory_limit``; a clear error naming the tier when the table lacks it."""
        try:
            return self.tiers[memory_limit]
        except KeyError:
            known = ", ".join(sorted(self.tiers))
            raise KeyError(f"HEARTH_PRICES has no price for memory tier {memory_limit!r} (known: {known})") from None

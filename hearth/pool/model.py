"""What Hearth remembers about each container it owns, and the state machine those records follow.

A record lives in Redis (JSON, see ``store.py``) from the moment Hearth *intends* to create a
container until the container is gone. The record's ``name`` is also the container's name on the
API and the idempotency key of every task that touches it: a retried provision looks the name up
and adopts what an earlier try created instead of creating a second container.

State machine (``TRANSITIONS`` below is the authority)::

    CREATING -> SEEDING -> READY -> LEASED -> HARVESTING -> DELETING -> GONE   the life of a container
    CREATING -> READY                                   nothing to seed
    LEASED -> READY,  HARVESTING -> READY               reuse (the pool's lease rule says which)
    READY -> HARVESTING | DELETING,  LEASED -> DELETING retire, with or without a harvest
    CREATING..HARVESTING -> EXPIRED | FAILED -> DELETING | GONE
    CREATING -> DELETING | GONE                         a dead intent: adopted and deleted, or never created

* ``CREATING``: the intent. Written *before* the create call, with ``container_id=None``; the
  create call sets ``container_id``. A crash between the call and the record update leaves an
  intent that names the container, never an unowned container: the reconcile sees a stale intent
  and asks for the name to be looked up remotely (``Adopt``).
* ``SEEDING``: created, inputs being copied in. ``READY``: seeded and verified, leasable.
* ``LEASED``: handed to one application with a ``lease_id`` and a fencing ``token``. Release goes
  to ``HARVESTING`` (then retire) or straight back to ``READY`` when the pool reuses containers.
* ``HARVESTING``: outputs are being copied to durable storage before retire (or before reuse).
* ``DELETING``: the delete call is pending. ``GONE``: deleted (or never created); the record is
  forgotten soon after.
* ``EXPIRED``: the container passed its idle deadline (it can never be revived; its files are
  gone). ``FAILED``: creating or seeding failed for good. Both are retired (deleted if a container
  exists) and replaced by the reconcile.

``deadline`` is Hearth's estimate of when the container expires unless touched:
``last_active_at + expires_after``. Every call Hearth makes on a container moves it forward. For a
leased container it is a lower bound: the application's own calls keep the container alive too.

Timestamps are epoch seconds rounded to the millisecond, so that they survive a round trip through
Redis' Lua ``cjson`` (14 significant digits) unchanged.
"""

from __future__ import annotations

import random
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

MAX_ERROR_CHARS = 300


class State(StrEnum):
    CREATING = "CREATING"
    SEEDING = "SEEDING"
    READY = "READY"
    LEASED = "LEASED"
    HARVESTING = "HARVESTING"
    DELETING = "DELETING"
    GONE = "GONE"
    EXPIRED = "EXPIRED"
    FAILED = "FAILED"


# Every state that may still have a live container behind it (so it counts toward max_total and
# may need a delete).
LIVE_STATES: frozenset[State] = frozenset({State.CREATING, State.SEEDING, State.READY, State.LEASED, State.HARVESTING})

TRANSITIONS: dict[State, frozenset[State]] = {
    State.CREATING: frozenset({State.SEEDING, State.READY, State.FAILED, State.EXPIRED, State.DELETING, State.GONE}),
    State.SEEDING: frozenset({State.READY, State.FAILED, State.EXPIRED, State.DELETING}),
    State.READY: frozenset({State.LEASED, State.HARVESTING, State.DELETING, State.EXPIRED, State.FAILED}),
    State.LEASED: frozenset({State.READY, State.HARVESTING, State.DELETING, State.EXPIRED, State.FAILED}),
    State.HARVESTING: frozenset({State.READY, State.DELETING, State.EXPIRED, State.FAILED}),
    # An expired container may still be listed by the API; deleting it keeps the account clean.
    State.EXPIRED: frozenset({State.DELETING, State.GONE}),
    State.FAILED: frozenset({State.DELETING, State.GONE}),
    State.DELETING: frozenset({State.GONE}),
    State.GONE: frozenset(),
}


def can_transition(from_state: State, to_state: State) -> bool:
    """Whether the state machine allows ``from_state -> to_state`` (staying put is always allowed)."""
    return from_state == to_state or to_state in TRANSITIONS[from_state]


def _ms(value: float) -> float:
    return round(float(value), 3)


def _ms_opt(value: float | None) -> float | None:
    return None if value is None else _ms(value)


Stamp = Annotated[float, AfterValidator(_ms)]
OptStamp = Annotated[float | None, AfterValidator(_ms_opt)]


class ContainerRecord(BaseModel):
    """One container Hearth owns (or intends to create). Serialised as JSON in Redis."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    name: Annotated[str, Field(min_length=1)]
    pool: Annotated[str, Field(min_length=1)]
    container_id: str | None = None
    state: State = State.CREATING
    created_at: Stamp
    updated_at: Stamp
    deadline: OptStamp = None
    expires_minutes: Annotated[int, Field(ge=1)] = 20
    inputs_digest: str = ""
    attempts: Annotated[int, Field(ge=0)] = 0
    error: str | None = None
    # lease
    lease_id: str | None = None
    token: int | None = None
    lease_expires_at: OptStamp = None
    leased_at: OptStamp = None
    holder: str | None = None
    session_key_hash: str | None = None
    # how many times it was ever leased: a container someone used may hold outputs worth harvesting
    lease_count: Annotated[int, Field(ge=0)] = 0
    # harvest
    last_harvest_at: OptStamp = None
    # when container_id was set (the container is known to exist from then on)
    bound_at: OptStamp = None
    # failed harvest attempts while retiring: bounded, so one unreadable file cannot keep a container forever
    harvest_attempts: Annotated[int, Field(ge=0)] = 0
    # the harvest URL, rendered once (its {date} on the first harvest or session bind) and reused after
    harvest_target: str | None = None

    @field_validator("error")
    @classmethod
    def _short_error(cls, value: str | None) -> str | None:
        # Errors are for operators; keep them short so a huge API body never bloats Redis.
        if value is None:
            return None
        return value if len(value) <= MAX_ERROR_CHARS else value[: MAX_ERROR_CHARS - 1] + "…"

    def remaining(self, now: float) -> float:
        """Seconds of life left by Hearth's estimate (negative when past the deadline)."""
        return (self.deadline if self.deadline is not None else now) - now

    def lease_lapsed(self, now: float, grace: float = 0.0) -> bool:
        return self.state == State.LEASED and self.lease_expires_at is not None and now > self.lease_expires_at + grace

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, raw: str | bytes) -> ContainerRecord:
        return cls.model_validate_json(raw)


# --- names ----------------------------------------------------------------------------------------

_UNIQUE_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
UNIQUE_LENGTH = 10
_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_UNIQUE = re.compile(r"^[a-z0-9]+$")


@dataclass(frozen=True)
class NameParts:
    prefix: str
    pool: str
    unique: str


def unique_part(rng: random.Random | None = None, length: int = UNIQUE_LENGTH) -> str:
    """A short lowercase id (no '-', so a name splits unambiguously). ``rng=None`` uses ``secrets``."""
    if rng is None:
        return "".join(secrets.choice(_UNIQUE_ALPHABET) for _ in range(length))
    return "".join(rng.choice(_UNIQUE_ALPHABET) for _ in range(length))


def make_name(prefix: str, pool: str, unique: str | None = None, *, rng: random.Random | None = None) -> str:
    """``{prefix}-{pool}-{unique}``: the container name and the idempotency key of its record."""
    for label, part in (("prefix", prefix), ("pool", pool)):
        if not _NAME_PART.match(part):
            raise ValueError(f"invalid {label} for a container name: {part!r}")
    unique = unique if unique is not None else unique_part(rng)
    if not _UNIQUE.match(unique):
        raise ValueError(f"the unique part must be lowercase letters and digits: {unique!r}")
    return f"{prefix}-{pool}-{unique}"


def parse_name(name: str, prefix: str) -> NameParts | None:
    """Split a container name made by :func:`make_name` with ``prefix``; ``None`` if it is not ours.

    The prefix must be known (it may contain '-' and so may the pool); the unique part never does.
    """
    head = f"{prefix}-"
    if not name.startswith(head):
        return None
    pool, sep, unique = name[len(head) :].rpartition("-")
    if not sep or not pool or not _UNIQUE.match(unique) or not _NAME_PART.match(pool):
        return None
    return NameParts(prefix=prefix, pool=pool, unique=unique)

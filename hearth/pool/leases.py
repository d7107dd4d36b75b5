"""Leases: an application takes one READY container exclusively, uses it, and gives it back.

A lease is one Lua script on Redis (``scripts.LEASE``): it picks the READY record with the most
life left (and at least ``min_remaining`` seconds of it) and marks it LEASED with a new lease id and
a fencing token from a global counter, so it stays exclusive across any number of threads,
processes and hosts. The token fences late callers: once a lease is released or reclaimed, the old
holder's release or renew is refused with :class:`~hearth.errors.LeaseError`.

Harvesting and retiring the released container is the tasks' job; this module only moves state.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hearth.errors import Conflict, HearthError, LeaseError, PoolEmpty
from hearth.pool import scripts
from hearth.pool.model import ContainerRecord, State
from hearth.pool.store import PoolStore, _text

log = logging.getLogger(__name__)

# Lease fields cleared when a container goes back to the pool for reuse.
_CLEARED_LEASE = {
    "lease_id": None,
    "token": None,
    "lease_expires_at": None,
    "leased_at": None,
    "holder": None,
    "session_key_hash": None,
}


def default_token_factory() -> str:
    return secrets.token_hex(12)


@dataclass(frozen=True)
class Lease:
    """What a lease hands to an application. ``token`` fences: quote it (or ``lease_id``) to release."""

    pool: str
    name: str
    container_id: str
    lease_id: str
    token: int
    expires_at: float
    deadline: float | None

    @classmethod
    def from_record(cls, record: ContainerRecord) -> Lease:
        if record.container_id is None or record.lease_id is None or record.token is None:
            raise LeaseError(f"{record.name}: record is not a complete lease")
        return cls(
            pool=record.pool,
            name=record.name,
            container_id=record.container_id,
            lease_id=record.lease_id,
            token=record.token,
            expires_at=record.lease_expires_at or 0.0,
            deadline=record.deadline,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "name": self.name,
            "container_id": self.container_id,
            "lease_id": self.lease_id,
            "token": self.token,
            "expires_at": self.expires_at,
        }


@dataclass(frozen=True)
class ReleasedLease:
    """The outcome of a release: the record's new state says what the tasks should do next."""

    pool: str
    name: str
    container_id: str | None
    lease_id: str
    token: int | None
    state: State

    @property
    def needs_harvest(self) -> bool:
        return self.state is State.HARVESTING


class Leases:
    """Take, renew and give back containers of a pool. Built on a :class:`PoolStore`.

    ``wake_on_ready``: while waiting for an empty pool, block on the pool's "became READY" list
    (BLPOP, real time) instead of ``clock.sleep``. Keep it on with the system clock; turn it off
    with a ManualClock so that waiting advances the manual clock instead of blocking.
    """

    def __init__(
        self,
        store: PoolStore,
        *,
        token_factory: Callable[[], str] = default_token_factory,
        wake_on_ready: bool = True,
        poll_initial: float = 0.05,
        poll_max: float = 1.0,
    ) -> None:
        self.store = store
        self.clock = store.clock
        self._token_factory = token_factory
        self._wake_on_ready = wake_on_ready
        self._poll_initial = poll_initial
        self._poll_max = poll_max
        self._lease = store.redis.register_script(scripts.LEASE)

    def __repr__(self) -> str:
        return f"Leases(store={self.store!r})"

    def try_lease(
        self,
        pool: str,
        *,
        ttl: float,
        min_remaining: float = 0.0,
        holder: str | None = None,
        session_key_hash: str | None = None,
    ) -> Lease | None:
        """One atomic attempt; ``None`` when no READY container has ``min_remaining`` s of life."""
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        now = round(self.clock.now(), 3)
        raw = self.store._call(
            self._lease,
            pool,
            repr(now),
            repr(float(max(0.0, min_remaining))),
            repr(round(now + ttl, 3)),
            self._token_factory(),
            holder or "",
            session_key_hash or "",
        )
        if raw is None:
            return None
        return Lease.from_record(ContainerRecord.from_json(_text(raw)))

    def lease(
        self,
        pool: str,
        *,
        ttl: float,
        min_remaining: float = 0.0,
        wait_seconds: float = 0.0,
        holder: str | None = None,
        session_key_hash: str | None = None,
    ) -> Lease:
        """Take the READY container of ``pool`` with the most life left, waiting up to ``wait_seconds``.

        Raises :class:`~hearth.errors.PoolEmpty` (temporary) when none became available in time.
        """
        give_up = self.clock.now() + max(0.0, wait_seconds)
        delay = self._poll_initial
        while True:
            got = self.try_lease(
                pool, ttl=ttl, min_remaining=min_remaining, holder=holder, session_key_hash=session_key_hash
            )
            if got is not None:
                return got
            left = give_up - self.clock.now()
            if left <= 0:
                raise PoolEmpty(
                    f"pool {pool!r}: no ready container with {min_remaining:g}s left within {wait_seconds:g}s"
                )
            self._pause(pool, min(delay, left))
            delay = min(delay * 2, self._poll_max)

    def _pause(self, pool: str, seconds: float) -> None:
        if not self._wake_on_ready:
            self.clock.sleep(seconds)
            return
        # BLPOP takes whole or fractional seconds; 0 would mean "forever".
        self.store._cmd(self.store.redis.blpop, [self.store.pool_key(pool, "ready")], timeout=max(seconds, 0.01))

    def release(
        self,
        ref: str,
        lease_id: str | None = None,
        *,
        token: int | None = None,
        reuse: bool = False,
    ) -> ReleasedLease:
        """Give a leased container back. ``ref`` is its container id or name.

        The lease must still be held: ``lease_id`` and/or ``token`` must match, else LeaseError
        (the lease lapsed and was reclaimed, or was already released). ``reuse`` puts the container
        straight back to READY; otherwise it goes to HARVESTING (harvest, then retire).
        """
        if lease_id is None and token is None:
            raise ValueError("release needs the lease_id or the fencing token")
        to_state = State.READY if reuse else State.HARVESTING
        patch = _CLEARED_LEASE if reuse else {}
        try:
            record = self.store._apply(
                "any",
                ref,
                (State.LEASED,),
                to_state,
                self.store._patch(patch),
                lease_id=lease_id,
                token=token,
            )
        except Conflict as exc:
            raise LeaseError(f"release refused: {exc}") from exc
        return ReleasedLease(
            pool=record.pool,
            name=record.name,
            container_id=record.container_id,
            lease_id=lease_id or "",
            token=token,
            state=record.state,
        )

    def renew(self, lease_id: str, ttl: float, *, token: int | None = None) -> Lease:
        """Extend a held lease to ``now + ttl``; LeaseError if it is no longer held."""
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        expires = self.clock.now() + ttl
        try:
            record = self.store._apply(
                "lease",
                lease_id,
                (State.LEASED,),
                None,
                self.store._patch({"lease_expires_at": expires}),
                lease_id=lease_id,
                token=token,
            )
        except Conflict as exc:
            raise LeaseError(f"renew refused: {exc}") from exc
        return Lease.from_record(record)

    def lapsed(self, now: float | None = None) -> list[ContainerRecord]:
        """LEASED records whose lease expired before ``now`` (default: the clock), any pool."""
        at = self.clock.now() if now is None else now
        names = self.store._cmd(self.store.redis.zrangebyscore, self.store.key("leases"), "-inf", f"({at!r}")
        found = (self.store.get(_text(n)) for n in names)
        return [r for r in found if r is not None and r.state is State.LEASED]

    def reclaim(self, name: str, lease_id: str) -> ContainerRecord:
        """Take a lapsed lease back (LEASED -> HARVESTING) if ``lease_id`` still holds it.

        The fencing token is left on the record so the harvest knows whose work it is keeping; the
        old holder's release/renew is refused from now on.
        """
        try:
            return self.store._apply("name", name, (State.LEASED,), State.HARVESTING, "{}", lease_id=lease_id)
        except Conflict as exc:
            raise LeaseError(f"reclaim refused: {exc}") from exc

    @contextmanager
    def leased(
        self,
        pool: str,
        *,
        ttl: float,
        min_remaining: float = 0.0,
        wait_seconds: float = 0.0,
        holder: str | None = None,
        reuse: bool = False,
    ) -> Iterator[Lease]:
        """``with leases.leased("py", ttl=600) as lease: use lease.container_id``.

        Released on exit. ``reuse`` applies only when the block succeeded: a container whose user
        raised is harvested and retired, never handed to the next caller. If the block succeeded
        but the lease was lost meanwhile (lapsed and reclaimed), LeaseError is raised on exit.
        """
        got = self.lease(pool, ttl=ttl, min_remaining=min_remaining, wait_seconds=wait_seconds, holder=holder)
        try:
            yield got
        except BaseException:
            try:
                self.release(got.container_id, got.lease_id, token=got.token, reuse=False)
            except HearthError as exc:
                log.warning("lease %s of %s: release after an error failed: %s", got.lease_id, got.name, exc)
            raise
        self.release(got.container_id, got.lease_id, token=got.token, reuse=reuse)

"""Leases: an application takes one READY container exclusively, uses it, and gives it back.

A lease is one Lua script on Redis (``scripts.LEASE``): it picks the READY record with the most
life left (and at least ``min_remaining`` seconds of it) and marks it LEASED with a new lease id and
a fencing token from a global counter, so it stays exclusive across any number of threads,
processes and hosts. The token fences late callers: once a lease is released or reclaimed, the old
holder's release or renew is refused with :class:`~hearth.errors.LeaseError`.

Harvesting and retiring the released container is the tasks' job; this module only moves state.

One core, two faces: :class:`LeaseCore` is the whole lease logic, sans IO (generators of
:mod:`~hearth.pool.effects`); :class:`Leases` runs it on ``redis.Redis`` and
:class:`~hearth.pool.async_leases.AsyncLeases` on ``redis.asyncio``. A change to what a lease does
(a script argument, a reply's meaning, a Redis call after a lease) goes into ``LeaseCore`` (or into
``scripts.py``) and both faces have it; the faces only say how to wait.
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
from hearth.pool.effects import Command, Pause, Script, Steps, SyncIO
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


class LeaseCore:
    """The lease logic without IO: each method returns :data:`~hearth.pool.effects.Steps` for a face to run.

    ``store`` gives the key layout, the clock and the encoding of transitions (``_patch``,
    ``_transition_args``/``_transition_reply``); the core never calls its Redis client.

    ``wake_on_ready``: while waiting for an empty pool, block on the pool's "became READY" list
    (BLPOP, real time) instead of sleeping. Keep it on with the system clock; turn it off with a
    ManualClock so that waiting advances the manual clock instead of blocking.
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

    def try_lease(
        self,
        pool: str,
        *,
        ttl: float,
        min_remaining: float = 0.0,
        holder: str | None = None,
        session_key_hash: str | None = None,
    ) -> Steps[Lease | None]:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        now = round(self.clock.now(), 3)
        raw = yield Script(
            scripts.LEASE,
            (
                pool,
                repr(now),
                repr(float(max(0.0, min_remaining))),
                repr(round(now + ttl, 3)),
                self._token_factory(),
                holder or "",
                session_key_hash or "",
            ),
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
    ) -> Steps[Lease]:
        give_up = self.clock.now() + max(0.0, wait_seconds)
        delay = self._poll_initial
        wake_key = self.store.pool_key(pool, "ready") if self._wake_on_ready else None
        while True:
            got = yield from self.try_lease(
                pool, ttl=ttl, min_remaining=min_remaining, holder=holder, session_key_hash=session_key_hash
            )
            if got is not None:
                return got
            left = give_up - self.clock.now()
            if left <= 0:
                raise PoolEmpty(
                    f"pool {pool!r}: no ready container with {min_remaining:g}s left within {wait_seconds:g}s"
                )
            yield Pause(min(delay, left), wake_key)
            delay = min(delay * 2, self._poll_max)

    def _transition(
        self,
        kind: str,
        ref: str,
        froms: tuple[State, ...],
        to_state: State | None,
        patch: str,
        *,
        lease_id: str | None = None,
        token: int | None = None,
    ) -> Steps[ContainerRecord]:
        """``PoolStore._apply`` as steps: the same TRANSITION script, arguments and errors."""
        args = self.store._transition_args(kind, ref, froms, to_state, patch, lease_id=lease_id, token=token)
        reply = yield Script(scripts.TRANSITION, args)
        return self.store._transition_reply(reply, ref, froms, to_state)

    def release(
        self, ref: str, lease_id: str | None = None, *, token: int | None = None, reuse: bool = False
    ) -> Steps[ReleasedLease]:
        if lease_id is None and token is None:
            raise ValueError("release needs the lease_id or the fencing token")
        to_state = State.READY if reuse else State.HARVESTING
        patch = self.store._patch(_CLEARED_LEASE if reuse else {})
        try:
            record = yield from self._transition(
                "any", ref, (State.LEASED,), to_state, patch, lease_id=lease_id, token=token
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

    def renew(self, lease_id: str, ttl: float, *, token: int | None = None) -> Steps[Lease]:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        patch = self.store._patch({"lease_expires_at": self.clock.now() + ttl})
        try:
            record = yield from self._transition(
                "lease", lease_id, (State.LEASED,), None, patch, lease_id=lease_id, token=token
            )
        except Conflict as exc:
            raise LeaseError(f"renew refused: {exc}") from exc
        return Lease.from_record(record)

    def reclaim(self, name: str, lease_id: str) -> Steps[ContainerRecord]:
        try:
            return (yield from self._transition("name", name, (State.LEASED,), State.HARVESTING, "{}",
                                                lease_id=lease_id))
        except Conflict as exc:
            raise LeaseError(f"reclaim refused: {exc}") from exc

    def get(self, name: str) -> Steps[ContainerRecord | None]:
        """``PoolStore.get`` as steps (the record's pool, then the record)."""
        pool = yield Command("hget", (self.store.key("names"), name))
        if pool is None:
            return None
        raw = yield Command("hget", (self.store.pool_key(_text(pool), "records"), name))
        return None if raw is None else ContainerRecord.from_json(raw)

    def by_container_id(self, container_id: str) -> Steps[ContainerRecord | None]:
        name = yield Command("hget", (self.store.key("cids"), container_id))
        return None if name is None else (yield from self.get(_text(name)))

    def lapsed(self, now: float | None = None) -> Steps[list[ContainerRecord]]:
        at = self.clock.now() if now is None else now
        names = yield Command("zrangebyscore", (self.store.key("leases"), "-inf", f"({at!r}"))
        found: list[ContainerRecord] = []
        for raw_name in names:
            record = yield from self.get(_text(raw_name))
            if record is not None and record.state is State.LEASED:
                found.append(record)
        return found

    def end_leased(self, got: Lease, *, failed: bool, reuse: bool = False) -> Steps[None]:
        """What leaving a ``leased`` block does. ``reuse`` applies only when the block succeeded: a
        container whose user raised is harvested and retired, never handed to the next caller, and a
        failing release then must not hide the user's own exception (it is logged). If the block
        succeeded but the lease was lost meanwhile (lapsed and reclaimed), LeaseError is raised."""
        if not failed:
            yield from self.release(got.container_id, got.lease_id, token=got.token, reuse=reuse)
            return
        try:
            yield from self.release(got.container_id, got.lease_id, token=got.token, reuse=False)
        except HearthError as exc:
            log.warning("lease %s of %s: release after an error failed: %s", got.lease_id, got.name, exc)


class Leases:
    """Take, renew and give back containers of a pool: the sync face of :class:`LeaseCore`.

    Every method is one Redis script or a few commands on ``store.redis``; the arguments are
    :class:`LeaseCore`'s (``wake_on_ready``, ``poll_initial``, ``poll_max``, ``token_factory``).
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
        self.core = LeaseCore(store, token_factory=token_factory, wake_on_ready=wake_on_ready,
                              poll_initial=poll_initial, poll_max=poll_max)
        self.io = SyncIO(store.redis, store.prefix, store.clock)

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
        return self.io.run(self.core.try_lease(pool, ttl=ttl, min_remaining=min_remaining, holder=holder,
                                               session_key_hash=session_key_hash))

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
        return self.io.run(self.core.lease(pool, ttl=ttl, min_remaining=min_remaining, wait_seconds=wait_seconds,
                                           holder=holder, session_key_hash=session_key_hash))

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
        return self.io.run(self.core.release(ref, lease_id, token=token, reuse=reuse))

    def renew(self, lease_id: str, ttl: float, *, token: int | None = None) -> Lease:
        """Extend a held lease to ``now + ttl``; LeaseError if it is no longer held."""
        return self.io.run(self.core.renew(lease_id, ttl, token=token))

    def lapsed(self, now: float | None = None) -> list[ContainerRecord]:
        """LEASED records whose lease expired before ``now`` (default: the clock), any pool."""
        return self.io.run(self.core.lapsed(now))

    def reclaim(self, name: str, lease_id: str) -> ContainerRecord:
        """Take a lapsed lease back (LEASED -> HARVESTING) if ``lease_id`` still holds it.

        The fencing token is left on the record so the harvest knows whose work it is keeping; the
        old holder's release/renew is refused from now on.
        """
        return self.io.run(self.core.reclaim(name, lease_id))

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
        """``with leases.leased("py", ttl=600) as lease: use lease.container_id``; released on exit
        (see :meth:`LeaseCore.end_leased`)."""
        got = self.lease(pool, ttl=ttl, min_remaining=min_remaining, wait_seconds=wait_seconds, holder=holder)
        try:
            yield got
        except BaseException:
            self.io.run(self.core.end_leased(got, failed=True))
            raise
        self.io.run(self.core.end_leased(got, failed=False, reuse=reuse))

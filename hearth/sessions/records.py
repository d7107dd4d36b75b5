"""What Redis keeps about a session, and the per-session lock: the record store under the session logic.

A session is one JSON record at ``<prefix>:session:<hash>`` (``SessionRecord``), expiring
``HEARTH_SESSION_RETENTION`` after its last save. The key an app chose never reaches Redis: only its
hash (``session_hash``). This module knows nothing of leases, restores or harvests; the rest of the
package reads and writes records through ``RecordStore``.

Each Redis operation is written once, as sans-IO steps (``hearth.pool.effects``: ``load_steps``,
``save_steps``, ``touch_steps``, ``acquire``/``unlock``, ``still_ours_steps``), so the session
logic runs them on ``redis.Redis`` (``Sessions``) or on ``redis.asyncio`` (``AsyncSessions``); the
plain methods (``load``, ``save``, ``locked``...) run the same steps on the runtime's sync client,
for the worker's tasks and the live save.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from hearth.errors import LeaseError
from hearth.files.lock import TokenFactory, random_token
from hearth.pool.effects import Command, Pause, Steps, SyncIO
from hearth.pool.leases import LeaseCore
from hearth.pool.model import ContainerRecord, State
from hearth.runtime import Runtime

_HASH_CONTEXT = b"hearth-session\x00"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
# Compare-and-set on the whole value: write ARGV[2] only if the key still holds what was read (ARGV[1]).
_SWAP = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
         "return redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3]) end return 0")


def session_hash(key: str) -> str:
    """The id Hearth stores for a session key: sha256 of the key (with a fixed context), 32 hex."""
    if not isinstance(key, str) or not key:
        raise ValueError("a session key is a non-empty string")
    return hashlib.sha256(_HASH_CONTEXT + key.encode("utf-8")).hexdigest()[:32]


class SessionContainer(BaseModel):
    """One container a session had, and where its files were harvested."""

    model_config = ConfigDict(extra="ignore")

    container_id: str
    name: str
    target: str  # the rendered harvest URL (the container's own root, with its manifest.json)
    bound_at: float
    lease_id: str | None = None
    # Container-file id -> original container path, for each file a restore uploaded into this container.
    restored: dict[str, str] = {}


class SessionRecord(BaseModel):
    """What Redis keeps about a session (JSON at ``<prefix>:session:<hash>``, expiring after retention)."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    session_id: str
    pool: str
    created_at: float
    last_used_at: float
    container_id: str | None = None
    name: str | None = None
    lease_id: str | None = None
    token: int | None = None
    verified_at: float | None = None
    restoring: bool = False  # a restore into the current container has not finished
    ended: bool = False
    history: list[SessionContainer] = []
    restored_files: list[str] = []
    renamed: dict[str, str] = {}  # container path -> restored name, for files whose base names collided

    @property
    def current(self) -> SessionContainer | None:
        """The history entry of the current container (None between containers or after an end)."""
        if self.container_id is None or not self.history or self.history[-1].container_id != self.container_id:
            return None
        return self.history[-1]


@dataclass(frozen=True)
class SessionLease:
    """What a session lease hands to the app. ``session_id`` is the key's hash, never the key."""

    pool: str
    container_id: str
    name: str
    lease_id: str
    token: int
    expires_at: float
    session_id: str
    created: bool = False  # this call started the session
    restored: bool = False  # this call replaced a lost container and restored the session's files
    restored_files: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)  # original path -> restored name (name collisions)

    def to_json(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "container_id": self.container_id,
            "name": self.name,
            "lease_id": self.lease_id,
            "token": self.token,
            "expires_at": self.expires_at,
            "session_id": self.session_id,
            "created": self.created,
            "restored": self.restored,
            "restored_files": list(self.restored_files),
            "renamed": dict(self.renamed),
        }


@dataclass(frozen=True)
class SessionEnd:
    """What ``end_session`` did."""

    session_id: str
    found: bool
    container_id: str | None = None
    harvested_files: int = 0
    retiring: bool = False
    forgotten: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "found": self.found,
            "container_id": self.container_id,
            "harvested_files": self.harvested_files,
            "retiring": self.retiring,
            "forgotten": self.forgotten,
        }


def still_ours_steps(leases: LeaseCore, rec: SessionRecord) -> Steps[ContainerRecord | None]:
    """The session's container record, if it is still LEASED under the session's lease."""
    if rec.container_id is None or rec.lease_id is None:
        return None
    crec = yield from leases.by_container_id(rec.container_id)
    if crec is None or crec.state is not State.LEASED or crec.lease_id != rec.lease_id:
        return None
    return crec


def still_ours(rt: Runtime, rec: SessionRecord) -> ContainerRecord | None:
    """``still_ours_steps`` on the runtime's sync client."""
    return rt.leases.io.run(still_ours_steps(rt.leases.core, rec))


class RecordStore:
    """Session records and the per-session lock in Redis, over one :class:`Runtime`."""

    def __init__(self, runtime: Runtime, *, lock_ttl: float = 300.0, lock_wait: float = 300.0,
                 tokens: TokenFactory | None = None) -> None:
        self.rt = runtime
        self.lock_ttl = lock_ttl
        self.lock_wait = lock_wait
        self.tokens = tokens or random_token

    def key(self, sid: str, *more: str) -> str:
        return self.rt.store.key("session", sid, *more)

    def _cmd(self, fn: Any, *args: Any, **kw: Any) -> Any:
        return self.rt.store._cmd(fn, *args, **kw)

    @property
    def retention(self) -> int:
        return max(1, int(self.rt.settings.session_retention))

    @property
    def io(self) -> SyncIO:
        return self.rt.leases.io

    # --- as steps (both faces) -----------------------------------------------------------------

    def load_steps(self, sid: str) -> Steps[SessionRecord | None]:
        raw = yield Command("get", (self.key(sid),))
        return None if raw is None else SessionRecord.model_validate_json(raw)

    def save_steps(self, rec: SessionRecord) -> Steps[None]:
        yield Command("set", (self.key(rec.session_id), rec.model_dump_json()), {"ex": self.retention})

    def delete_steps(self, sid: str) -> Steps[None]:
        yield Command("delete", (self.key(sid),))

    def touch_steps(self, rec: SessionRecord) -> Steps[None]:
        """Save the fast path's stamps only, and only onto the record it read (same container and lease).

        The fast path runs without the session lock: a whole-record save could overwrite a rebind
        that happened meanwhile (and drop its container from the history). The write is a
        compare-and-set on the value read (``_SWAP``); a lost race just skips the stamps, which the
        winner wrote fresher anyway.
        """
        key = self.key(rec.session_id)
        raw = yield Command("get", (key,))
        if raw is None:
            return
        current = SessionRecord.model_validate_json(raw)
        if (current.container_id, current.lease_id, current.restoring) != (rec.container_id, rec.lease_id, False):
            return
        current.last_used_at = max(current.last_used_at, rec.last_used_at)
        if rec.verified_at is not None:
            current.verified_at = max(current.verified_at or 0.0, rec.verified_at)
        yield Command("eval", (_SWAP, 1, key, raw, current.model_dump_json(), self.retention))

    def acquire(self, sid: str) -> Steps[str]:
        """Take the per-session lock (waiting up to ``lock_wait``); returns the token ``unlock`` needs."""
        key = self.key(sid, "lock")
        token = self.tokens()
        clock = self.rt.clock
        give_up = clock.now() + self.lock_wait
        delay = 0.02
        while not (yield Command("set", (key, token), {"nx": True, "px": self._lock_ms})):
            if clock.now() >= give_up:
                raise LeaseError(f"session {sid}: another process is still binding it", temporary=True)
            yield Pause(delay)
            delay = min(delay * 2, 0.5)
        return token

    def unlock(self, sid: str, token: str) -> Steps[None]:
        yield Command("eval", (_RELEASE, 1, self.key(sid, "lock"), token))

    def renewer(self, sid: str, token: str) -> Callable[[], None]:
        """``renew()`` for a long restore (it runs as blocking work, so on the sync client)."""
        key = self.key(sid, "lock")
        return lambda: self._cmd(self.rt.redis.eval, _RENEW, 1, key, token, self._lock_ms)

    @property
    def _lock_ms(self) -> int:
        return max(1, int(self.lock_ttl * 1000))

    # --- on the runtime's sync client --------------------------------------------------------------

    def load(self, sid: str) -> SessionRecord | None:
        return self.io.run(self.load_steps(sid))

    def save(self, rec: SessionRecord) -> None:
        self.io.run(self.save_steps(rec))

    def delete(self, sid: str) -> None:
        self.io.run(self.delete_steps(sid))

    def touch(self, rec: SessionRecord) -> None:
        """See :meth:`touch_steps`."""
        self.io.run(self.touch_steps(rec))

    @contextlib.contextmanager
    def locked(self, sid: str) -> Iterator[Callable[[], None]]:
        """The per-session lock; yields ``renew()``, which extends it (a long restore calls it per file)."""
        token = self.io.run(self.acquire(sid))
        try:
            yield self.renewer(sid, token)
        finally:
            self.io.run(self.unlock(sid, token))

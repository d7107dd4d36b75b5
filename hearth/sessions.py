"""Sessions: a sticky lease per conversation key, and a conversation that outlives its container.

An app calls ``Sessions.lease(pool, session="conversation-123")`` at every turn. The same key gets
the same container for as long as that container lives (a Redis read and one lease-renew script: a
few ms; a retrieve now and then to be sure it is still alive). A new key takes a READY container
from the pool. When the key's container expired, failed, vanished or its lease lapsed, the next
lease takes a fresh container and restores into it every file the session had, from the harvest
storage, and says so (``restored=True``, ``restored_files``). Python variables are lost; files are
not.

Identity across generations: a file restored into a container is an upload there, under another
path (``/mnt/data/<32 hex>-b__report.csv``), and that container's harvest saves it again. Each
restore records the uploaded container-file id -> the original path on the container's history
entry (``SessionContainer.restored``), so a later restore knows that manifest entry IS
``/mnt/data/b/report.csv`` by its id, not by guessing from names or timestamps.

Where the files come from: a session container is harvested with source ``any`` (the files the
code wrote *and* the app's uploads), minus the pool's own inputs (the fresh container already has
those). Every container a session ever had is remembered with its harvest target, the one target every
harvest of that container uses (rendered once, kept on its record); a restore reads their
``manifest.json`` files oldest first, so a later version of a path wins.

Names: a file comes back as its base name (``/mnt/data/out/chart.png`` -> ``chart.png``; an
upload's ``<32 hex>-report.csv`` -> ``report.csv``); when two paths share a base name, the others
come back with their directories in the name (``b__report.csv``, listed in ``renamed``).
Restored files are uploads, so the backend puts them at ``/mnt/data/<32 hex>-<name>``, as it does for every upload.

Privacy: the key is an app's string (often a user or conversation id). Only its hash
(``session_hash``) reaches Redis keys, values, task arguments and logs.

Concurrency: binding a container to a key (first lease, or a restore) runs under a per-session
Redis lock (SET NX), so two concurrent first leases for one key end with one container.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, NamedTuple, cast

import redis
from pydantic import BaseModel, ConfigDict

from hearth.api.models import ContainerFile
from hearth.errors import (
    ConfigError,
    Conflict,
    ContainerExpired,
    HearthError,
    LeaseError,
    NotFound,
    StateStoreError,
    StorageError,
    UnsafePath,
)
from hearth.events import log_event
from hearth.files.harvest import HarvestPolicy, HarvestReport
from hearth.files.inputs import restore_name
from hearth.files.lock import TokenFactory, random_token
from hearth.files.manifest import MANIFEST_KEY, Manifest, ManifestEntry
from hearth.files.paths import CONTAINER_ROOT, relative_container_path
from hearth.files.storage import StorageTarget
from hearth.operations import all_but_inputs_policy, harvest_lock, harvest_under, pinned_target
from hearth.pool.leases import Lease
from hearth.pool.model import ContainerRecord, State
from hearth.runtime import Runtime
from settings.pools import OutputRules, PoolSpec

log = logging.getLogger(__name__)

Enqueue = Callable[[str, list[Any]], None]

_HASH_CONTEXT = b"hearth-session\x00"
INLINE_HARVEST_WAIT = 30.0  # how long a lease or an end waits for another harvest of the same container


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


class RestoreItem(NamedTuple):
    """One file a restore brings back: its original container path, and its newest saved version."""

    original: str  # e.g. /mnt/data/b/report.csv, whatever name the newest copy had
    target: StorageTarget
    entry: ManifestEntry


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


class Sessions:
    """Session leases over one :class:`Runtime`; ``enqueue(task_name, args)`` sends retires and harvests.

    ``verify_after``: a lease re-checks the container with one retrieve when it was last seen alive
    longer ago than this (or Hearth's deadline for it passed); in between, same-key leases are Redis
    only. ``lock_wait``: how long a lease waits for another process binding the same key.
    """

    def __init__(
        self,
        runtime: Runtime,
        enqueue: Enqueue,
        *,
        verify_after: float = 30.0,
        lock_ttl: float = 300.0,
        lock_wait: float = 300.0,
        harvest_every: float = 2.0,
        tokens: TokenFactory | None = None,
    ) -> None:
        """``tokens``: randomness for lock tokens (default: ``hearth.files.lock.random_token``)."""
        self.tokens = tokens or random_token
        self.rt = runtime
        self.enqueue = enqueue
        self.store = runtime.store
        self.clock = runtime.clock
        self.verify_after = verify_after
        self.lock_ttl = lock_ttl
        self.lock_wait = lock_wait
        self.harvest_every = harvest_every

    def __repr__(self) -> str:
        return f"Sessions(runtime={self.rt!r})"

    # --- records -------------------------------------------------------------------------------

    def _key(self, sid: str, *more: str) -> str:
        return self.store.key("session", sid, *more)

    def get(self, session: str) -> SessionRecord | None:
        """The record of a session key (None when unknown or expired from Redis)."""
        return self.load(session_hash(session))

    def load(self, sid: str) -> SessionRecord | None:
        raw = self.store._cmd(self.rt.redis.get, self._key(sid))
        return None if raw is None else SessionRecord.model_validate_json(raw)

    def _save(self, rec: SessionRecord) -> None:
        retention = max(1, int(self.rt.settings.session_retention))
        self.store._cmd(self.rt.redis.set, self._key(rec.session_id), rec.model_dump_json(), ex=retention)

    def idle_window(self, spec: PoolSpec) -> float:
        rules = spec.lease
        return float(rules.session_idle_seconds or self.rt.settings.session_idle)

    # --- lease ---------------------------------------------------------------------------------

    def lease(self, pool: str, session: str, *, verify: bool | None = None, wait: float | None = None) -> SessionLease:
        """The session's container: the same one while it lives, else a fresh one with the files restored.

        ``verify``: True always retrieves the container first, False never does, None (default)
        does when it was last seen alive more than ``verify_after`` s ago or is past its deadline.
        ``wait``: how long to wait for a ready container when the pool is empty (default: the pool's).
        """
        sid = session_hash(session)
        spec = self.rt.pool(pool)
        rec = self.load(sid)
        if rec is not None and rec.pool != pool:
            raise LeaseError(f"session {sid} belongs to pool {rec.pool!r}, not {pool!r}")
        if rec is not None and not rec.restoring:
            current = self._current(rec, spec, verify)
            if current is not None:
                return current
        with self._locked(sid) as renew:
            rec = self.load(sid)  # another process may have bound it while we waited
            if rec is not None and rec.pool != pool:
                raise LeaseError(f"session {sid} belongs to pool {rec.pool!r}, not {pool!r}")
            if rec is not None and not rec.restoring:
                current = self._current(rec, spec, verify)
                if current is not None:
                    return current
            if rec is not None and rec.restoring and self._still_ours(rec) is not None:
                return self._finish_restore(rec, spec, renew)  # a restore interrupted by a crash: resume it
            return self._bind(sid, pool, spec, rec, wait, renew)

    def _still_ours(self, rec: SessionRecord) -> ContainerRecord | None:
        """The container record, if it is still LEASED under the session's lease."""
        if rec.container_id is None or rec.lease_id is None:
            return None
        crec = self.store.by_container_id(rec.container_id)
        if crec is None or crec.state is not State.LEASED or crec.lease_id != rec.lease_id:
            return None
        return crec

    def _current(self, rec: SessionRecord, spec: PoolSpec, verify: bool | None) -> SessionLease | None:
        """Renew and return the session's container if it is still alive; None when it must be replaced."""
        crec = self._still_ours(rec)
        if crec is None or rec.lease_id is None or crec.container_id is None:
            return None
        now = self.clock.now()
        if verify is None:
            verify = (
                rec.verified_at is None
                or now - rec.verified_at >= self.verify_after
                or (crec.deadline is not None and crec.deadline <= now)
            )
        if verify:
            if not self._alive(crec):
                return None
            rec.verified_at = now
        try:
            renewed = self.rt.leases.renew(rec.lease_id, self.idle_window(spec), token=rec.token)
        except LeaseError:
            return None
        rec.last_used_at = now
        self._touch(rec)
        self._harvest_soon(rec.session_id)
        return self._lease_of(rec, renewed)

    def _touch(self, rec: SessionRecord) -> None:
        """Save the fast path's stamps only, and only onto the record it read (same container and lease).

        The fast path runs without the session lock: a whole-record save could overwrite a rebind
        that happened meanwhile (and drop its container from the history). WATCH makes it a
        compare-and-set; a lost race just skips the stamps, which the winner wrote fresher anyway.
        """
        key = self._key(rec.session_id)
        retention = max(1, int(self.rt.settings.session_retention))
        try:
            with self.rt.redis.pipeline() as pipe:
                pipe.watch(key)
                raw = pipe.get(key)
                if raw is None:
                    return
                current = SessionRecord.model_validate_json(raw)
                if (current.container_id, current.lease_id, current.restoring) != (
                        rec.container_id, rec.lease_id, False):
                    return
                current.last_used_at = max(current.last_used_at, rec.last_used_at)
                if rec.verified_at is not None:
                    current.verified_at = max(current.verified_at or 0.0, rec.verified_at)
                pipe.multi()
                pipe.set(key, current.model_dump_json(), ex=retention)
                pipe.execute()
        except redis.WatchError:
            return
        except redis.RedisError as exc:
            raise StateStoreError(f"redis: {type(exc).__name__}: {exc}") from exc

    def _alive(self, crec: ContainerRecord) -> bool:
        """One retrieve (it also keeps the container alive); a dead container's record is marked EXPIRED."""
        assert crec.container_id is not None
        try:
            container = self.rt.client.retrieve_container(crec.container_id)
            why = None if container.usable and not container.expired else f"status {container.status!r}"
        except (ContainerExpired, NotFound) as exc:
            why = str(exc)
        if why is None:
            deadline = container.expires_at()
            if deadline is not None:
                with contextlib.suppress(Conflict):
                    self.store.update(crec.name, State.LEASED, deadline=deadline)
            return True
        with contextlib.suppress(Conflict):
            self.store.transition(crec.name, State.LEASED, State.EXPIRED, error=f"expired: {why}"[:200])
        log_event(log, "session.container_lost", pool=crec.pool, container_id=crec.container_id)
        return False

    def _lease_of(self, rec: SessionRecord, lease: Lease, *, created: bool = False, restored: bool = False,
                  files: list[str] | None = None, renamed: dict[str, str] | None = None) -> SessionLease:
        return SessionLease(
            pool=lease.pool, container_id=lease.container_id, name=lease.name, lease_id=lease.lease_id,
            token=lease.token, expires_at=lease.expires_at, session_id=rec.session_id, created=created,
            restored=restored, restored_files=list(files or []), renamed=dict(renamed or {}),
        )

    def _bind(self, sid: str, pool: str, spec: PoolSpec, rec: SessionRecord | None, wait: float | None,
              renew: Callable[[], None] | None = None) -> SessionLease:
        """Take a fresh container for the session (under its lock); restore files if it had any before."""
        now = self.clock.now()
        if rec is not None:
            self._let_go(rec)
        lease = self._take(pool, spec, sid, wait)
        crec = self.store.by_container_id(lease.container_id)
        if crec is None:
            raise LeaseError(f"session {sid}: container {lease.container_id} has no record", temporary=True)
        # The same target every harvest of this container uses (the pool's too): one root, one manifest.
        target = pinned_target(self.rt, crec, lease_id=lease.lease_id)
        created = rec is None
        had_before = rec is not None and bool(rec.history)
        if rec is None:
            rec = SessionRecord(session_id=sid, pool=pool, created_at=now, last_used_at=now)
        rec.history = [*rec.history, SessionContainer(
            container_id=lease.container_id, name=lease.name, target=target, bound_at=now, lease_id=lease.lease_id)]
        rec.container_id, rec.name = lease.container_id, lease.name
        rec.lease_id, rec.token = lease.lease_id, lease.token
        rec.verified_at, rec.last_used_at, rec.ended = now, now, False
        rec.restoring, rec.restored_files, rec.renamed = had_before, [], {}
        self._save(rec)
        log_event(log, "session.bound", pool=pool, session=sid, container_id=lease.container_id,
                  restoring=had_before)
        if had_before:
            return self._finish_restore(rec, spec, renew)
        return self._lease_of(rec, lease, created=created)

    def _finish_restore(
        self, rec: SessionRecord, spec: PoolSpec, renew: Callable[[], None] | None = None
    ) -> SessionLease:
        assert rec.lease_id is not None
        files = self.restore(rec, spec, renew=renew)
        rec.restoring, rec.restored_files = False, files
        rec.last_used_at = self.clock.now()
        renewed = self.rt.leases.renew(rec.lease_id, self.idle_window(spec), token=rec.token)
        self._save(rec)
        log_event(log, "session.restored", pool=rec.pool, session=rec.session_id, container_id=rec.container_id,
                  files=len(files))
        return self._lease_of(rec, renewed, restored=True, files=files, renamed=rec.renamed)

    def _take(self, pool: str, spec: PoolSpec, sid: str, wait: float | None) -> Lease:
        rules = spec.lease
        ttl = self.idle_window(spec)
        got = self.rt.leases.try_lease(pool, ttl=ttl, min_remaining=rules.min_remaining_on_claim_seconds,
                                       holder="session", session_key_hash=sid)
        if got is not None:
            return got
        if self.rt.redis.set(self.store.key("pending", "reconcile"), "1", nx=True, px=2000):
            self.enqueue("hearth.reconcile", [])
        return self.rt.leases.lease(
            pool, ttl=ttl, min_remaining=rules.min_remaining_on_claim_seconds,
            wait_seconds=float(wait if wait is not None else rules.wait_seconds),
            holder="session", session_key_hash=sid,
        )

    def _let_go(self, rec: SessionRecord) -> None:
        """Before replacing the session's container: save what it still holds, and hand it to retire."""
        if rec.container_id is None:
            return
        crec = self.store.by_container_id(rec.container_id)
        if crec is None or crec.state not in (State.LEASED, State.HARVESTING):
            return  # expired, failed or gone: its last harvest is all there is
        with contextlib.suppress(HearthError):
            self.harvest_current(rec, wait=INLINE_HARVEST_WAIT)  # best effort: an expired container just reports so
        if crec.state is State.LEASED and crec.lease_id == rec.lease_id and rec.lease_id is not None:
            try:
                released = self.rt.leases.release(rec.container_id, rec.lease_id, token=rec.token)
            except LeaseError:
                return
            self.enqueue("hearth.retire", [released.name])

    # --- harvest and restore -------------------------------------------------------------------

    def _outputs(self, pool: str) -> OutputRules:
        try:
            return self.rt.pool(pool).outputs
        except ConfigError:
            return OutputRules()

    def policy(self, pool: str, files: list[ContainerFile]) -> HarvestPolicy:
        """The pool's harvest rules, but every source, and never the pool's own inputs."""
        return all_but_inputs_policy(self.rt, pool, files)

    def harvest_current(self, rec: SessionRecord, *, wait: float = 0.0) -> HarvestReport | None:
        """Copy the session container's files (outputs and uploads) to its recorded target.

        Under the container's harvest lock (``Busy`` when another harvest keeps it ``wait`` s)."""
        if rec.container_id is None or not rec.history or rec.history[-1].container_id != rec.container_id:
            return None
        here = rec.history[-1]
        try:
            files = list(self.rt.client.list_files(here.container_id, order="asc"))
        except (ContainerExpired, NotFound):
            return None
        target = StorageTarget.from_url(here.target, clock=self.clock)
        with harvest_lock(self.rt, here.container_id, wait=wait, tokens=self.tokens) as lock:
            report = harvest_under(self.rt, lock, here.container_id, target, self.policy(rec.pool, files),
                                   pool=rec.pool, lease_id=rec.lease_id)
        crec = self.store.by_container_id(here.container_id)
        if crec is not None:
            with contextlib.suppress(Conflict):
                self.store.update(crec.name, (State.READY, State.LEASED, State.HARVESTING),
                                  last_harvest_at=self.clock.now())
        return report

    def harvest(self, session_id: str) -> HarvestReport | None:
        """Harvest the current container of the session with this hash (the task's entry point)."""
        rec = self.load(session_id)
        return None if rec is None else self.harvest_current(rec)

    def _harvest_soon(self, sid: str) -> None:
        # Each turn starts with a lease: what the previous turn wrote or uploaded is saved now.
        if self.rt.redis.set(self._key(sid, "harvest"), "1", nx=True, px=max(1, int(self.harvest_every * 1000))):
            self.enqueue("hearth.session_harvest", [sid])

    def restore_plan(self, rec: SessionRecord, spec: PoolSpec) -> dict[str, RestoreItem]:
        """Restored name -> the file's original path and where its newest saved version is, over every
        earlier container of the session.

        Keyed by the file's path below ``/mnt/data`` (an upload's by its name): ``a/report.csv`` and
        ``b/report.csv`` are two files. Restored files are uploads, which the backend keeps by base name,
        so when base names collide the first path (sorted) keeps the name and the others get their
        directories in it (``b__report.csv``); ``rec.renamed`` says which path became which name.

        A manifest entry whose file id an earlier restore recorded for that container is the original
        path's file. Every other entry is the container's own (its code wrote it or the app uploaded
        it): a later container's own version beats an earlier one's, and within one container an own
        version beats the copy restored into it (it was written after the restore, whatever the
        whole-second ``created_at`` says), then the manifest's order decides.
        """
        items, _ = self.rt.inputs(spec)
        input_sizes = {i.dest_name: i.size for i in items if i.dest_name}
        by_path: dict[str, tuple[StorageTarget, ManifestEntry]] = {}
        for past in rec.history:
            if past.container_id == rec.container_id:
                continue
            target = StorageTarget.from_url(past.target, clock=self.clock)
            manifest = self._manifest(target, past.container_id)
            entries = list(manifest.files.values()) if manifest is not None else []
            copies: dict[str, ManifestEntry] = {}  # original path -> the copy restored into this container
            own: dict[str, ManifestEntry] = {}  # path -> this container's own newest version
            for entry in sorted(entries, key=lambda e: (e.created_at, e.file_id)):
                original = past.restored.get(entry.file_id)
                if original is not None:
                    copies[_restore_path(original)] = entry
                    continue
                name = restore_name(entry.container_path)
                if entry.source != "assistant" and name in input_sizes and input_sizes[name] in (None, entry.bytes):
                    continue  # the pool's input: the fresh container has it already
                own[_restore_path(entry.container_path)] = entry
            for path, entry in (copies | own).items():
                by_path[path] = (target, entry)  # later containers win
        names = _names(by_path)
        rec.renamed = {CONTAINER_ROOT + path: name for path, name in names.items() if name != path.rsplit("/", 1)[-1]}
        return {name: RestoreItem(CONTAINER_ROOT + path, *by_path[path]) for path, name in names.items()}

    def _manifest(self, target: StorageTarget, container_id: str) -> Manifest | None:
        try:
            raw = target.read_bytes(MANIFEST_KEY)
            return None if raw is None else Manifest.from_json(raw, container_id=container_id)
        except (ValueError, KeyError, TypeError, StorageError) as exc:
            log.warning("manifest of %s at %s unreadable: %s", container_id, target.url, exc)
            return None

    def restore(self, rec: SessionRecord, spec: PoolSpec, *, renew: Callable[[], None] | None = None) -> list[str]:
        """Upload every file of the session's earlier containers into the current one; the names restored.

        Idempotent: a name already in the container with the right size is not sent again. Each
        object's sha256 is checked against its manifest entry as it streams into the upload; a
        mismatch removes the upload and fails (temporary). ``renew`` runs after each file (it keeps the
        session lock while a long restore runs).
        """
        assert rec.container_id is not None
        here = rec.history[-1] if rec.history else None
        if here is None or here.container_id != rec.container_id:
            raise HearthError(f"session {rec.session_id}: current container missing from its history")
        plan = self.restore_plan(rec, spec)
        present: dict[str, dict[int | None, str]] = {}  # restored name -> bytes -> container-file id
        for f in self.rt.client.list_files(rec.container_id, order="asc"):
            if f.source != "assistant":
                present.setdefault(restore_name(f.path), {})[f.bytes] = f.id
        done: list[str] = []
        restored: dict[str, str] = {}  # container-file id -> original path (the file's identity next time)
        for name, (original, target, entry) in plan.items():
            already = present.get(name, {}).get(entry.bytes)
            if already is not None:  # a resumed restore: uploaded before the interruption
                restored[already] = original
                done.append(name)
                continue
            with target.open_read(entry.storage_key) as fh:
                reader = _HashingReader(fh)
                uploaded = self.rt.client.upload_file(rec.container_id, cast(BinaryIO, reader), filename=name)
            if reader.hexdigest() != entry.sha256 or (uploaded.bytes is not None and uploaded.bytes != entry.bytes):
                with contextlib.suppress(HearthError):
                    self.rt.client.delete_file(rec.container_id, uploaded.id)
                raise StorageError(f"restore of {name}: the stored object does not match its manifest entry "
                                   f"({entry.bytes} bytes, sha256 {entry.sha256[:12]}…)")
            restored[uploaded.id] = original
            done.append(name)
            if renew is not None:
                renew()
        here.restored = restored  # saved with the record when the restore finishes
        return done

    # --- end -----------------------------------------------------------------------------------

    def end_session(self, session: str, *, harvest: bool = True, forget: bool = False) -> SessionEnd:
        """Harvest a last time, release the container (it is retired), keep the record for a later restore.

        ``forget`` also deletes the session record (a later lease with the key starts afresh).
        """
        return self.end(session_hash(session), harvest=harvest, forget=forget)

    def end(self, sid: str, *, harvest: bool = True, forget: bool = False) -> SessionEnd:
        """``end_session`` by the key's hash (what the task and CLI pass along)."""
        with self._locked(sid):
            rec = self.load(sid)
            if rec is None:
                return SessionEnd(session_id=sid, found=False)
            cid, harvested, retiring = rec.container_id, 0, False
            crec = self._still_ours(rec)
            if crec is not None and rec.lease_id is not None and cid is not None:
                if harvest:
                    report = self.harvest_current(rec, wait=INLINE_HARVEST_WAIT)
                    if report is not None:
                        if not report.complete and not report.expired:
                            raise HearthError(
                                f"session {sid}: last harvest of {cid} incomplete ({report.failures} failed)",
                                temporary=True,
                            )
                        harvested = report.files + report.already
                try:
                    released = self.rt.leases.release(cid, rec.lease_id, token=rec.token)
                    self.enqueue("hearth.retire", [released.name])
                    retiring = True
                except LeaseError:
                    pass  # lapsed and reclaimed meanwhile: the reclaim already retires it
            if forget:
                self.store._cmd(self.rt.redis.delete, self._key(sid))
            else:
                rec.container_id, rec.name, rec.lease_id, rec.token = None, None, None, None
                rec.ended, rec.restoring, rec.last_used_at = True, False, self.clock.now()
                self._save(rec)
            log_event(log, "session.ended", pool=rec.pool, session=sid, container_id=cid)
            return SessionEnd(session_id=sid, found=True, container_id=cid, harvested_files=harvested,
                              retiring=retiring, forgotten=forget)

    # --- the per-session lock ------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, sid: str) -> Iterator[Callable[[], None]]:
        """The per-session lock; yields ``renew()``, which extends it (a long restore calls it per file)."""
        key = self._key(sid, "lock")
        token = self.tokens()
        ttl_ms = max(1, int(self.lock_ttl * 1000))
        give_up = self.clock.now() + self.lock_wait
        delay = 0.02
        while not self.store._cmd(self.rt.redis.set, key, token, nx=True, px=ttl_ms):
            if self.clock.now() >= give_up:
                raise LeaseError(f"session {sid}: another process is still binding it", temporary=True)
            self.clock.sleep(delay)
            delay = min(delay * 2, 0.5)

        def renew() -> None:
            self.store._cmd(
                self.rt.redis.eval,
                "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end "
                "return 0",
                1, key, token, ttl_ms,
            )

        try:
            yield renew
        finally:
            self.store._cmd(
                self.rt.redis.eval,
                "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0",
                1, key, token,
            )


def _names(paths: Iterable[str]) -> dict[str, str]:
    """Path below /mnt/data -> restored name: top-level files keep their names, then the first path
    (sorted) keeps a base name and the others get their directories in it (``b__report.csv``)."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for path in sorted(paths, key=lambda p: (p.count("/"), p)):
        base = path.rsplit("/", 1)[-1]
        name = base if base not in taken else path.replace("/", "__")
        while name in taken:
            name = "_" + name
        taken.add(name)
        names[path] = name
    return names


def _restore_path(container_path: str) -> str:
    """A saved file's identity for a restore: its path below /mnt/data, with an upload's prefix dropped."""
    name = restore_name(container_path)
    try:
        rel = relative_container_path(container_path)
    except UnsafePath:
        return name
    parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
    return f"{parent}/{name}" if parent else name


class _HashingReader:
    """A read-only stream that hashes what the upload reads; a rewind (a retried upload) starts over."""

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner
        self._hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._inner.read(n)
        self._hash.update(data)
        return data

    def seekable(self) -> bool:
        return self._inner.seekable()

    def tell(self) -> int:
        return self._inner.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        pos = self._inner.seek(offset, whence)
        if pos == 0:
            self._hash = hashlib.sha256()
        return pos

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

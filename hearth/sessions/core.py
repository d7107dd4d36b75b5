"""Sessions: the session logic once (``SessionsCore``, sans IO) and its sync face ``Sessions``.

The decisions live here; the parts it stands on are apart: ``records`` (what Redis keeps, the
per-session lock), ``restore`` (files of earlier containers back into a fresh one), ``saving`` (a
harvest of the current container, and what is saved already), ``live`` (the save every period) and
``responses`` (the citations of a model response).

One core, two faces, as leases (``hearth.pool.leases``): ``SessionsCore`` yields the Redis commands
and scripts it needs (``hearth.pool.effects``), its lease steps are ``LeaseCore``'s, and the file
transfers (a harvest, a restore, a retrieve of the container) are ``Offload`` steps. ``Sessions``
runs it on ``redis.Redis``; ``AsyncSessions`` (``hearth.sessions.async_sessions``) on
``redis.asyncio``, with the transfers on a worker thread.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any

from hearth.errors import Conflict, ContainerExpired, HearthError, LeaseError, NotFound
from hearth.events import log_event
from hearth.files.harvest import HarvestPolicy, HarvestReport
from hearth.files.lock import TokenFactory, random_token
from hearth.files.storage import StorageTarget
from hearth.operations import all_but_inputs_policy, pinned_target
from hearth.pool.effects import Batch, Command, Offload, Steps, SyncIO
from hearth.pool.effects import Enqueue as Send
from hearth.pool.leases import Lease
from hearth.pool.model import ContainerRecord, State
from hearth.pool.wanted import FillRequests
from hearth.runtime import Runtime
from hearth.sessions import restore as restoring
from hearth.sessions.live import LiveSaves
from hearth.sessions.records import (
    RecordStore,
    SessionContainer,
    SessionEnd,
    SessionLease,
    SessionRecord,
    session_hash,
    still_ours_steps,
)
from hearth.sessions.responses import Citation, SessionSave, citations
from hearth.sessions.restore import RestoreItem
from hearth.sessions.saving import save_current
from settings.pools import PoolSpec

log = logging.getLogger(__name__)

Enqueue = Callable[[str, list[Any]], None]

INLINE_HARVEST_WAIT = 30.0  # how long a lease, an end or a save waits for another harvest of the same container


class SessionsCore:
    """The session logic without IO: ``lease``, ``end`` and ``save_after`` return Steps for a face to run.

    ``verify_after``: a lease re-checks the container with one retrieve when it was last seen alive
    longer ago than this (or Hearth's deadline for it passed); in between, same-key leases are Redis
    only. ``lock_wait``: how long a lease waits for another process binding the same key.
    ``tokens``: randomness for lock tokens (default: ``hearth.files.lock.random_token``).
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        verify_after: float = 30.0,
        lock_ttl: float = 300.0,
        lock_wait: float = 300.0,
        harvest_every: float = 2.0,
        tokens: TokenFactory | None = None,
    ) -> None:
        self.tokens = tokens or random_token
        self.rt = runtime
        self.store = runtime.store
        self.clock = runtime.clock
        self.leases = runtime.leases.core
        self.verify_after = verify_after
        self.harvest_every = harvest_every
        self.records = RecordStore(runtime, lock_ttl=lock_ttl, lock_wait=lock_wait, tokens=self.tokens)
        self.live = LiveSaves(runtime, self.records, tokens=self.tokens)

    def idle_window(self, spec: PoolSpec) -> float:
        return float(spec.lease.session_idle_seconds or self.rt.settings.session_idle)

    # --- lease ---------------------------------------------------------------------------------

    def lease(self, pool: str, session: str, *, verify: bool | None = None,
              wait: float | None = None) -> Steps[SessionLease]:
        sid = session_hash(session)
        spec = self.rt.pool(pool)
        rec = yield from self.records.load_steps(sid)
        if rec is not None and rec.pool != pool:
            raise LeaseError(f"session {sid} belongs to pool {rec.pool!r}, not {pool!r}")
        if rec is not None and not rec.restoring:
            current = yield from self._current(rec, spec, verify)
            if current is not None:
                return current
        token = yield from self.records.acquire(sid)
        try:
            renew = self.records.renewer(sid, token)
            rec = yield from self.records.load_steps(sid)  # another process may have bound it while we waited
            if rec is not None and rec.pool != pool:
                raise LeaseError(f"session {sid} belongs to pool {rec.pool!r}, not {pool!r}")
            if rec is not None and not rec.restoring:
                current = yield from self._current(rec, spec, verify)
                if current is not None:
                    return current
            if rec is not None and rec.restoring and (yield from still_ours_steps(self.leases, rec)) is not None:
                return (yield from self._finish_restore(rec, spec, renew))  # interrupted by a crash: resume it
            return (yield from self._bind(sid, pool, spec, rec, wait, renew))
        finally:
            yield from self.records.unlock(sid, token)

    def _current(self, rec: SessionRecord, spec: PoolSpec, verify: bool | None) -> Steps[SessionLease | None]:
        """Renew and return the session's container if it is still alive; None when it must be replaced."""
        crec = yield from still_ours_steps(self.leases, rec)
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
            if not (yield Offload(self._alive, (crec,))):
                return None
            rec.verified_at = now
        try:
            renewed = yield from self.leases.renew(rec.lease_id, self.idle_window(spec), token=rec.token)
        except LeaseError:
            return None
        rec.last_used_at = now
        yield from self.records.touch_steps(rec)
        yield from self.live.schedule_steps(rec, keep=True)  # self-healing: a session in use is on the schedule
        yield from self._harvest_soon(rec.session_id)
        return self._lease_of(rec, renewed)

    def _alive(self, crec: ContainerRecord) -> bool:
        """One retrieve (it also keeps the container alive); a dead container's record is marked EXPIRED.

        Blocking work (the sync API client): run as an ``Offload`` step."""
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
              renew: Callable[[], None] | None = None) -> Steps[SessionLease]:
        """Take a fresh container for the session (under its lock); restore files if it had any before."""
        now = self.clock.now()
        if rec is not None:
            yield from self._let_go(rec)
        lease = yield from self._take(pool, spec, sid, wait)
        crec = yield from self.leases.by_container_id(lease.container_id)
        if crec is None:
            raise LeaseError(f"session {sid}: container {lease.container_id} has no record", temporary=True)
        # The same target every harvest of this container uses (the pool's too): one root, one manifest.
        target = yield Offload(functools.partial(pinned_target, self.rt, crec, lease_id=lease.lease_id))
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
        yield from self.records.save_steps(rec)
        yield from self.live.schedule_steps(rec)
        log_event(log, "session.bound", pool=pool, session=sid, container_id=lease.container_id,
                  restoring=had_before)
        if had_before:
            return (yield from self._finish_restore(rec, spec, renew))
        return self._lease_of(rec, lease, created=created)

    def _finish_restore(
        self, rec: SessionRecord, spec: PoolSpec, renew: Callable[[], None] | None = None
    ) -> Steps[SessionLease]:
        assert rec.lease_id is not None
        files = yield Offload(functools.partial(restoring.restore, self.rt, rec, spec, renew=renew))
        rec.restoring, rec.restored_files = False, files
        rec.last_used_at = self.clock.now()
        renewed = yield from self.leases.renew(rec.lease_id, self.idle_window(spec), token=rec.token)
        yield from self.records.save_steps(rec)
        log_event(log, "session.restored", pool=rec.pool, session=rec.session_id, container_id=rec.container_id,
                  files=len(files))
        return self._lease_of(rec, renewed, restored=True, files=files, renamed=rec.renamed)

    def _take(self, pool: str, spec: PoolSpec, sid: str, wait: float | None) -> Steps[Lease]:
        """A READY container of the pool for the session, counted as pool demand like any lease.

        A bind takes a spare exactly as ``HearthPools.lease`` does, so ``buffer: auto`` must see it
        in the arrival rate (else a pool that serves sessions is sized for less than it serves) and
        a budget must keep a container for a bind that waits. Same-key turns (``_current``) take no
        container and are not counted.
        """
        rules = spec.lease
        ttl = self.idle_window(spec)
        started = self.clock.now()
        costs = self.rt.costs
        got = yield from self.leases.try_lease(pool, ttl=ttl, min_remaining=rules.min_remaining_on_claim_seconds,
                                               holder="session", session_key_hash=sid)
        if got is None:
            # Registered as waiting first, so the fill it asks for already counts this bind.
            waited = float(wait if wait is not None else rules.wait_seconds)
            waiting_key, ident = costs.demand.key(pool, "waiting"), self.tokens()
            yield Command("zadd", (waiting_key, {ident: started + waited}))
            try:
                yield from FillRequests(self.store).ask_steps(pool)
                got = yield from self.leases.lease(
                    pool, ttl=ttl, min_remaining=rules.min_remaining_on_claim_seconds, wait_seconds=waited,
                    holder="session", session_key_hash=sid,
                )
            finally:
                yield Command("zrem", (waiting_key, ident))
        yield Batch(tuple(Command(command, args) for command, args in costs.lease_counters(spec, self.clock.now())))
        return got

    def _let_go(self, rec: SessionRecord) -> Steps[None]:
        """Before replacing the session's container: save what it still holds, and hand it to retire."""
        if rec.container_id is None:
            return
        crec = yield from self.leases.by_container_id(rec.container_id)
        if crec is None or crec.state not in (State.LEASED, State.HARVESTING):
            return  # expired, failed or gone: its last harvest is all there is
        with contextlib.suppress(HearthError):  # best effort: an expired container just reports so
            yield Offload(functools.partial(self.harvest_current, rec, wait=INLINE_HARVEST_WAIT))
        if crec.state is State.LEASED and crec.lease_id == rec.lease_id and rec.lease_id is not None:
            try:
                released = yield from self.leases.release(rec.container_id, rec.lease_id, token=rec.token)
            except LeaseError:
                return
            yield Send("hearth.retire", [released.name])

    # --- harvest (blocking work: the sync API client and storage) ------------------------------

    def harvest_current(self, rec: SessionRecord, *, wait: float = 0.0) -> HarvestReport | None:
        """Copy the session container's files (outputs and uploads) to its recorded target.

        Under the container's harvest lock (``Busy`` when another harvest keeps it ``wait`` s)."""
        return save_current(self.rt, self.records, rec, wait=wait, tokens=self.tokens)

    def _harvest_soon(self, sid: str) -> Steps[None]:
        # Each turn starts with a lease: what the previous turn wrote or uploaded is saved now.
        px = max(1, int(self.harvest_every * 1000))
        if (yield Command("set", (self.records.key(sid, "harvest"), "1"), {"nx": True, "px": px})):
            yield Send("hearth.session_harvest", [sid])

    # --- after a model response ----------------------------------------------------------------

    def save_after(self, sid: str, response: Any = None) -> Steps[SessionSave]:
        cites = citations(response)
        rec = yield from self.records.load_steps(sid)
        if rec is None:
            return SessionSave(sid, found=False, message="unknown session (never leased, or past its retention)",
                               refused=[_refused(c, "unknown session") for c in cites])
        here = rec.current
        if here is None or (yield from still_ours_steps(self.leases, rec)) is None:
            why = "the session has ended" if rec.ended else "the session has no container of its own now"
            return SessionSave(sid, found=True, message=f"{why}: nothing to save",
                               refused=[_refused(c, why) for c in cites])
        return (yield Offload(self._save_cited, (rec, here, cites)))

    def _save_cited(self, rec: SessionRecord, here: SessionContainer, cites: list[Citation]) -> SessionSave:
        """The save after a response, and what became of each citation (blocking work: an ``Offload``)."""
        sid, cid = rec.session_id, here.container_id
        refused = [_refused(c, f"not this session's container ({cid})") for c in cites if c.container_id != cid]
        mine = [c for c in cites if c.container_id == cid]
        report = self.harvest_current(rec, wait=INLINE_HARVEST_WAIT)
        if report is None or report.expired:
            return SessionSave(sid, found=True, container_id=cid, refused=refused,
                               cited=[_cited(c, "missing") for c in mine], failures=len(mine),
                               message="the container is gone: its last save is all there is")
        manifest = restoring.read_manifest(StorageTarget.from_url(here.target, clock=self.clock), cid)
        now_saved = {e.file_id for e in report.saved}
        cited: list[dict[str, Any]] = []
        for c in mine:
            entry = manifest.files.get(c.file_id) if manifest is not None else None
            skipped = manifest.skipped.get(c.file_id) if manifest is not None else None
            if entry is not None:
                cited.append(_cited(c, "saved" if c.file_id in now_saved else "already",
                                    storage_key=entry.storage_key, bytes=entry.bytes, sha256=entry.sha256))
            elif skipped is not None:
                cited.append(_cited(c, f"skipped: {skipped.reason}", detail=skipped.detail))
            else:
                cited.append(_cited(c, "missing"))
        saved = [{"file_id": e.file_id, "path": e.container_path, "bytes": e.bytes, "sha256": e.sha256,
                  "storage_key": e.storage_key} for e in report.saved]
        parts = [f"{len(saved)} file(s) saved, {report.already} already saved"]
        if not cites:
            parts.append("the response cites no container file")
        if refused:
            parts.append(f"{len(refused)} citation(s) of another container refused")
        if report.failures:
            parts.append(f"{report.failures} failed (the live save retries them)")
        result = SessionSave(sid, found=True, container_id=cid, message="; ".join(parts), cited=cited,
                             refused=refused, saved=saved, already=report.already, failures=report.failures,
                             errors=list(report.errors))
        log_event(log, "session.saved", pool=rec.pool, session=sid, container_id=cid, files=len(saved),
                  cited=len(mine), refused=len(refused), failures=report.failures)
        return result

    # --- end -----------------------------------------------------------------------------------

    def end(self, sid: str, *, harvest: bool = True, forget: bool = False) -> Steps[SessionEnd]:
        token = yield from self.records.acquire(sid)
        try:
            return (yield from self._end_locked(sid, harvest=harvest, forget=forget))
        finally:
            yield from self.records.unlock(sid, token)

    def _end_locked(self, sid: str, *, harvest: bool, forget: bool) -> Steps[SessionEnd]:
        rec = yield from self.records.load_steps(sid)
        yield from self.live.unschedule_steps(sid)
        if rec is None:
            return SessionEnd(session_id=sid, found=False)
        cid, harvested, retiring = rec.container_id, 0, False
        crec = yield from still_ours_steps(self.leases, rec)
        if crec is not None and rec.lease_id is not None and cid is not None:
            if harvest:
                report = yield Offload(functools.partial(self.harvest_current, rec, wait=INLINE_HARVEST_WAIT))
                if report is not None:
                    if not report.complete and not report.expired:
                        yield from self.live.schedule_steps(rec)  # still ours: keep saving it until an end succeeds
                        raise HearthError(
                            f"session {sid}: last harvest of {cid} incomplete ({report.failures} failed)",
                            temporary=True,
                        )
                    harvested = report.files + report.already
            try:
                released = yield from self.leases.release(cid, rec.lease_id, token=rec.token)
                yield Send("hearth.retire", [released.name])
                retiring = True
            except LeaseError:
                pass  # lapsed and reclaimed meanwhile: the reclaim already retires it
        if forget:
            yield from self.records.delete_steps(sid)
        else:
            rec.container_id, rec.name, rec.lease_id, rec.token = None, None, None, None
            rec.ended, rec.restoring, rec.last_used_at = True, False, self.clock.now()
            yield from self.records.save_steps(rec)
        log_event(log, "session.ended", pool=rec.pool, session=sid, container_id=cid)
        return SessionEnd(session_id=sid, found=True, container_id=cid, harvested_files=harvested,
                          retiring=retiring, forgotten=forget)


class Sessions:
    """Session leases over one :class:`Runtime` (the sync face of :class:`SessionsCore`);
    ``enqueue(task_name, args)`` sends retires and harvests. Arguments as :class:`SessionsCore`."""

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
        self.core = SessionsCore(runtime, verify_after=verify_after, lock_ttl=lock_ttl, lock_wait=lock_wait,
                                 harvest_every=harvest_every, tokens=tokens)
        self.tokens = self.core.tokens
        self.rt = runtime
        self.enqueue = enqueue
        self.store = runtime.store
        self.clock = runtime.clock
        self.records = self.core.records
        self.live = self.core.live
        self.io = SyncIO(runtime.redis, runtime.store.prefix, runtime.clock, enqueue=enqueue)

    def __repr__(self) -> str:
        return f"Sessions(runtime={self.rt!r})"

    # --- records -------------------------------------------------------------------------------

    def get(self, session: str) -> SessionRecord | None:
        """The record of a session key (None when unknown or expired from Redis)."""
        return self.records.load(session_hash(session))

    def load(self, sid: str) -> SessionRecord | None:
        return self.records.load(sid)

    def idle_window(self, spec: PoolSpec) -> float:
        return self.core.idle_window(spec)

    # --- lease ---------------------------------------------------------------------------------

    def lease(self, pool: str, session: str, *, verify: bool | None = None, wait: float | None = None) -> SessionLease:
        """The session's container: the same one while it lives, else a fresh one with the files restored.

        ``verify``: True always retrieves the container first, False never does, None (default)
        does when it was last seen alive more than ``verify_after`` s ago or is past its deadline.
        ``wait``: how long to wait for a ready container when the pool is empty (default: the pool's).
        """
        return self.io.run(self.core.lease(pool, session, verify=verify, wait=wait))

    # --- harvest and restore -------------------------------------------------------------------

    def policy(self, pool: str, files: list[Any]) -> HarvestPolicy:
        """The pool's harvest rules, but every source, and never the pool's own inputs."""
        return all_but_inputs_policy(self.rt, pool, files)

    def harvest_current(self, rec: SessionRecord, *, wait: float = 0.0) -> HarvestReport | None:
        """See :meth:`SessionsCore.harvest_current`."""
        return self.core.harvest_current(rec, wait=wait)

    def harvest(self, session_id: str) -> HarvestReport | None:
        """Harvest the current container of the session with this hash (the task's entry point)."""
        rec = self.load(session_id)
        return None if rec is None else self.harvest_current(rec)

    def restore_plan(self, rec: SessionRecord, spec: PoolSpec) -> dict[str, RestoreItem]:
        """See :func:`hearth.sessions.restore.plan`."""
        return restoring.plan(self.rt, rec, spec)

    def restore(self, rec: SessionRecord, spec: PoolSpec, *, renew: Callable[[], None] | None = None) -> list[str]:
        """See :func:`hearth.sessions.restore.restore`."""
        return restoring.restore(self.rt, rec, spec, renew=renew)

    # --- after a model response ----------------------------------------------------------------

    def after_response(self, session: str, response: Any = None) -> SessionSave:
        """Save now the files a model response cites in the session's container, and everything else new.

        ``response``: a Responses API response (the official SDK's ``Response`` or its dict), or None
        to save what is new without citations. Citations of any other container are refused (listed
        in ``refused``, nothing read from it). An unknown or ended session is an answer
        (``found=False`` or no container), not an error. A save that fails is reported
        (``failures``, ``complete=False``) and the live save tries again at its next period.
        """
        return self.save_after(session_hash(session), response)

    def save_after(self, sid: str, response: Any = None) -> SessionSave:
        """``after_response`` by the key's hash (what the task and CLI pass along)."""
        return self.io.run(self.core.save_after(sid, response))

    # --- end -----------------------------------------------------------------------------------

    def end_session(self, session: str, *, harvest: bool = True, forget: bool = False) -> SessionEnd:
        """Harvest a last time, release the container (it is retired), keep the record for a later restore.

        ``forget`` also deletes the session record (a later lease with the key starts afresh).
        """
        return self.end(session_hash(session), harvest=harvest, forget=forget)

    def end(self, sid: str, *, harvest: bool = True, forget: bool = False) -> SessionEnd:
        """``end_session`` by the key's hash (what the task and CLI pass along)."""
        return self.io.run(self.core.end(sid, harvest=harvest, forget=forget))


def _refused(c: Any, reason: str) -> dict[str, Any]:
    return {"container_id": c.container_id, "file_id": c.file_id, "filename": c.filename, "reason": reason}


def _cited(c: Any, status: str, **more: Any) -> dict[str, Any]:
    return {"file_id": c.file_id, "filename": c.filename, "status": status, **more}

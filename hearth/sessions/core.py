"""``Sessions``: a sticky lease per conversation key, the face apps call (lease, end, after_response).

The decisions live here; the parts it stands on are apart: ``records`` (what Redis keeps, the
per-session lock), ``restore`` (files of earlier containers back into a fresh one), ``saving`` (a
harvest of the current container, and what is saved already), ``live`` (the save every period) and
``responses`` (the citations of a model response).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from hearth.errors import ConfigError, Conflict, ContainerExpired, HearthError, LeaseError, NotFound
from hearth.events import log_event
from hearth.files.harvest import HarvestPolicy, HarvestReport
from hearth.files.lock import TokenFactory, random_token
from hearth.files.storage import StorageTarget
from hearth.operations import all_but_inputs_policy, pinned_target
from hearth.pool.leases import Lease
from hearth.pool.model import ContainerRecord, State
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
    still_ours,
)
from hearth.sessions.responses import SessionSave, citations
from hearth.sessions.restore import RestoreItem
from hearth.sessions.saving import save_current
from settings.pools import OutputRules, PoolSpec

log = logging.getLogger(__name__)

Enqueue = Callable[[str, list[Any]], None]

INLINE_HARVEST_WAIT = 30.0  # how long a lease, an end or a save waits for another harvest of the same container


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
        self.harvest_every = harvest_every
        self.records = RecordStore(runtime, lock_ttl=lock_ttl, lock_wait=lock_wait, tokens=self.tokens)
        self.live = LiveSaves(runtime, self.records, tokens=self.tokens)

    def __repr__(self) -> str:
        return f"Sessions(runtime={self.rt!r})"

    # --- records -------------------------------------------------------------------------------

    def get(self, session: str) -> SessionRecord | None:
        """The record of a session key (None when unknown or expired from Redis)."""
        return self.records.load(session_hash(session))

    def load(self, sid: str) -> SessionRecord | None:
        return self.records.load(sid)

    def idle_window(self, spec: PoolSpec) -> float:
        return float(spec.lease.session_idle_seconds or self.rt.settings.session_idle)

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
        with self.records.locked(sid) as renew:
            rec = self.load(sid)  # another process may have bound it while we waited
            if rec is not None and rec.pool != pool:
                raise LeaseError(f"session {sid} belongs to pool {rec.pool!r}, not {pool!r}")
            if rec is not None and not rec.restoring:
                current = self._current(rec, spec, verify)
                if current is not None:
                    return current
            if rec is not None and rec.restoring and still_ours(self.rt, rec) is not None:
                return self._finish_restore(rec, spec, renew)  # a restore interrupted by a crash: resume it
            return self._bind(sid, pool, spec, rec, wait, renew)

    def _current(self, rec: SessionRecord, spec: PoolSpec, verify: bool | None) -> SessionLease | None:
        """Renew and return the session's container if it is still alive; None when it must be replaced."""
        crec = still_ours(self.rt, rec)
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
        self.records.touch(rec)
        self.live.schedule(rec, keep=True)  # self-healing: a session in use is on the live-save schedule
        self._harvest_soon(rec.session_id)
        return self._lease_of(rec, renewed)

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
        self.records.save(rec)
        self.live.schedule(rec)
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
        self.records.save(rec)
        log_event(log, "session.restored", pool=rec.pool, session=rec.session_id, container_id=rec.container_id,
                  files=len(files))
        return self._lease_of(rec, renewed, restored=True, files=files, renamed=rec.renamed)

    def _take(self, pool: str, spec: PoolSpec, sid: str, wait: float | None) -> Lease:
        """A READY container of the pool for the session, counted as pool demand like any lease.

        A bind takes a spare exactly as ``HearthPools.lease`` does, so ``buffer: auto`` must see it
        in the arrival rate (else a pool that serves sessions is sized for less than it serves) and
        a budget must keep a container for a bind that waits. Same-key turns (``_current``) take no
        container and are not counted.
        """
        rules = spec.lease
        ttl = self.idle_window(spec)
        started = self.clock.now()
        got = self.rt.leases.try_lease(pool, ttl=ttl, min_remaining=rules.min_remaining_on_claim_seconds,
                                       holder="session", session_key_hash=sid)
        if got is None:
            if self.rt.redis.set(self.store.key("pending", "reconcile"), "1", nx=True, px=2000):
                self.enqueue("hearth.reconcile", [])
            waited = float(wait if wait is not None else rules.wait_seconds)
            waiting_key, ident = self.rt.costs.demand.key(pool, "waiting"), self.tokens()
            self.rt.redis.zadd(waiting_key, {ident: started + waited})
            try:
                got = self.rt.leases.lease(
                    pool, ttl=ttl, min_remaining=rules.min_remaining_on_claim_seconds, wait_seconds=waited,
                    holder="session", session_key_hash=sid,
                )
            finally:
                self.rt.redis.zrem(waiting_key, ident)
        pipe = self.rt.redis.pipeline(transaction=False)
        for command, args in self.rt.costs.lease_counters(spec, self.clock.now()):
            getattr(pipe, command)(*args)
        pipe.execute()
        return got

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

    def policy(self, pool: str, files: list[Any]) -> HarvestPolicy:
        """The pool's harvest rules, but every source, and never the pool's own inputs."""
        return all_but_inputs_policy(self.rt, pool, files)

    def harvest_current(self, rec: SessionRecord, *, wait: float = 0.0) -> HarvestReport | None:
        """Copy the session container's files (outputs and uploads) to its recorded target.

        Under the container's harvest lock (``Busy`` when another harvest keeps it ``wait`` s)."""
        return save_current(self.rt, self.records, rec, wait=wait, tokens=self.tokens)

    def harvest(self, session_id: str) -> HarvestReport | None:
        """Harvest the current container of the session with this hash (the task's entry point)."""
        rec = self.load(session_id)
        return None if rec is None else self.harvest_current(rec)

    def _harvest_soon(self, sid: str) -> None:
        # Each turn starts with a lease: what the previous turn wrote or uploaded is saved now.
        if self.rt.redis.set(self.records.key(sid, "harvest"), "1", nx=True,
                             px=max(1, int(self.harvest_every * 1000))):
            self.enqueue("hearth.session_harvest", [sid])

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
        cites = citations(response)
        rec = self.load(sid)
        if rec is None:
            return SessionSave(sid, found=False, message="unknown session (never leased, or past its retention)",
                               refused=[_refused(c, "unknown session") for c in cites])
        here = rec.current
        if here is None or still_ours(self.rt, rec) is None:
            why = "the session has ended" if rec.ended else "the session has no container of its own now"
            return SessionSave(sid, found=True, message=f"{why}: nothing to save",
                               refused=[_refused(c, why) for c in cites])
        cid = here.container_id
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

    def end_session(self, session: str, *, harvest: bool = True, forget: bool = False) -> SessionEnd:
        """Harvest a last time, release the container (it is retired), keep the record for a later restore.

        ``forget`` also deletes the session record (a later lease with the key starts afresh).
        """
        return self.end(session_hash(session), harvest=harvest, forget=forget)

    def end(self, sid: str, *, harvest: bool = True, forget: bool = False) -> SessionEnd:
        """``end_session`` by the key's hash (what the task and CLI pass along)."""
        with self.records.locked(sid):
            rec = self.load(sid)
            if rec is None:
                self.live.unschedule(sid)
                return SessionEnd(session_id=sid, found=False)
            self.live.unschedule(sid)
            cid, harvested, retiring = rec.container_id, 0, False
            crec = still_ours(self.rt, rec)
            if crec is not None and rec.lease_id is not None and cid is not None:
                if harvest:
                    report = self.harvest_current(rec, wait=INLINE_HARVEST_WAIT)
                    if report is not None:
                        if not report.complete and not report.expired:
                            self.live.schedule(rec)  # still ours: keep saving it until an end succeeds
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
                self.records.delete(sid)
            else:
                rec.container_id, rec.name, rec.lease_id, rec.token = None, None, None, None
                rec.ended, rec.restoring, rec.last_used_at = True, False, self.clock.now()
                self.records.save(rec)
            log_event(log, "session.ended", pool=rec.pool, session=sid, container_id=cid)
            return SessionEnd(session_id=sid, found=True, container_id=cid, harvested_files=harvested,
                              retiring=retiring, forgotten=forget)


def _refused(c: Any, reason: str) -> dict[str, Any]:
    return {"container_id": c.container_id, "file_id": c.file_id, "filename": c.filename, "reason": reason}


def _cited(c: Any, status: str, **more: Any) -> dict[str, Any]:
    return {"file_id": c.file_id, "filename": c.filename, "status": status, **more}

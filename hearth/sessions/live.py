"""Live saving: while a session is active, its new files reach storage within a period (and a second), no app call.

The schedule is one Redis sorted set (``<prefix>:sessions:save-due``): member the session's hash,
score when its next save is due. A session joins it when it binds a container and leaves it when
it ends or its container is no longer its own. The heartbeat leader's claim job (``enqueue_due``,
every ``SAVE_CLAIM_SECONDS`` of ``worker.heartbeat``; ``hearth.planner.tick`` does it too when no
such job runs, as in tests) reads only the members due now (``ZRANGEBYSCORE``: the cost follows what
is due, not how many sessions exist), claims them atomically and enqueues one
``hearth.session_saves`` per ``BATCH`` of them (JSON: ``[[hash, due], ...]``), so the heartbeat
publishes a few messages a tick, not one per session, and no message waits for its due time. The
task (``save_batch``) reads the batch's records, saved-state, duplicate guards and leases in two
pipelined round trips, makes one request per session: the container's files newest first,
stopping at the newest one already saved (``saving.scan_new``); only when that shows something new
does it harvest. Then it puts every session back in the set in one pipeline, one period after the
time it was due (the cadence holds although a save runs up to one claim interval after its due
time, so a new file is saved within a period plus that interval: about a second). ``hearth.session_live_save`` (one
session) still serves a single save. A claimed save whose task never reports back is claimed
again after ``claim_ttl`` (a lost message costs one period or so, never the session's saves).
When the workers fall behind by more than ``claim_ttl``, that second claim is a duplicate of a
save still queued: a save that finds the session listed less than half a period ago makes no
request and only puts it back on the schedule (``<prefix>:session:<hash>:listed``), so a backlog
costs Redis reads, not API requests (``bench/sessions.py`` showed the backlog).

Request rate: one listing per active session per period, ``active / period`` requests per second
(1,000 sessions at the default 15 s: ~67/s, 4,000/min), plus the copies of files that are new.
With ``HEARTH_API_REQUESTS_PER_MINUTE`` set, the live saves take at most ``SAVE_SHARE`` of it: the
period stretches to ``active * 60 / (rpm * SAVE_SHARE)`` (``save_period``), with one warning when
the stretch begins, and each tick claims at most that share of the tick's requests.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from hearth.errors import Busy, ConfigError, Conflict, ContainerExpired, HearthError, NotFound
from hearth.events import log_event
from hearth.files.lock import TokenFactory
from hearth.pool.effects import Command, Steps
from hearth.pool.model import ContainerRecord, State
from hearth.runtime import Runtime
from hearth.sessions.records import RecordStore, SessionRecord
from hearth.sessions.saving import SavedState, save_current, scan_new

log = logging.getLogger(__name__)

Enqueue = Callable[[str, list[Any]], None]

LIVE_SAVE_TASK = "hearth.session_live_save"  # one session (what ``hearth`` sent before batches; still served)
SAVES_TASK = "hearth.session_saves"  # a batch of sessions due now: what the heartbeat sends
BATCH = 50  # sessions per ``SAVES_TASK`` message
SAVE_SHARE = 0.5  # of HEARTH_API_REQUESTS_PER_MINUTE the live saves may use; the rest stays for keepalive
MIN_CLAIM_TTL = 60.0  # a claimed save not rescheduled by its task within this (or 4 periods) is claimed again
BUSY_RETRY = 2.0  # s until the next look when another harvest of the container was running

# KEYS: the due set. ARGV: horizon, limit (-1: all), claimed-until floor, claim ttl.
# Returns [sid, due, sid, due, ...]; each claimed member is pushed to max(due, floor) + ttl.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local floor = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
for i = 1, #due, 2 do
  redis.call('ZADD', KEYS[1], 'XX', math.max(tonumber(due[i + 1]), floor) + ttl, due[i])
end
return due
"""


def save_period(base: float, active: int, rpm: int, share: float = SAVE_SHARE) -> float:
    """The period a session's live save runs at: ``base``, stretched so that ``active`` sessions make
    at most ``share`` of ``rpm`` requests per minute (rpm 0: no limit). 0 stays 0 (saving is off)."""
    if base <= 0 or rpm <= 0 or active <= 0:
        return base
    return max(base, active * 60.0 / (rpm * share))


def claims_per_tick(rpm: int, interval: float, share: float = SAVE_SHARE) -> int:
    """Most saves one tick may claim under ``rpm`` (-1: no cap); at least one, so saving never stops."""
    if rpm <= 0:
        return -1
    return max(1, math.floor(rpm * share * interval / 60.0))


@dataclass(frozen=True)
class LiveSave:
    """What one live save did (the task's result)."""

    session_id: str
    active: bool  # the session still has a container of its own (and stays scheduled)
    new: int = 0  # files the listing showed that were not saved yet
    saved: int = 0
    failures: int = 0
    next_in: float | None = None  # s until the next live save of this session
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "active": self.active, "new": self.new, "saved": self.saved,
                "failures": self.failures, "next_in": self.next_in, "detail": self.detail}


class LiveSaves:
    """The live-save schedule and the save itself, over one :class:`Runtime`."""

    def __init__(self, runtime: Runtime, records: RecordStore | None = None, *,
                 tokens: TokenFactory | None = None) -> None:
        self.rt = runtime
        self.records = records or RecordStore(runtime)
        self.tokens = tokens
        self.due_key = runtime.store.key("sessions", "save-due")
        self.stretch_key = runtime.store.key("sessions", "save-stretched")

    def _cmd(self, fn: Any, *args: Any, **kw: Any) -> Any:
        return self.rt.store._cmd(fn, *args, **kw)

    # --- the schedule ------------------------------------------------------------------------------

    def base_period(self, pool: str) -> float:
        """The pool's ``lease.session_save_every_seconds``, else ``HEARTH_SESSION_SAVE_EVERY`` (0: off)."""
        try:
            own = self.rt.pool(pool).lease.session_save_every_seconds
        except ConfigError:
            own = None
        return float(own if own is not None else self.rt.settings.session_save_every)

    def active(self) -> int:
        """Sessions on the schedule (one ZCARD)."""
        return int(self._cmd(self.rt.redis.zcard, self.due_key))

    def period_steps(self, pool: str) -> Steps[float]:
        """The pool's period, stretched by the rate limit (a ZCARD only when a limit is set)."""
        rpm = self.rt.settings.api_requests_per_minute
        base = self.base_period(pool)
        active = int((yield Command("zcard", (self.due_key,)))) if rpm and base > 0 else 0
        return save_period(base, active, rpm)

    def schedule_steps(self, rec: SessionRecord, *, keep: bool = False) -> Steps[None]:
        """Put the session on the schedule, due one period from now; ``keep``: leave an existing entry."""
        period = yield from self.period_steps(rec.pool)
        if period <= 0:
            yield from self.unschedule_steps(rec.session_id)
            return
        yield Command("zadd", (self.due_key, {rec.session_id: self.rt.clock.now() + period}), {"nx": keep})

    def unschedule_steps(self, sid: str) -> Steps[None]:
        yield Command("zrem", (self.due_key, sid))

    def period(self, pool: str) -> float:
        return self.rt.leases.io.run(self.period_steps(pool))

    def schedule(self, rec: SessionRecord, *, keep: bool = False) -> None:
        self.rt.leases.io.run(self.schedule_steps(rec, keep=keep))

    def unschedule(self, sid: str) -> None:
        self.rt.leases.io.run(self.unschedule_steps(sid))

    def due_at(self, sid: str) -> float | None:
        score = self._cmd(self.rt.redis.zscore, self.due_key, sid)
        return None if score is None else float(score)

    def claim(self, horizon: float, *, limit: int = -1, claim_ttl: float = MIN_CLAIM_TTL) -> list[tuple[str, float]]:
        """Atomically take the sessions due before ``horizon`` (at most ``limit``): (hash, due time)."""
        raw = self._cmd(self.rt.redis.eval, _CLAIM, 1, self.due_key, repr(horizon), limit,
                        repr(self.rt.clock.now()), repr(claim_ttl))
        pairs = zip(raw[::2], raw[1::2], strict=True)
        return [(sid.decode() if isinstance(sid, bytes) else str(sid), float(due)) for sid, due in pairs]

    def enqueue_due(self, enqueue: Enqueue, *, interval: float | None = None) -> list[dict[str, Any]]:
        """The heartbeat's part: claim the sessions due now and enqueue one batch task per ``BATCH`` of them.

        ``interval``: seconds until the next call (the heartbeat's claim job, ``SAVE_CLAIM_SECONDS``;
        by default the tick interval): it bounds how late a save runs, and scales the claim cap."""
        settings = self.rt.settings
        interval = float(settings.heartbeat_interval if interval is None else interval)
        rpm = settings.api_requests_per_minute
        active = self.active()
        if not active:
            return []
        self._say_stretch(active, rpm)
        base = float(settings.session_save_every) or interval
        claimed = self.claim(self.rt.clock.now(), limit=claims_per_tick(rpm, interval),
                             claim_ttl=max(MIN_CLAIM_TTL, 4 * save_period(base, active, rpm)))
        for at in range(0, len(claimed), BATCH):
            chunk = claimed[at:at + BATCH]
            enqueue(SAVES_TASK, [[[sid, due] for sid, due in chunk]])
        return [{"kind": "session_save", "session_id": sid, "due": due} for sid, due in claimed]

    def _say_stretch(self, active: int, rpm: int) -> None:
        """One warning when the rate limit starts stretching the period (one note when it stops)."""
        base = float(self.rt.settings.session_save_every)
        period = save_period(base, active, rpm)
        if period > base > 0:
            if self._cmd(self.rt.redis.set, self.stretch_key, "1", nx=True):
                log_event(log, "session.saves_stretched", level=logging.WARNING, active=active,
                          period=round(period, 1), configured=base, requests_per_minute=rpm,
                          share=SAVE_SHARE)
        elif self._cmd(self.rt.redis.delete, self.stretch_key):
            log_event(log, "session.saves_unstretched", active=active, period=base)

    # --- the saves --------------------------------------------------------------------------------

    def save(self, sid: str) -> LiveSave:
        """One live save of the session with this hash (a batch of one; the next is a period from now)."""
        return self.save_batch([(sid, None)])[0]

    def save_batch(self, items: Sequence[tuple[str, float | None]]) -> list[LiveSave]:
        """The live saves of a batch of sessions, each ``(hash, due time or None)``, in order.

        Records, saved-state, duplicate guards and leases are read in two pipelined round trips; then
        one listing per session that needs one (a harvest only if it shows new files); then every
        reschedule, guard and removal in one pipeline (also when a save raised: the others keep
        their schedule, the one that raised is claimed again after the claim ttl). ``due``: the
        next save is one period after it, so the schedule keeps its cadence although a tick runs a
        save up to one interval after it is due (None, or a save late by over a period: one period
        from now)."""
        if not items:
            return []
        sids = [sid for sid, _ in items]
        rpm = self.rt.settings.api_requests_per_minute
        pipe = self.rt.redis.pipeline(transaction=False)
        for sid in sids:
            pipe.get(self.records.key(sid))
            pipe.get(self.records.key(sid, "saved"))
            pipe.get(self.records.key(sid, "listed"))
        if rpm:
            pipe.zcard(self.due_key)
        replies = self._cmd(pipe.execute)
        active = int(replies[-1]) if rpm else 0
        recs = [None if raw is None else SessionRecord.model_validate_json(raw) for raw in replies[0:3 * len(sids):3]]
        leased = self._leased(recs)
        periods: dict[str, float] = {}
        writes = _Writes()
        done: list[LiveSave] = []
        try:
            for i, (sid, due) in enumerate(items):
                rec = recs[i]
                if rec is not None and rec.pool not in periods:
                    periods[rec.pool] = save_period(self.base_period(rec.pool), active, rpm)
                saved_raw, listed_raw = replies[3 * i + 1], replies[3 * i + 2]
                done.append(self._one(sid, due, rec, leased[i], saved_raw, listed_raw,
                                      periods.get(rec.pool, 0.0) if rec is not None else 0.0, writes))
        finally:
            self._flush(writes)
        return done

    def _leased(self, recs: list[SessionRecord | None]) -> list[ContainerRecord | None]:
        """Each session's container record if it is still LEASED under the session's lease (one round trip)."""
        asked = [i for i, rec in enumerate(recs) if rec is not None and rec.current is not None and rec.name
                 and rec.lease_id is not None and not rec.ended]
        out: list[ContainerRecord | None] = [None] * len(recs)
        if not asked:
            return out
        pipe = self.rt.redis.pipeline(transaction=False)
        for i in asked:
            rec = recs[i]
            assert rec is not None and rec.name is not None
            pipe.hget(self.rt.store.pool_key(rec.pool, "records"), rec.name)
        for i, raw in zip(asked, self._cmd(pipe.execute), strict=True):
            rec = recs[i]
            assert rec is not None
            crec = None if raw is None else ContainerRecord.from_json(raw)
            if (crec is not None and crec.state is State.LEASED and crec.lease_id == rec.lease_id
                    and crec.container_id == rec.container_id):
                out[i] = crec
        return out

    def _one(self, sid: str, due: float | None, rec: SessionRecord | None, crec: ContainerRecord | None,
             saved_raw: bytes | None, listed_raw: bytes | None, period: float, writes: _Writes) -> LiveSave:
        """One session of a batch: at most one listing (and a harvest when it shows new files)."""
        if rec is None or rec.ended or rec.current is None:
            writes.unschedule.append(sid)
            return LiveSave(sid, active=False, detail="no current container (ended, unknown or between containers)")
        if crec is None:
            writes.unschedule.append(sid)
            return LiveSave(sid, active=False, detail="its container is no longer leased by the session")
        if rec.restoring:
            return self._again(writes, sid, period, LiveSave(sid, active=True, detail="a restore is running"),
                               due=due)
        here = rec.current
        listed = None if listed_raw is None else float(listed_raw)
        if listed is not None and self.rt.clock.now() - listed < period / 2:
            return self._again(writes, sid, period,
                               LiveSave(sid, active=True, detail="listed moments ago (a duplicate save)"), since=listed)
        state = SavedState.from_json(saved_raw).of(here.container_id)
        try:
            new = scan_new(self.rt.client, here.container_id, state.known)
        except (ContainerExpired, NotFound) as exc:
            # Lost while the session is open: say so on its record, so the next lease restores into a
            # fresh container at once instead of handing out a dead one until its next verify.
            writes.unschedule.append(sid)
            with contextlib.suppress(Conflict):
                self.rt.store.transition(crec.name, State.LEASED, State.EXPIRED, error=f"expired: {exc}"[:200])
            log_event(log, "session.container_lost", pool=rec.pool, session=sid, container_id=here.container_id)
            return LiveSave(sid, active=False, detail=f"container gone: {exc}")
        except HearthError as exc:
            # One session's failed listing must not cost the batch's others theirs: it looks again a
            # period later (the next save lists anyway), and says why.
            log_event(log, "session.live_save_failed", level=logging.WARNING, pool=rec.pool, session=sid,
                      container_id=here.container_id, error=str(exc)[:200])
            return self._again(writes, sid, period, LiveSave(sid, active=True, detail=f"listing failed: {exc}"[:200]))
        writes.listed[sid] = (self.rt.clock.now(), max(1, math.ceil(period)))
        if not new and not state.retry:
            return self._again(writes, sid, period, LiveSave(sid, active=True), due=due)
        try:
            report = save_current(self.rt, self.records, rec, tokens=self.tokens)
        except Busy:
            # Another harvest of this container is copying the same files right now: look again soon
            # (a real look: this listing must not count as a done save).
            writes.listed.pop(sid, None)
            return self._again(writes, sid, BUSY_RETRY,
                               LiveSave(sid, active=True, new=len(new), detail="another harvest was running"))
        if report is None:
            return self._again(writes, sid, period, LiveSave(sid, active=True, new=len(new), detail="nothing to save"),
                               due=due)
        if report.failures:
            log_event(log, "session.save_failed", level=logging.WARNING, pool=rec.pool, session=sid,
                      container_id=here.container_id, failures=report.failures,
                      errors="; ".join(report.errors)[:300])
        return self._again(writes, sid, period, LiveSave(
            sid, active=True, new=len(new), saved=report.files, failures=report.failures,
            detail="container expired while saving" if report.expired else ""), due=due)

    def _again(self, writes: _Writes, sid: str, wait: float, result: LiveSave, *, since: float | None = None,
               due: float | None = None) -> LiveSave:
        """Reschedule ``wait`` s on (only if still on the schedule: an end meanwhile took it off) and say when.

        ``since``: from then (the last listing); ``due``: from the due time, so the average period
        stays the configured one, unless that is past already (a backlog: from now, never a burst of
        saves that are all due at once)."""
        if wait <= 0:
            writes.unschedule.append(sid)
            return result
        now = self.rt.clock.now()
        if since is not None:
            at = since + wait
        elif due is not None and due + wait > now:
            at = due + wait
        else:
            at = now + wait
        writes.due[sid] = at
        return replace(result, next_in=round(at - now, 3))

    def _flush(self, writes: _Writes) -> None:
        """A batch's writes in one pipeline: removals, duplicate guards, then the reschedules (``XX``)."""
        if not (writes.unschedule or writes.listed or writes.due):
            return
        pipe = self.rt.redis.pipeline(transaction=False)
        if writes.unschedule:
            pipe.zrem(self.due_key, *writes.unschedule)
        for sid, (at, ttl) in writes.listed.items():
            pipe.set(self.records.key(sid, "listed"), repr(at), ex=ttl)
        off = set(writes.unschedule)
        due = {sid: at for sid, at in writes.due.items() if sid not in off}
        if due:
            pipe.zadd(self.due_key, due, xx=True)
        self._cmd(pipe.execute)


@dataclass
class _Writes:
    """What a batch of live saves writes back at its end, in one pipeline."""

    unschedule: list[str] = field(default_factory=list)
    listed: dict[str, tuple[float, int]] = field(default_factory=dict)  # hash -> (listed at, guard ttl s)
    due: dict[str, float] = field(default_factory=dict)  # hash -> next due time

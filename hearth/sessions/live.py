"""Live saving: while a session is active, its new files reach storage within one period, with no app call.

The schedule is one Redis sorted set (``<prefix>:sessions:save-due``): member the session's hash,
score when its next save is due. A session joins it when it binds a container and leaves it when
it ends or its container is no longer its own. Each heartbeat tick (``enqueue_due``, called from
``hearth.planner.tick``) reads only the members due before the next tick (``ZRANGEBYSCORE``: the
cost follows what is due, not how many sessions exist), claims them atomically and enqueues one
``hearth.session_live_save`` per session with the seconds left until it is due, so a save runs at
its due time even though ticks are ``HEARTH_HEARTBEAT_INTERVAL`` apart. The task (``save``) makes
one request: the container's files newest first, stopping at the newest one already saved
(``saving.scan_new``); only when that shows something new does it harvest. Then it puts the session
back in the set one period later. A claimed save whose task never reports back is claimed again
after ``claim_ttl`` (a lost message costs one period or so, never the session's saves). When the
workers fall behind by more than ``claim_ttl``, that second claim is a duplicate of a save still
queued: a save that finds the session listed less than half a period ago makes no request and
only puts it back on the schedule (``<prefix>:session:<hash>:listed``), so a backlog costs Redis
reads, not API requests (``bench/sessions.py`` showed the backlog).

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hearth.errors import Busy, ConfigError, Conflict, ContainerExpired, NotFound
from hearth.events import log_event
from hearth.files.lock import TokenFactory
from hearth.pool.effects import Command, Steps
from hearth.pool.model import State
from hearth.runtime import Runtime
from hearth.sessions.records import RecordStore, SessionRecord, still_ours
from hearth.sessions.saving import load_state, save_current, scan_new

log = logging.getLogger(__name__)

Enqueue = Callable[[str, list[Any]], None]

LIVE_SAVE_TASK = "hearth.session_live_save"
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

    def enqueue_due(self, enqueue: Enqueue) -> list[dict[str, Any]]:
        """The heartbeat's part: enqueue a live save for every session due before the next tick."""
        settings = self.rt.settings
        interval = float(settings.heartbeat_interval)
        rpm = settings.api_requests_per_minute
        active = self.active()
        if not active:
            return []
        self._say_stretch(active, rpm)
        now = self.rt.clock.now()
        base = float(settings.session_save_every) or interval
        claimed = self.claim(now + interval, limit=claims_per_tick(rpm, interval),
                             claim_ttl=max(MIN_CLAIM_TTL, 4 * save_period(base, active, rpm)))
        done: list[dict[str, Any]] = []
        for sid, due in claimed:
            delay = round(min(max(due - now, 0.0), interval), 3)
            enqueue(LIVE_SAVE_TASK, [sid, delay])
            done.append({"kind": "session_save", "session_id": sid, "in": delay})
        return done

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

    # --- one save ----------------------------------------------------------------------------------

    def save(self, sid: str) -> LiveSave:
        """One live save of the session with this hash: one listing, a harvest only if it shows new files."""
        rec = self.records.load(sid)
        if rec is None or rec.ended or rec.current is None:
            self.unschedule(sid)
            return LiveSave(sid, active=False, detail="no current container (ended, unknown or between containers)")
        crec = still_ours(self.rt, rec)
        if crec is None:
            self.unschedule(sid)
            return LiveSave(sid, active=False, detail="its container is no longer leased by the session")
        if rec.restoring:
            return self._again(rec, LiveSave(sid, active=True, detail="a restore is running"))
        here = rec.current
        listed = self._listed_at(sid)
        if listed is not None and self.rt.clock.now() - listed < self.period(rec.pool) / 2:
            return self._again(rec, LiveSave(sid, active=True, detail="listed moments ago (a duplicate save)"),
                               since=listed)
        state = load_state(self.records, sid).of(here.container_id)
        try:
            new = scan_new(self.rt.client, here.container_id, state.known)
        except (ContainerExpired, NotFound) as exc:
            # Lost while the session is open: say so on its record, so the next lease restores into a
            # fresh container at once instead of handing out a dead one until its next verify.
            self.unschedule(sid)
            with contextlib.suppress(Conflict):
                self.rt.store.transition(crec.name, State.LEASED, State.EXPIRED, error=f"expired: {exc}"[:200])
            log_event(log, "session.container_lost", pool=rec.pool, session=sid, container_id=here.container_id)
            return LiveSave(sid, active=False, detail=f"container gone: {exc}")
        self._cmd(self.rt.redis.set, self.records.key(sid, "listed"), repr(self.rt.clock.now()),
                  ex=max(1, math.ceil(self.period(rec.pool))))
        if not new and not state.retry:
            return self._again(rec, LiveSave(sid, active=True))
        try:
            report = save_current(self.rt, self.records, rec, tokens=self.tokens)
        except Busy:
            # Another harvest of this container is copying the same files right now: look again soon
            # (a real look: this listing must not count as a done save).
            self._cmd(self.rt.redis.delete, self.records.key(sid, "listed"))
            return self._again(rec, LiveSave(sid, active=True, new=len(new), detail="another harvest was running"),
                               period=BUSY_RETRY)
        if report is None:
            return self._again(rec, LiveSave(sid, active=True, new=len(new), detail="nothing to save"))
        if report.failures:
            log_event(log, "session.save_failed", level=logging.WARNING, pool=rec.pool, session=sid,
                      container_id=here.container_id, failures=report.failures,
                      errors="; ".join(report.errors)[:300])
        return self._again(rec, LiveSave(sid, active=True, new=len(new), saved=report.files,
                                         failures=report.failures,
                                         detail="container expired while saving" if report.expired else ""))

    def _listed_at(self, sid: str) -> float | None:
        raw = self._cmd(self.rt.redis.get, self.records.key(sid, "listed"))
        return None if raw is None else float(raw)

    def _again(self, rec: SessionRecord, result: LiveSave, *, period: float | None = None,
               since: float | None = None) -> LiveSave:
        """Reschedule (only if still on the schedule: an end meanwhile took it off) and say when.

        ``since``: the period counts from then (the last listing), not from now."""
        wait = self.period(rec.pool) if period is None else period
        if wait <= 0:
            self.unschedule(rec.session_id)
            return result
        now = self.rt.clock.now()
        due = (now if since is None else since) + wait
        self._cmd(self.rt.redis.zadd, self.due_key, {rec.session_id: due}, xx=True)
        return LiveSave(result.session_id, result.active, result.new, result.saved, result.failures,
                        round(due - now, 3), result.detail)

"""``hearth heartbeat``: the APScheduler process that reconciles every pool on a fixed interval.

Any number of replicas may run; one leads (a Redis lease, ``hearth.pool.leader``) and the others
stand by, taking over within one lease period if the leader dies. Each tick: keep the leader lease,
list the remote containers now and then (for orphans; listing touches nothing), plan and apply
(``hearth.planner.tick``), write the health key, report a Sentry cron check-in. It decides;
Celery workers do the API work. Between ticks the leader watches the pools file: an edit is a fill
request (``hearth.pool.wanted``) served by a worker at once, not at the next interval.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from types import FrameType
from typing import Any

from apscheduler.schedulers.blocking import BlockingScheduler
from celery import Celery

from hearth.errors import HearthError
from hearth.events import log_event
from hearth.planner import Planner, tick
from hearth.pool.leader import LeaderLease
from hearth.pool.reconcile import RemoteContainer
from hearth.pool.wanted import TASK, FillRequests
from hearth.runtime import Runtime
from hearth.sessions.live import LiveSaves
from settings import Settings
from worker.observability import monitored_tick, setup_observability

log = logging.getLogger(__name__)

ORPHAN_SCAN_EVERY = 6  # ticks between remote listings (orphans, lost containers)
STAGED_GC_EVERY = 300.0  # s between collections of staged inputs no pool uses (the grace is HEARTH_STAGED_GRACE)
WATCH_SECONDS = 0.5  # how often the leader looks at the pools file: an edit starts its fill this soon
SAVE_CLAIM_SECONDS = 1.0  # how often the leader claims the live session saves due: a save runs this late at most


class Heartbeat:
    """One replica. ``tick()`` is what APScheduler calls; it acts only while leading."""

    def __init__(self, runtime: Runtime, celery_app: Celery, *, identity: str | None = None) -> None:
        self.rt = runtime
        self.celery = celery_app
        settings = runtime.settings
        self.identity = identity or f"{socket.gethostname()}:{os.getpid()}"
        self.leader = LeaderLease(
            runtime.redis, runtime.clock, "heartbeat", settings.heartbeat_leader_ttl, self.identity,
            prefix=settings.key_prefix,
        )
        self.ticks = 0
        self._pools_stamp: tuple[int, int, int] | None = self._stamp()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.rt.settings.resolved_pools)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def watch(self) -> None:
        """An edited pools file is a fill request for its pools now, not at the next tick (leader only)."""
        stamp = self._stamp()
        if stamp == self._pools_stamp:
            return
        self._pools_stamp = stamp
        if stamp is None or not self.leader.is_leader:
            return
        try:
            names = list(self.rt.pools().pools)
            for name in FillRequests(self.rt.store).ask(names):
                self.enqueue(TASK, [name])
        except HearthError as exc:
            log.warning("heartbeat: pools file changed, fill not requested: %s", exc)
            return
        log_event(log, "pools.changed", pools=",".join(names))

    def enqueue(self, name: str, args: list[Any]) -> None:
        self.celery.send_task(name, args=args)

    def tick(self) -> None:
        settings = self.rt.settings
        try:
            leading = self.leader.ensure()
        except HearthError as exc:
            log.warning("heartbeat: leader lease unavailable: %s", exc)
            return
        self.rt.store.beat(f"heartbeat:{self.identity}", settings.heartbeat_interval * 3, leader=leading)
        if not leading:
            return
        started = self.rt.clock.now()
        try:
            self._lead(started)
        except Exception:
            self.rt.observer.tick(self.rt.clock.now() - started, False)
            log.exception("heartbeat: tick failed")

    def _lead(self, started: float) -> None:
        settings = self.rt.settings
        with monitored_tick(interval_seconds=settings.heartbeat_interval):
            remote: list[RemoteContainer] | None = None
            if self.ticks % ORPHAN_SCAN_EVERY == 0:
                try:
                    remote = Planner(self.rt).remote()
                except HearthError as exc:
                    log.warning("heartbeat: listing containers failed, reconciling from records: %s", exc)
            self.ticks += 1
            applied = tick(self.rt, self.enqueue, remote=remote, still_leader=lambda: self.leader.is_leader,
                           session_saves=False)  # claim_saves does them, every SAVE_CLAIM_SECONDS
            self.rt.store.beat("heartbeat", settings.heartbeat_interval * 3, identity=self.identity,
                               applied=len(applied or []))
            self.rt.observer.tick(self.rt.clock.now() - started, True)
            for name, counts in self.rt.store.all_counts().items():
                self.rt.observer.containers(name, {s.value.lower(): n for s, n in counts.items()})
                self.rt.observer.breaker(name, self.rt.store.breaker_state(name).is_open)
            if applied:
                log_event(log, "heartbeat.tick", actions=len(applied),
                          kinds=",".join(sorted({a["kind"] for a in applied})))

    def claim_saves(self) -> None:
        """Enqueue the live session saves due now (leader only), so a save waits for this job, not a tick."""
        try:
            if self.leader.is_leader:
                LiveSaves(self.rt).enqueue_due(self.enqueue, interval=SAVE_CLAIM_SECONDS)
        except HearthError as exc:
            log.warning("heartbeat: session saves not scheduled: %s", exc)
        except Exception:
            log.exception("heartbeat: session saves not scheduled")

    def collect_staged(self) -> None:
        """Have a worker delete staged inputs no pool uses any more (after the grace); leader only."""
        try:
            if self.leader.is_leader:
                self.enqueue("hearth.gc_staged", [])
        except Exception:
            log.exception("heartbeat: staged-inputs collection not scheduled")

    def stop(self) -> None:
        try:
            self.leader.release()
        except HearthError as exc:
            log.warning("heartbeat: could not step down: %s", exc)


def run_heartbeat(settings: Settings | None = None, *, stop_event: threading.Event | None = None) -> None:
    """Run the heartbeat until SIGTERM/SIGINT (or ``stop_event``)."""
    from tasks.app import create_app

    settings = settings or Settings()
    obs = setup_observability(settings, component="heartbeat")
    runtime = Runtime.from_settings(settings, observer=obs.observer, publish_pools=True)
    beat = Heartbeat(runtime, create_app(settings))
    scheduler = BlockingScheduler(timezone="UTC")
    scheduler.add_job(beat.tick, "interval", seconds=settings.heartbeat_interval, id="tick",
                      max_instances=1, coalesce=True, next_run_time=_now_utc())
    scheduler.add_job(beat.collect_staged, "interval", seconds=STAGED_GC_EVERY, id="staged_gc",
                      max_instances=1, coalesce=True)
    scheduler.add_job(beat.watch, "interval", seconds=WATCH_SECONDS, id="watch", max_instances=1, coalesce=True)
    scheduler.add_job(beat.claim_saves, "interval", seconds=SAVE_CLAIM_SECONDS, id="saves", max_instances=1,
                      coalesce=True)

    def _stop(signum: int, frame: FrameType | None) -> None:
        log.info("heartbeat: signal %d, stopping", signum)
        scheduler.shutdown(wait=False)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    if stop_event is not None:
        threading.Thread(target=lambda: (stop_event.wait(), scheduler.shutdown(wait=False)), daemon=True).start()
    log_event(log, "heartbeat.started", identity=beat.identity, interval=settings.heartbeat_interval)
    try:
        scheduler.start()
    finally:
        beat.stop()
        runtime.close()
        obs.close()


def _now_utc() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)

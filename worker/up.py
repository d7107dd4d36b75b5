"""``hearth up``: everything Hearth needs, in one supervisor process, on embedded defaults.

A new user runs one command and sees pools fill. The supervisor starts what is not configured —
an embedded ``redis-server`` (unless ``HEARTH_REDIS_URL``) and the local Containers API in a thread
(unless an API backend is configured) — then a ``hearth worker`` and a ``hearth heartbeat`` as child
processes pointed at them, writes ``<data_dir>/up.json`` so every other ``hearth`` command with the
same settings finds them, and shows a live status (per pool: sizes, the burn rate in $/h and why a
paused pool is paused) until Ctrl-C or SIGTERM.

Children run in their own process groups (a terminal's Ctrl-C reaches only the supervisor, which
then stops them in order) and their output goes to ``<data_dir>/logs/<name>.log`` so it does not
tear the live display. Stopping: SIGTERM to each child's group, SIGKILL after ``stop_timeout``,
then the local API and Redis; ``up.json`` is removed.

If the supervisor itself is killed (``kill -9``), nothing is left running for long: every child
runs under ``python -m worker.up GUARD`` (see ``guarded_main``), which on Linux asks the kernel for
SIGTERM when the supervisor dies (``prctl(PR_SET_PDEATHSIG)``) and everywhere polls ``os.getppid()``,
stopping itself with SIGTERM and, if it has not exited after the stop timeout, SIGKILL of its whole
group. The embedded redis-server gets the same parent-death signal.

A child that dies on its own is restarted, as a process manager would: losing the worker to one
crash (a kill, an out-of-memory, a Redis that went away) must not stop every pool. The supervisor
says which one died, with the tail of its log, and starts it again after a backoff that doubles per
crash in a row (``RESTART_MIN`` .. ``RESTART_MAX`` s) and starts over once a child has run for
``HEALTHY_AFTER`` s; the restarts are counted in the live view and the plain status lines, so a
crash loop is visible, not hidden. Ctrl-C and SIGTERM still stop everything.

The events feed is driven by the record transitions themselves (``hearth.pool.feed``: every state
change is appended to a capped Redis stream by the script that makes it), not by diffing two
samples, so a lease taken and released between two refreshes still shows ``READY -> LEASED``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import redis
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from hearth.clock import SystemClock
from hearth.errors import HearthError
from hearth.localapi import DataDirInUse, LocalAPIServer
from hearth.planner import Planner, PoolPlan
from hearth.pool.feed import StateFeed
from hearth.pool.metering import burn_rate
from hearth.pool.model import ContainerRecord, State
from hearth.pool.store import PoolStore
from hearth.runtime import Runtime
from settings import PoolsFileError, Settings, load_pools
from settings.config import Backend
from settings.discovery import UpInfo, clear_up, read_up
from settings.pools import PoolSpec
from worker.redis_server import RedisServer, RedisServerError, set_parent_death_signal

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
GUARD = "guard"  # ``python -m worker.up guard <parent pid> <stop timeout> <hearth args…>``
GUARD_POLL = 0.5  # seconds between a guarded child's looks at its parent
PLAIN_EVERY = 5.0  # seconds between status lines when stdout is not a terminal
EVENTS_KEPT = 12
RESTART_MIN, RESTART_MAX = 1.0, 30.0  # seconds before a crashed child starts again: doubles per crash in a row
HEALTHY_AFTER = 60.0  # a child that ran this long before it died starts over at RESTART_MIN


class UpError(HearthError):
    """``hearth up`` cannot start (another one runs here, a part did not come up)."""


@dataclass
class Child:
    """One ``hearth <command>`` child process, in a process group of its own."""

    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    restarts: int = 0  # how often it was started again after it died
    started_at: float = 0.0  # time.monotonic() of the last start
    restart_at: float | None = None  # set while a dead child waits out its backoff
    backoff: float = RESTART_MIN  # the wait before the next restart
    _log: Any = None

    def start(self, env: dict[str, str]) -> None:
        self.close()
        self.env = env
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started_at = time.monotonic()

    def describe(self, now: float) -> str:
        if self.restart_at is not None:
            state = f"restarting in {max(0.0, self.restart_at - now):.0f} s"
        else:
            state = f"pid {self.pid}"
        return f"{self.name} {state} restarts {self.restarts}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def exit_code(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def signal_group(self, sig: signal.Signals) -> None:
        # The group outlives its leader when the leader forked (prefork pools): signal it regardless.
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class PoolRow:
    pool: str
    desired: int
    ready: int
    leased: int
    provisioning: int
    expiring: int
    breaker: str
    next_change: str | None
    # Dollars per hour the pool's live containers cost now (hearth.pool.metering.burn_rate);
    # None when the pool has no spec to price it by (one removed from the pools file).
    burn_usd_per_hour: float | None = None
    # Why the breaker is not closed, and whether it waits for a change of the pools file or the
    # environment instead of a cool-down (hearth.planner.PoolPlan.breaker_permanent).
    breaker_reason: str | None = None
    breaker_permanent: bool = False

    def breaker_text(self) -> str:
        """The breaker as a person reads it, as ``hearth status`` words it."""
        if self.breaker == "closed" or not self.breaker_reason:
            return self.breaker
        until = " until the pools file or the environment changes" if self.breaker_permanent else ""
        return f"{self.breaker}{until}: {self.breaker_reason}"

    def burn_text(self) -> str:
        return "-" if self.burn_usd_per_hour is None else f"{self.burn_usd_per_hour:.3f}"


@dataclass
class Snapshot:
    rows: list[PoolRow] = field(default_factory=list)
    heartbeat: bool = False
    error: str | None = None


def snapshot(rt: Runtime) -> Snapshot:
    """Per-pool counts from the planner (the events come from ``StateFeed``, not from here)."""
    now = rt.clock.now()
    specs = rt.pools().pools
    snap = Snapshot(heartbeat=rt.store.health("heartbeat") is not None)
    for plan in Planner(rt).plan(now):
        records = rt.store.records(plan.pool)
        spec = specs.get(plan.pool)
        margin = float(spec.keepalive.margin_seconds) if spec else 0.0
        expiring = sum(
            1 for r in records
            if r.state in (State.READY, State.LEASED) and r.deadline is not None and r.deadline - now <= margin
        )
        snap.rows.append(PoolRow(
            pool=plan.pool, desired=plan.desired_ready, ready=plan.counts.get("ready", 0),
            leased=plan.counts.get("leased", 0),
            provisioning=plan.counts.get("creating", 0) + plan.counts.get("seeding", 0),
            expiring=expiring, breaker=plan.breaker, next_change=plan.next_schedule_change,
            burn_usd_per_hour=_burn(rt, plan, spec, records), breaker_reason=plan.breaker_reason,
            breaker_permanent=plan.breaker_permanent,
        ))
    return snap


def _burn(rt: Runtime, plan: PoolPlan, spec: PoolSpec | None, records: list[ContainerRecord]) -> float | None:
    """The pool's burn rate: the planner's (it priced the pool to size it), else the records' own."""
    if plan.sizing is not None:
        return plan.sizing.spend.burn_usd_per_hour
    if spec is None:
        return None
    try:
        return burn_rate(records, rt.costs.prices.tier(spec.container.memory_limit))
    except KeyError:  # a tier without a price: say nothing rather than a wrong number
        return None


class Supervisor:
    """Starts the parts, shows the status, stops everything. ``run()`` returns the exit code."""

    def __init__(
        self,
        settings: Settings,
        *,
        console: Console | None = None,
        stop_timeout: float = 20.0,
        refresh: float = 1.0,
    ) -> None:
        self.settings = settings
        self.console = console or Console()
        self.stop_timeout = stop_timeout
        self.refresh = refresh
        self.data_dir = settings.data_dir.resolve()
        self.pools_path = Path(settings.pools).resolve()
        self.redis: RedisServer | None = None
        self.api: LocalAPIServer | None = None
        self.redis_url: str | None = None
        self.api_base: str | None = None
        self.children: list[Child] = []
        self.stopping = threading.Event()
        self.events: deque[str] = deque(maxlen=EVENTS_KEPT)
        self.feed: StateFeed | None = None
        self.feed_from: str | None = None  # the transition stream's end before any child started
        self._wrote_up = False

    # --- start ---------------------------------------------------------------------------------

    def _say(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)

    def start(self) -> None:
        running = read_up(self.data_dir)
        if running is not None and running.pid != os.getpid():
            raise UpError(f"`hearth up` already runs in {self.data_dir} (pid {running.pid})")
        if not self.pools_path.exists():
            raise UpError(f"no pools file at {self.pools_path} (use --pools FILE or HEARTH_POOLS)")
        try:
            load_pools(self.pools_path)  # fail now, not in every child and every refresh
        except PoolsFileError as exc:
            raise UpError(str(exc)) from None
        self._start_redis()
        self.feed_from = self._feed_start()
        self._start_api()
        UpInfo(pid=os.getpid(), redis_url=self.redis_url, api_base=self.api_base,
               pools=str(self.pools_path)).write(self.data_dir)
        self._wrote_up = True
        env = self.child_env()
        logs = self.data_dir / "logs"
        hearth = guarded_argv(os.getpid(), self.stop_timeout)
        self.children = [
            Child("worker", [*hearth, "worker", "--pool", "threads"], logs / "worker.log"),
            Child("heartbeat", [*hearth, "heartbeat"], logs / "heartbeat.log"),
        ]
        port = self.settings.metrics_port
        for i, child in enumerate(self.children):
            # Each process serves its own metrics: the worker on HEARTH_METRICS_PORT, the heartbeat on the next.
            child.start(env if port is None else {**env, "HEARTH_METRICS_PORT": str(port + i)})
            self._say(f"{child.name}: pid {child.pid}, log {child.log_path}")
        self._say(f"pools file {self.pools_path}; Ctrl-C stops everything")

    def _start_redis(self) -> None:
        if self.settings.redis_url:
            self.redis_url = self.settings.redis_url
            self._say("Redis: HEARTH_REDIS_URL (not starting an embedded one)")
            return
        # SIGTERM (a clean save and exit) if the supervisor dies without stopping it.
        self.redis = RedisServer(self.data_dir / "redis", parent_death_signal=signal.SIGTERM).start()
        self.redis_url = self.redis.url
        self._say(f"Redis: embedded at {self.redis_url} (pid {self.redis.process.pid if self.redis.process else '?'}, "
                  f"data in {self.redis.data_dir})")

    def _feed_start(self) -> str | None:
        """Where the events feed starts: after what a configured Redis already holds, before what the
        children are about to do. None when Redis does not answer yet (the view starts at its first look)."""
        client = redis.Redis.from_url(str(self.redis_url), socket_connect_timeout=2, socket_timeout=2)
        try:
            return StateFeed(PoolStore(client, SystemClock(), prefix=self.settings.key_prefix)).last_id
        except HearthError:
            return None
        finally:
            client.close()

    def _start_api(self) -> None:
        s = self.settings
        if s.backend is not Backend.local or s.api_base:
            try:
                self.api_base = s.api_base.rstrip("/") if s.api_base else s.resolved_api_base
            except ValueError as exc:
                raise UpError(str(exc)) from None
            self._say(f"API: {self.api_base} ({s.backend.value}; not starting the local API)")
            return
        keys = (s.api_key.get_secret_value(),) if s.api_key else ()
        api_dir = self.data_dir / "localapi"
        try:
            try:
                self.api = LocalAPIServer(api_dir, host=s.local_host, port=s.local_port, api_keys=keys, dev=True,
                                          faults=s.faults).start()
            except DataDirInUse:
                raise
            except HearthError as exc:
                if s.local_port == 0:
                    raise
                # The busy port failed before the data dir was touched, so the same dir is safe here.
                self.api = LocalAPIServer(api_dir, host=s.local_host, port=0, api_keys=keys, dev=True,
                                          faults=s.faults).start()
                self._say(f"port {s.local_port} is busy ({exc}); the local API uses port {self.api.port} instead")
        except DataDirInUse as exc:
            # Another `hearth up` (or `hearth api`) serves this data dir: sharing it would corrupt both.
            raise UpError(f"{exc}; stop it or use another HEARTH_DATA_DIR") from None
        self.api_base = self.api.base_url
        self._say(f"API: local at {self.api_base} (dev controls on{', API key required' if keys else ''})")

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "HEARTH_DATA_DIR": str(self.data_dir),
            "HEARTH_POOLS": str(self.pools_path),
            "PYTHONUNBUFFERED": "1",
        })
        if self.redis_url:
            env["HEARTH_REDIS_URL"] = self.redis_url
        if self.api_base:
            env["HEARTH_API_BASE"] = self.api_base
        return env

    # --- watch ---------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        def _stop(signum: int, frame: FrameType | None) -> None:
            self.stopping.set()

        # SIGHUP too: a closed terminal must not orphan children that live in their own sessions.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _stop)

    def supervise(self, now: float | None = None) -> list[str]:
        """Notice children that died and start them again once their backoff is over.

        Returns what happened (also kept in ``self.events``)."""
        now = time.monotonic() if now is None else now
        said: list[str] = []
        for child in self.children:
            if child.restart_at is None:
                code = child.exit_code()
                if code is None:
                    continue
                child.signal_group(signal.SIGKILL)  # whatever it left in its group (prefork children)
                child.close()
                ran = now - child.started_at
                if ran >= HEALTHY_AFTER:
                    child.backoff = RESTART_MIN
                delay, child.backoff = child.backoff, min(child.backoff * 2, RESTART_MAX)
                child.restart_at = now + delay
                said.append(f"{child.name} (pid {child.pid}) exited with code {code} after {ran:.0f} s; "
                            f"restart {child.restarts + 1} in {delay:.0f} s")
                self._say(f"[red]{said[-1]}.[/] Last lines of {child.log_path}:")
                self.console.print(Text(child.tail()))
            elif now >= child.restart_at and not self.stopping.is_set():
                child.restart_at = None
                child.restarts += 1
                child.start(child.env)
                said.append(f"{child.name} restarted: pid {child.pid}, restart {child.restarts}")
        stamp = datetime.now().strftime("%H:%M:%S")
        new = [f"{stamp} {line}" for line in said]
        self.events.extend(new)
        return new

    def children_line(self, now: float | None = None) -> str:
        """``worker pid 12 restarts 0, heartbeat restarting in 3 s restarts 2``: for both views."""
        now = time.monotonic() if now is None else now
        return ", ".join(c.describe(now) for c in self.children)

    def observe(self, rt: Runtime) -> tuple[Snapshot, list[str]]:
        """A fresh snapshot and every record transition since the last look (also kept in ``self.events``)."""
        try:
            if self.feed is None:
                self.feed = StateFeed(rt.store, last_id=self.feed_from)
            events = self.feed.read()
            snap = snapshot(rt)
        except HearthError as exc:
            return Snapshot(error=str(exc)), []
        # Redis's time of each change, as wall time for people reading the feed.
        new = [f"{datetime.fromtimestamp(e.at).strftime('%H:%M:%S')} {e.describe()}" for e in events]
        if self.feed.missed:
            new.append("(older events were trimmed from the stream before they were shown)")
            self.feed.missed = False
        self.events.extend(new)
        return snap, new

    def step(self, rt: Runtime) -> tuple[Snapshot, list[str]]:
        """One refresh: restart what died, then look."""
        restarted = self.supervise()
        snap, seen = self.observe(rt)
        return snap, restarted + seen

    def render(self, snap: Snapshot) -> Group:
        table = Table("pool", "desired", "ready", "leased", "provisioning", "expiring", "breaker", "$/h",
                      "next change",
                      title=f"Hearth: API {self.api_base}  Redis {self.redis_url}  heartbeat "
                            f"{'alive' if snap.heartbeat else 'starting'}")
        for r in snap.rows:
            table.add_row(r.pool, str(r.desired), str(r.ready), str(r.leased), str(r.provisioning),
                          str(r.expiring), r.breaker, r.burn_text(), r.next_change or "-")
        parts: list[Any] = [table]
        # The reasons below the table, as `hearth status` prints them: too long for a cell.
        parts.extend(Text(f"{r.pool}: breaker {r.breaker_text()}", style="red")
                     for r in snap.rows if r.breaker != "closed" and r.breaker_reason)
        if self.children:
            parts.append(Text(f"processes: {self.children_line()}"))
        if snap.error:
            parts.append(Text(f"status unavailable: {snap.error}", style="red"))
        parts.append(Text("recent events:" if self.events else "recent events: none yet", style="bold"))
        parts.extend(Text(e) for e in self.events)
        return Group(*parts)

    @staticmethod
    def plain_line(snap: Snapshot, processes: str = "") -> str:
        tail = f"; processes: {processes}" if processes else ""
        if snap.error:
            return f"status unavailable: {snap.error}{tail}"
        pools = "; ".join(
            f"{r.pool} desired {r.desired} ready {r.ready} leased {r.leased} provisioning {r.provisioning} "
            f"expiring {r.expiring} $/h {r.burn_text()} breaker {escape(r.breaker_text())}" for r in snap.rows
        )
        return f"status: {pools or 'no pools'}; heartbeat {'alive' if snap.heartbeat else 'starting'}{tail}"

    def watch(self) -> int:
        """Refresh the status, restarting children that die, until asked to stop (0)."""
        settings = self.settings.model_copy(
            update={"redis_url": self.redis_url, "api_base": self.api_base, "pools": self.pools_path,
                    "data_dir": self.data_dir}
        )
        rt = Runtime.from_settings(settings)
        snap = Snapshot()
        try:
            if self.console.is_terminal:
                with Live(self.render(snap), console=self.console, auto_refresh=False) as live:
                    while not self.stopping.is_set():
                        snap, _ = self.step(rt)
                        live.update(self.render(snap), refresh=True)
                        self.stopping.wait(self.refresh)
            else:
                waited = PLAIN_EVERY
                while not self.stopping.is_set():
                    snap, new = self.step(rt)
                    for line in new:
                        self._say(f"event {line}")
                    if waited >= PLAIN_EVERY:
                        self._say(self.plain_line(snap, self.children_line()))
                        waited = 0.0
                    self.stopping.wait(self.refresh)
                    waited += self.refresh
        finally:
            rt.close()
        return EXIT_OK

    # --- stop ----------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Children first (SIGTERM, then SIGKILL), then the API and Redis; remove up.json."""
        live = [c for c in self.children if c.proc is not None]
        for child in live:
            child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout  # one budget for all, not one per child
        for child in live:
            assert child.proc is not None
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._say(f"{child.name} did not stop in {self.stop_timeout:.0f} s: killing it")
            child.signal_group(signal.SIGKILL)  # also whatever it left in its group
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(10)
            child.close()
        if self.api is not None:
            self.api.stop()
            self.api = None
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        if self._wrote_up:
            clear_up(self.data_dir, os.getpid())
            self._wrote_up = False

    def run(self) -> int:
        self._install_signals()
        try:
            try:
                self.start()
            except (HearthError, RedisServerError) as exc:
                self.console.print(f"[red]hearth up:[/] {exc}", highlight=False)
                return EXIT_CONFIG if isinstance(exc, UpError) else EXIT_FAILED
            code = self.watch()
            self._say("stopping…")
            return code
        finally:
            self.shutdown()
            self._say("stopped")


# --- children that do not outlive the supervisor ------------------------------------------------


def guarded_argv(parent: int, stop_timeout: float) -> list[str]:
    """The command prefix of a ``hearth`` child that stops when ``parent`` dies."""
    return [sys.executable, "-m", "worker.up", GUARD, str(parent), repr(stop_timeout)]


def guard_parent(parent: int, grace: float, *, poll: float = GUARD_POLL) -> bool:
    """Stop this process when ``parent`` dies: SIGTERM (its handlers stop it cleanly), then after
    ``grace`` seconds SIGKILL to its process group. Returns False if ``parent`` is already gone."""
    armed = set_parent_death_signal(signal.SIGTERM)  # immediate on Linux; the thread below covers the rest
    if os.getppid() != parent:
        return False

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        if not armed:
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        # Still here: a stuck shutdown. Take anything this process started (its own group) with it.
        with contextlib.suppress(OSError):
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os._exit(EXIT_FAILED)

    threading.Thread(target=watch, name="hearth-parent-guard", daemon=True).start()
    return True


def guarded_main(argv: list[str]) -> int | None:
    """``python -m worker.up guard PARENT STOP_TIMEOUT ARGS…``: guard, then run ``hearth ARGS…``."""
    if len(argv) < 3 or argv[0] != GUARD:
        print("usage: python -m worker.up guard PARENT_PID STOP_TIMEOUT HEARTH_ARGS...", file=sys.stderr)
        return EXIT_CONFIG
    if not guard_parent(int(argv[1]), float(argv[2])):
        print(f"hearth up (pid {argv[1]}) is gone: not starting", file=sys.stderr)
        return EXIT_FAILED
    from worker.cli import main

    sys.argv = ["hearth", *argv[3:]]
    main()
    return None


__all__ = [
    "Child", "PoolRow", "Snapshot", "Supervisor", "UpError", "guard_parent", "guarded_argv", "guarded_main",
    "snapshot",
]

if __name__ == "__main__":
    sys.exit(guarded_main(sys.argv[1:]))

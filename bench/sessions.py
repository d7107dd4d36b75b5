"""Benchmark: what live session saving costs at 1,000 active sessions, in API requests and CPU.

While a session is active, the heartbeat schedules one live save per session per period
(``HEARTH_SESSION_SAVE_EVERY``, 15 s by default), one Celery message per batch of up to 50 sessions
due (``hearth.session_saves``), and a worker makes one request per session of it (the container's
files, newest first). The documented rate is ``active sessions / period``: 1,000 at
15 s = 66.7/s = 4,000 requests per minute. This script measures it, in one run, in three phases
over the same pool of ``--sessions`` containers:

* **baseline**: the pool full (every container READY), 0 sessions. The heartbeat
  (``hearth.planner.tick`` every ``HEARTH_HEARTBEAT_INTERVAL``, driven by this process) and the
  worker do what they always do.
* **sessions**: ``--sessions`` sessions leased by the real path (``Sessions.lease`` with 1,000
  keys: each takes a READY container, writes its session record and joins the live-save
  schedule); ``--new-files`` files written by "the model's code" (uploads with
  ``X-Hearth-File-Source: assistant``) into as many session containers when the window opens,
  which the live saves must copy.
* **limited**: the worker and the heartbeat restarted with ``HEARTH_API_REQUESTS_PER_MINUTE`` set
  below the natural rate (``--limit``, default 3,000/min < 4,000/min): the period stretches to
  ``active * 60 / (limit * 0.5)`` (live saves take at most half the limit), with a warning.

Counted at the local API: ``hearth api``'s app runs in a child process of this script (``--serve-api``
mode below) whose fault injector, asked about every request, counts them per endpoint and writes the
counts to a file twice a second; requests per minute are count deltas over the server's own
timestamps. CPU: the heartbeat's (thread CPU time of this process's ``tick`` calls: the
scheduling loop) and the worker's (``hearth worker``, a threads pool, user + system time of its
process tree: the save tasks, with Celery's own overhead), as CPU seconds per minute of wall time,
added over the baseline measured in the same run. Never fails CI.

Run: ``.venv/bin/python bench/sessions.py [--sessions 1000] [--window 60] [--limit 3000]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from hearth.files.manifest import MANIFEST_KEY, Manifest
from hearth.files.storage import StorageTarget
from hearth.localapi.faults import Decision, FaultInjector
from hearth.planner import tick
from hearth.pool.model import State
from hearth.runtime import Runtime
from hearth.sessions import LIVE_SAVE_TASK, SAVES_TASK, LiveSaves, Sessions
from hearth.sessions.live import SAVE_SHARE, claims_per_tick, save_period
from settings import Settings
from settings.faults import FaultConfig
from tasks.app import SAVES_QUEUE, broker_key_prefix, create_app
from worker.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[1]
SAVES = "live saves"  # the sessions the heartbeat's messages carry (a batch message carries many)

POOL = "bench"
POOLS = """
version: 1
pools:
  {pool}:
    min_ready: {n}
    buffer: 0
    max_total: {n}
    container: {{expires_after_minutes: 60}}
    lease: {{session_idle_seconds: 7200, wait_seconds: 60}}
"""


# --- the counting local API (a child process) ---------------------------------------------------


class CountingInjector(FaultInjector):
    """A fault injector that also counts every request per endpoint (it is asked about each one)."""

    def __init__(self, config: FaultConfig | None = None) -> None:
        super().__init__(config)
        self.counts: Counter[str] = Counter()
        self._count_lock = threading.Lock()

    @property
    def active(self) -> bool:
        return True  # so the middleware asks about every request, faults configured or not

    def decide(self, name: str) -> Decision:
        with self._count_lock:
            self.counts[name] += 1
        return super().decide(name)

    def snapshot(self) -> dict[str, int]:
        with self._count_lock:
            return dict(self.counts)


def serve_api(data_dir: Path, port_file: Path, counts_file: Path, faults: str) -> None:
    """``--serve-api``: the local API with counting, until SIGTERM; counts to ``counts_file`` every 0.5 s."""
    from hearth.localapi import LocalAPIServer

    server = LocalAPIServer(data_dir, dev=True, faults=FaultConfig.model_validate_json(faults))
    injector = CountingInjector(server.injector.config)
    server.injector = injector
    server.start()
    port_file.write_text(str(server.port))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    tmp = counts_file.with_suffix(".tmp")
    while not stop.wait(0.5):
        tmp.write_text(json.dumps({"t": time.time(), "counts": injector.snapshot()}))
        os.replace(tmp, counts_file)
    server.stop()


@dataclass
class CountingAPI:
    proc: subprocess.Popen[bytes]
    base: str
    counts_file: Path

    def read(self) -> tuple[float, Counter[str]]:
        """The server's latest (timestamp, counts per endpoint)."""
        data = json.loads(self.counts_file.read_text())
        return float(data["t"]), Counter(data["counts"])

    def fresh(self) -> tuple[float, Counter[str]]:
        """Counts written after this call began (the writer's period is 0.5 s)."""
        start = time.time()
        while True:
            t, counts = self.read()
            if t > start:
                return t, counts
            time.sleep(0.1)


@contextmanager
def counting_api(root: Path, faults: dict[str, Any]) -> Iterator[CountingAPI]:
    port_file, counts_file = root / "api.port", root / "api.counts"
    log = (root / "api.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve-api", str(root / "api-data"), str(port_file),
         str(counts_file), json.dumps(faults)],
        cwd=REPO, env=clean_env({}), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not counts_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"local API did not start: {(root / 'api.log').read_text()[-2000:]}")
            time.sleep(0.1)
        base = f"http://127.0.0.1:{port_file.read_text().strip()}/v1"
        yield CountingAPI(proc, base, counts_file)
    finally:
        stop(proc)
        log.close()


# --- processes ----------------------------------------------------------------------------------


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEARTH_", "OPENAI_", "SENTRY_"))}
    env.update(extra)
    return env


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def cpu_of(proc: subprocess.Popen[bytes]) -> float:
    """User + system CPU seconds of a process and its children (alive ones)."""
    try:
        root = psutil.Process(proc.pid)
        total = 0.0
        for p in [root, *root.children(recursive=True)]:
            with_children = p.cpu_times()
            total += with_children.user + with_children.system
        return total
    except psutil.NoSuchProcess:
        return 0.0


class Hearth:
    """This process's Runtime, Celery app and heartbeat, plus ``hearth worker`` processes, on one env."""

    def __init__(self, root: Path, env: dict[str, str], workers: int) -> None:
        self.root, self.env = root, env
        os.environ.update(env)  # this process's Runtime and Celery app use the same settings
        for key in [k for k in os.environ if k.startswith("HEARTH_") and k not in env]:
            del os.environ[key]
        self.settings = Settings()
        self.app = create_app(self.settings)
        self.rt = Runtime.from_settings(self.settings)
        self.procs: list[subprocess.Popen[bytes]] = []
        for _ in range(workers):
            log = (root / f"worker-{len(list(root.glob('worker-*.log')))}.log").open("ab")
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "worker"], cwd=REPO, env=clean_env(env),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            ))
        deadline = time.monotonic() + 120
        while not self.app.control.ping(timeout=1.0):  # a control ping: no task result left behind
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"hearth worker not ready; see {root}/worker-*.log")
        self.tick_cpu = 0.0  # thread CPU seconds spent in tick()
        self.ticks = 0
        self.sent: Counter[str] = Counter()  # tasks sent by this process, by name
        self.most_saves_per_tick = 0

    def send(self, name: str, args: list[Any]) -> None:
        self.sent[name] += 1
        if name == SAVES_TASK:  # one message for a batch of sessions
            self.sent[SAVES] += len(args[0])
        elif name == LIVE_SAVE_TASK:
            self.sent[SAVES] += 1
        self.app.send_task(name, args=args)

    def tick(self) -> None:
        before = self.sent[SAVES]
        t0 = time.thread_time()
        tick(self.rt, self.send)
        self.tick_cpu += time.thread_time() - t0
        self.ticks += 1
        self.most_saves_per_tick = max(self.most_saves_per_tick, self.sent[SAVES] - before)

    def saves_queued(self) -> int:
        """Messages waiting in the broker's saves queue (a backlog means the workers fall behind)."""
        return int(self.rt.redis.llen(broker_key_prefix(self.settings) + SAVES_QUEUE))

    def worker_cpu(self) -> float:
        return sum(cpu_of(p) for p in self.procs)

    def close(self) -> None:
        for p in self.procs:
            stop(p)
        self.rt.close()
        self.app.close()


# --- phases -------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    active: int
    minutes: float
    requests: Counter[str] = field(default_factory=Counter)
    tick_cpu: float = 0.0
    worker_cpu: float = 0.0
    ticks: int = 0
    enqueued: int = 0  # live saves the heartbeat enqueued in the window
    messages: int = 0  # the Celery messages they took (one per batch)
    most_per_tick: int = 0
    queued_at_end: int = 0

    def per_min(self, endpoint: str | None = None) -> float:
        n = sum(self.requests.values()) if endpoint is None else self.requests.get(endpoint, 0)
        return n / self.minutes


def heartbeat_until(h: Hearth, done: Callable[[], bool], timeout: float, every: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not reached in {timeout} s; see {h.root}")
        h.tick()
        time.sleep(every)


def measure(name: str, h: Hearth, api: CountingAPI, window: float, active: int,
            at_start: Callable[[], None] | None = None) -> Phase:
    """Run the heartbeat at its interval for ``window`` s and take the deltas."""
    interval = float(h.settings.heartbeat_interval)
    t0, c0 = api.fresh()
    w0, k0, n0, e0 = h.worker_cpu(), h.tick_cpu, h.ticks, h.sent[SAVES]
    m0 = h.sent[SAVES_TASK] + h.sent[LIVE_SAVE_TASK]
    h.most_saves_per_tick = 0
    if at_start is not None:
        at_start()
    start = time.monotonic()
    next_tick = start
    while time.monotonic() - start < window:
        if time.monotonic() >= next_tick:
            h.tick()
            next_tick += interval
        time.sleep(0.05)
    t1, c1 = api.fresh()
    phase = Phase(name, active, (t1 - t0) / 60.0, c1 - c0, h.tick_cpu - k0, h.worker_cpu() - w0, h.ticks - n0,
                  h.sent[SAVES] - e0, h.sent[SAVES_TASK] + h.sent[LIVE_SAVE_TASK] - m0, h.most_saves_per_tick,
                  h.saves_queued())
    print(f"  {name}: {sum(phase.requests.values())} requests in {phase.minutes * 60:.0f} s ({dict(phase.requests)}),"
          f" tick CPU {phase.tick_cpu:.2f} s over {phase.ticks} ticks, worker CPU {phase.worker_cpu:.2f} s,"
          f" {phase.enqueued} live saves enqueued in {phase.messages} messages (at most {phase.most_per_tick} by"
          f" one tick), {phase.queued_at_end} messages still queued at the end", flush=True)
    return phase


def saved_in_storage(rt: Runtime, sessions: Sessions, keys: list[str], file_ids: dict[str, str]) -> int:
    """How many of the files written into session containers are in storage (read from the manifests)."""
    n = 0
    for key in keys:
        rec = sessions.get(key)
        if rec is None or rec.current is None:
            continue
        here = rec.current
        raw = StorageTarget.from_url(here.target, clock=rt.clock).read_bytes(MANIFEST_KEY)
        if raw is not None and file_ids[key] in Manifest.from_json(raw, container_id=here.container_id).files:
            n += 1
    return n


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-api":
        serve_api(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=1000, help="Active sessions (and pool size). Default 1000.")
    ap.add_argument("--window", type=float, default=60.0, help="Measuring window per phase, s. Default 60.")
    ap.add_argument("--limit", type=int, default=1200,
                    help="HEARTH_API_REQUESTS_PER_MINUTE of the limited phase (below the natural rate, and its "
                         "half below what a loaded 2-core machine sustains, so the limit is what binds). "
                         "Default 1200.")
    ap.add_argument("--new-files", type=int, default=100,
                    help="Files the model's code writes into session containers at the start of the sessions "
                         "window. Default 100.")
    ap.add_argument("--workers", type=int, default=1, help="`hearth worker` processes. Default 1.")
    ap.add_argument("--concurrency", type=int, default=16, help="Threads per worker. Default 16.")
    ap.add_argument("--latency-ms", type=float, default=0.0, help="Injected latency per API request. Default 0.")
    args = ap.parse_args()

    n = args.sessions
    faults = {"latency_ms": args.latency_ms, "seed": 1}
    with tempfile.TemporaryDirectory(prefix="hearth-bench-sessions-") as tmp:
        root = Path(tmp)
        (root / "pools.yaml").write_text(POOLS.format(pool=POOL, n=n))
        with counting_api(root, faults) as api, RedisServer(root / "redis", persist=False) as redis_server:
            env = {
                "HEARTH_BACKEND": "local",
                "HEARTH_API_BASE": api.base,
                "HEARTH_REDIS_URL": redis_server.url,
                "HEARTH_POOLS": str(root / "pools.yaml"),
                "HEARTH_DATA_DIR": str(root / "data"),
                "HEARTH_WORKER_POOL": "threads",
                "HEARTH_WORKER_CONCURRENCY": str(args.concurrency),
                "HEARTH_LOG_LEVEL": "WARNING",
                "HEARTH_ORPHAN_GRACE": "3600",
            }
            print(f"sessions bench: {n} sessions, window {args.window:.0f} s, "
                  f"{args.workers} worker x {args.concurrency} threads", flush=True)
            h = Hearth(root, env, args.workers)
            try:
                period = float(h.settings.session_save_every)
                fill_start = time.monotonic()
                heartbeat_until(h, lambda: len(h.rt.store.records(POOL, State.READY)) >= n, timeout=1800, every=0.5)
                print(f"  filled {n} containers in {time.monotonic() - fill_start:.0f} s", flush=True)
                baseline = measure("baseline (0 sessions)", h, api, args.window, 0)

                sessions = Sessions(h.rt, h.send)
                keys = [f"bench-conversation-{i}" for i in range(n)]
                seed_start = time.monotonic()
                leases = {key: sessions.lease(POOL, key) for key in keys}
                print(f"  leased {n} sessions (real path, Sessions.lease) in {time.monotonic() - seed_start:.1f} s;"
                      f" {LiveSaves(h.rt).active()} on the live-save schedule", flush=True)
                # Let the schedule reach its steady state (the first saves are due one period after each lease).
                measure("warm-up", h, api, period * 2, n)
                written: dict[str, str] = {}
                chosen = random.Random(1).sample(keys, min(args.new_files, n))
                http = httpx.Client(timeout=60)

                def write_files() -> None:
                    for key in chosen:
                        r = http.post(f"{api.base}/containers/{leases[key].container_id}/files",
                                      headers={"X-Hearth-File-Source": "assistant",
                                               "X-Hearth-File-Path": "/mnt/data/result.csv"},
                                      files={"file": ("result.csv", os.urandom(2048))})
                        r.raise_for_status()
                        written[key] = r.json()["id"]

                live = measure("sessions", h, api, args.window, n, at_start=write_files)
                live.requests["files.create"] -= len(written)  # the bench's own writes, not Hearth's
                found = saved_in_storage(h.rt, sessions, chosen, written)
            finally:
                h.close()

            # The limited phase: the same sessions, worker and heartbeat restarted under a request limit.
            limited_env = {**env, "HEARTH_API_REQUESTS_PER_MINUTE": str(args.limit)}
            h = Hearth(root, limited_env, args.workers)
            try:
                stretched = save_period(period, n, args.limit)
                # One stretched period for the schedule to spread out under the new limit.
                measure("warm-up (limited)", h, api, stretched + float(h.settings.heartbeat_interval), n)
                limited = measure(f"limited ({args.limit}/min)", h, api, max(args.window, 2 * stretched), n)
                warned = (h.rt.redis.exists(h.rt.store.key("sessions", "save-stretched")) == 1)
            finally:
                h.close()

    report(baseline, live, limited, n, period, args, found, len(written), stretched, warned,
           float(h.settings.heartbeat_interval))


def report(baseline: Phase, live: Phase, limited: Phase, n: int, period: float, args: argparse.Namespace,
           found: int, written: int, stretched: float, warned: bool, interval: float) -> None:
    documented = n / period * 60
    lists = live.per_min("files.list") - baseline.per_min("files.list")
    print()
    print(f"documented rate: {n} sessions / {period:.0f} s = {documented:.0f} listings/min")
    print(f"measured (sessions - baseline): files.list {lists:.0f}/min = {lists / documented:.2f}x documented "
          f"(effective period {n * 60 / max(lists, 1e-9):.0f} s); all requests "
          f"{live.per_min() - baseline.per_min():.0f}/min (files.content {live.per_min('files.content'):.0f}/min:"
          f" copies of the {written} new files); heartbeat enqueued {live.enqueued / live.minutes:.0f} live saves/min"
          f" in {live.messages / live.minutes:.0f} messages/min (at most {live.most_per_tick} saves by one tick),"
          f" {live.queued_at_end} messages still queued at the end")
    print(f"new files in storage after the window: {found}/{written}")
    for label, phase in (("baseline", baseline), ("sessions", live), ("limited", limited)):
        print(f"{label:9s} heartbeat CPU {phase.tick_cpu / phase.minutes:6.3f} s/min ({phase.ticks} ticks), "
              f"worker CPU {phase.worker_cpu / phase.minutes:6.2f} s/min, requests {phase.per_min():6.0f}/min")
    base_tick, base_worker = baseline.tick_cpu / baseline.minutes, baseline.worker_cpu / baseline.minutes
    added_tick = live.tick_cpu / live.minutes - base_tick
    added_worker = live.worker_cpu / live.minutes - base_worker
    per_save_tick = added_tick / max(lists, 1e-9) * 1000
    per_save_worker = added_worker / max(lists, 1e-9) * 1000
    print(f"added by {n} sessions: heartbeat {added_tick:+.2f} CPU s/min "
          f"(ratio {ratio(live.tick_cpu / live.minutes, base_tick)}), worker {added_worker:+.2f} CPU s/min "
          f"(ratio {ratio(live.worker_cpu / live.minutes, base_worker)}); per live save "
          f"{per_save_tick:.1f} ms heartbeat + {per_save_worker:.1f} ms worker CPU; at the documented rate that is "
          f"{(per_save_tick + per_save_worker) * documented / 60_000:.2f} CPU cores")
    share = args.limit * SAVE_SHARE
    cap = claims_per_tick(args.limit, interval)
    print(f"limited: HEARTH_API_REQUESTS_PER_MINUTE={args.limit} (natural {documented:.0f}/min): period "
          f"{period:.0f} s -> {stretched:.0f} s, warning {'logged' if warned else 'NOT logged'}; "
          f"files.list {limited.per_min('files.list'):.0f}/min (saves' share {share:.0f}/min); heartbeat enqueued "
          f"{limited.enqueued / limited.minutes:.0f} live saves/min, at most {limited.most_per_tick} by one tick "
          f"(cap {cap}); all requests {limited.per_min():.0f}/min: "
          f"{'within' if limited.per_min() <= args.limit else 'OVER'} the limit {args.limit}")


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a (baseline 0)"


if __name__ == "__main__":
    main()

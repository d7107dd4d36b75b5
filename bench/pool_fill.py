"""Benchmark: filling a pool of N containers with 3 input files each — Hearth vs a sequential SDK loop.

Both fill against the same local Containers API (``hearth api --dev`` in its own process, with an
injected latency per request, ``HEARTH_FAULTS``, standing in for the real API's round trip), in the
same run:

* baseline: one loop with the official ``openai`` SDK: create a container, upload its 3 files, N
  times, one request at a time (what a script without Hearth does);
* Hearth: an embedded redis-server, ``--workers`` real ``hearth worker`` processes (threads pool,
  ``--concurrency`` tasks each), and this process driving the heartbeat's ``hearth.planner.tick``
  every ``--tick`` seconds until N records are READY. Hearth does more requests per container than
  the baseline (create, list files, 3 uploads, list again to verify, retrieve: 7 against 4); it
  wins by fanning them out.

Prints both wall times, containers per second and the ratio baseline / Hearth; a few Hearth
containers are then checked with the SDK to hold the 3 files. Never fails CI.

Run: ``.venv/bin/python bench/pool_fill.py [--containers 200] [--concurrency 16] [--workers 1]``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai

from hearth.planner import tick
from hearth.pool.model import State
from hearth.runtime import Runtime
from settings import Settings
from tasks.app import create_app
from worker.redis_server import RedisServer, free_port

REPO = Path(__file__).resolve().parents[1]


POOL = "bench"
POOLS = """
version: 1
pools:
  {pool}:
    min_ready: {n}
    buffer: 0
    max_total: {n}
    container: {{expires_after_minutes: 60}}
    inputs:
      - path: inputs/*
"""


def write_inputs(root: Path) -> list[Path]:
    """Three small input files of the kinds a pool carries: data, a helper module, notes."""
    inputs = root / "inputs"
    inputs.mkdir(parents=True)
    files = {
        "data.csv": "id,value\n" + "".join(f"{i},{i * i}\n" for i in range(2000)),
        "helper.py": "def mean(xs):\n    return sum(xs) / len(xs)\n" * 20,
        "notes.md": "# Notes\n\n" + "Seeded by the pool-fill benchmark.\n" * 50,
    }
    for name, text in files.items():
        (inputs / name).write_text(text)
    return sorted(inputs.iterdir())


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


@contextmanager
def local_api(root: Path, faults: dict[str, Any]) -> Iterator[str]:
    """``hearth api --dev`` on a free port with the injected latency; yields its /v1 base URL."""
    port = free_port()
    log = (root / "api.log").open("ab")
    env = clean_env({"HEARTH_FAULTS": json.dumps(faults), "HEARTH_DATA_DIR": str(root / "api-data")})
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "api", "--dev", "--port", str(port), "--log-level", "warning"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"hearth api exited: {(root / 'api.log').read_text()[-2000:]}")
            try:
                httpx.get(f"{base}/containers", timeout=5).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield base
    finally:
        stop(proc)
        log.close()


def baseline(base: str, files: list[Path], n: int) -> float:
    """The sequential loop with the official SDK: create, upload 3 files; n times."""
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=2)
    client.containers.list(limit=1)  # warm the connection, as Hearth's workers are warm
    start = time.perf_counter()
    for i in range(n):
        container = client.containers.create(name=f"baseline-{i}")
        for path in files:
            with path.open("rb") as fh:
                client.containers.files.create(container.id, file=(path.name, fh))
    elapsed = time.perf_counter() - start
    client.close()
    return elapsed


def hearth_fill(
    root: Path, base: str, n: int, *, workers: int, concurrency: int, tick_every: float, timeout: float
) -> tuple[float, list[str]]:
    """Redis + ``hearth worker`` processes; tick until n READY. Returns the time and the READY ids."""
    (root / "pools.yaml").write_text(POOLS.format(pool=POOL, n=n))
    procs: list[subprocess.Popen[bytes]] = []
    with RedisServer(root / "redis", persist=False) as redis_server:
        env = {
            "HEARTH_BACKEND": "local",
            "HEARTH_API_BASE": base,
            "HEARTH_REDIS_URL": redis_server.url,
            "HEARTH_POOLS": str(root / "pools.yaml"),
            "HEARTH_DATA_DIR": str(root / "data"),
            "HEARTH_WORKER_POOL": "threads",
            "HEARTH_WORKER_CONCURRENCY": str(concurrency),
            "HEARTH_LOG_LEVEL": "WARNING",
        }
        os.environ.update(env)  # this process's Runtime and Celery app use the same settings
        settings = Settings()
        app = create_app(settings)
        rt = Runtime.from_settings(settings)
        try:
            for i in range(workers):
                log = (root / f"worker-{i}.log").open("ab")
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "worker.cli", "worker"], cwd=REPO, env=clean_env(env),
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                ))
            for i, proc in enumerate(procs):
                wait_worker(proc, app, root / f"worker-{i}.log")
            start = time.perf_counter()
            deadline = start + timeout
            last = -1
            while True:
                tick(rt, lambda name, args: app.send_task(name, args=args))
                ready = len(rt.store.records(POOL, State.READY))
                if ready != last:
                    print(f"  hearth: {ready}/{n} ready after {time.perf_counter() - start:.1f} s", flush=True)
                    last = ready
                if ready >= n:
                    break
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"only {ready}/{n} READY after {timeout} s; see {root}/worker-*.log")
                time.sleep(tick_every)
            elapsed = time.perf_counter() - start
            ids = [r.container_id or "" for r in rt.store.records(POOL, State.READY)]
            return elapsed, ids
        finally:
            for proc in procs:
                stop(proc)
            rt.close()
            app.close()


def wait_worker(proc: subprocess.Popen[bytes], app: Any, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"hearth worker exited: {log.read_text()[-2000:]}")
        # A control ping, not a task: a task's pending result would outlive this run's Redis.
        if app.control.ping(timeout=1.0):
            return
    raise RuntimeError(f"hearth worker not ready: {log.read_text()[-2000:]}")


def _unprefixed(name: str) -> str:
    head, sep, rest = name.partition("-")
    return rest if sep and len(head) == 32 and all(c in "0123456789abcdef" for c in head) else name


def check(base: str, ids: list[str], files: list[Path], sample: int = 5) -> None:
    """A few filled containers hold every input, byte for byte in size (seen with the SDK)."""
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=2)
    want = {p.name: p.stat().st_size for p in files}
    for cid in ids[:sample]:
        # The local API names an upload /mnt/data/<hash>-<filename>, as the real one does.
        got = {_unprefixed(f.path.rsplit("/", 1)[-1]): f.bytes for f in client.containers.files.list(cid)}
        if got != want:
            raise RuntimeError(f"{cid} holds {got}, expected {want}")
    client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--containers", type=int, default=200, help="Pool size N. Default 200.")
    ap.add_argument("--concurrency", type=int, default=16, help="Tasks at once per worker. Default 16.")
    ap.add_argument("--workers", type=int, default=1, help="`hearth worker` processes. Default 1.")
    ap.add_argument("--latency-ms", type=float, default=50.0, help="Injected latency per request. Default 50.")
    ap.add_argument("--jitter-ms", type=float, default=20.0, help="Uniform extra latency 0..jitter. Default 20.")
    ap.add_argument("--tick", type=float, default=0.5, help="Seconds between heartbeat ticks. Default 0.5.")
    ap.add_argument("--timeout", type=float, default=900.0, help="Give up on the Hearth fill after this. Default 900.")
    args = ap.parse_args()

    faults = {"latency_ms": args.latency_ms, "jitter_ms": args.jitter_ms, "seed": 1}
    n = args.containers
    with tempfile.TemporaryDirectory(prefix="hearth-bench-fill-") as tmp:
        root = Path(tmp)
        files = write_inputs(root)
        with local_api(root, faults) as base:
            print(f"pool fill: {n} containers x {len(files)} files, latency {faults}", flush=True)
            base_s = baseline(base, files, n)
            print(f"  baseline (sequential openai SDK): {base_s:.1f} s", flush=True)
            hearth_s, ids = hearth_fill(
                root, base, n, workers=args.workers, concurrency=args.concurrency,
                tick_every=args.tick, timeout=args.timeout,
            )
            check(base, ids, files)
    print()
    print(f"baseline: {base_s:8.1f} s  {n / base_s:6.1f} containers/s  (sequential SDK loop, 4 requests each)")
    print(f"hearth:   {hearth_s:8.1f} s  {n / hearth_s:6.1f} containers/s  "
          f"({args.workers} worker x {args.concurrency} threads, tick every {args.tick} s)")
    print(f"ratio baseline / hearth: {base_s / hearth_s:.2f}x")


if __name__ == "__main__":
    main()

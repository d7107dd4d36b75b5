"""Benchmark: filling a pool of N containers with 3 inputs of 1 MiB each, three ways, in one run.

All three fill against the same local Containers API (``hearth api --dev`` in its own process, with
an injected latency per request, ``HEARTH_FAULTS``, standing in for the real API's round trip):

* **SDK loop** (the baseline): one loop with the official ``openai`` SDK — create a container, upload
  its 3 files — N times, one request at a time; what a script without Hearth does. 4 requests and
  3 MiB per container.
* **Minimal asyncio client**: the floor for this machine. ``httpx.AsyncClient`` at the same
  concurrency as Hearth; uploads the 3 inputs once to the Files API, then per container creates it
  with ``file_ids`` and lists its files once (2 requests per container, 3 MiB in all). No Redis, no
  Celery, no records: nothing a daemon needs, so Hearth cannot beat it, only come close.
* **Hearth**: an embedded redis-server and ``--workers`` real ``hearth worker`` processes; the fill is
  started the way ``hearth fill`` starts it (one ``hearth.reconcile`` task, asked again every 5 s),
  and timed until N records are READY.

Prints the wall time of each, the ratios, requests per container and bytes uploaded (all counted at the
server, its ``/_dev/requests`` counter), and the theoretical bound ``N·k·L/C`` (k
requests per container of mean latency L at C in flight). A few Hearth containers are then checked
with the SDK to hold every input at its size. Never fails CI.

Run: ``.venv/bin/python bench/pool_fill.py [--containers 200] [--concurrency 16] [--workers 1]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai

from hearth.pool.model import State
from hearth.runtime import Runtime
from settings import Settings
from tasks.app import create_app
from worker.redis_server import RedisServer, free_port

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20
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


@dataclass
class Run:
    """One way of filling: its wall time and what it sent."""

    name: str
    seconds: float
    requests: int
    uploaded: int  # bytes of request bodies that carried file content

    def per_container(self, n: int) -> float:
        return self.requests / n


def write_inputs(root: Path, size: int = MIB) -> list[Path]:
    """Three inputs of ``size`` bytes each (text, so every backend takes them): data, code, notes."""
    inputs = root / "inputs"
    inputs.mkdir(parents=True)
    rng = random.Random(7)
    for name in ("data.csv", "helper.py", "notes.md"):
        line = ",".join(str(rng.randrange(10**6)) for _ in range(8)) + "\n"
        text = (line * (size // len(line) + 1))[:size]
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


def server_counts(base: str) -> tuple[int, int]:
    """Requests and uploaded bytes the local API has answered so far (its ``/_dev/requests`` counter)."""
    body = httpx.get(base.removesuffix("/v1") + "/_dev/requests", timeout=10).json()
    return int(body["total"]), int(body["upload_bytes"])


def sdk_loop(base: str, files: list[Path], n: int) -> Run:
    """The sequential loop with the official SDK: create, upload 3 files; n times."""
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=2)
    client.containers.list(limit=1)  # warm the connection, as Hearth's workers are warm
    before = server_counts(base)
    start = time.perf_counter()
    for i in range(n):
        container = client.containers.create(name=f"sdk-{i}")
        for path in files:
            with path.open("rb") as fh:
                client.containers.files.create(container.id, file=(path.name, fh))
    elapsed = time.perf_counter() - start
    after = server_counts(base)
    client.close()
    return Run("sdk loop", elapsed, after[0] - before[0], after[1] - before[1])


async def _minimal(base: str, files: list[Path], n: int, concurrency: int) -> Run:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as http:
        await http.get("/containers", params={"limit": 1})  # warm
        before = server_counts(base)
        start = time.perf_counter()

        async def upload(path: Path) -> str:
            r = await http.post("/files", data={"purpose": "user_data"}, files={"file": (path.name, path.read_bytes())})
            r.raise_for_status()
            return str(r.json()["id"])

        file_ids = await asyncio.gather(*(upload(p) for p in files))
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with gate:
                r = await http.post("/containers", json={"name": f"minimal-{i}", "file_ids": file_ids})
                r.raise_for_status()
                listing = await http.get(f"/containers/{r.json()['id']}/files")
                listing.raise_for_status()
                if len(listing.json()["data"]) < len(files):
                    raise RuntimeError(f"container {r.json()['id']} lacks its copies: {listing.json()}")

        await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = time.perf_counter() - start
    after = server_counts(base)
    return Run("minimal asyncio", elapsed, after[0] - before[0], after[1] - before[1])


def minimal_client(base: str, files: list[Path], n: int, concurrency: int) -> Run:
    return asyncio.run(_minimal(base, files, n, concurrency))


def hearth_fill(
    root: Path, base: str, n: int, *, workers: int, concurrency: int, timeout: float
) -> tuple[Run, list[str]]:
    """Redis + ``hearth worker`` processes; a fill asked for as ``hearth fill`` asks. Returns the run and READY ids."""
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
            before = server_counts(base)
            start = time.perf_counter()
            deadline = start + timeout
            app.send_task("hearth.reconcile")
            asked = start
            last = -1
            while True:
                ready = rt.store.counts(POOL).get(State.READY, 0)
                now = time.perf_counter()
                if ready != last:
                    print(f"  hearth: {ready}/{n} ready after {now - start:.2f} s", flush=True)
                    last = ready
                if ready >= n:
                    break
                if now > deadline:
                    raise RuntimeError(f"only {ready}/{n} READY after {timeout} s; see {root}/worker-*.log")
                if now - asked > 5.0:  # as `hearth fill` nudges: a failed provision waits for a reconcile
                    app.send_task("hearth.reconcile")
                    asked = now
                time.sleep(0.02)
            elapsed = time.perf_counter() - start
            after = server_counts(base)
            ids = [r.container_id or "" for r in rt.store.records(POOL, State.READY)]
            return Run("hearth", elapsed, after[0] - before[0], after[1] - before[1]), ids
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


def check(base: str, ids: list[str], files: list[Path], sample: int = 5) -> None:
    """A few filled containers hold every input at its size (seen with the SDK)."""
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=2)
    want = sorted(p.stat().st_size for p in files)
    names = {p.name for p in files}
    for cid in ids[:sample]:
        listed = client.containers.files.list(cid).data
        got = sorted(f.bytes or 0 for f in listed if any(f.path.endswith(name) for name in names))
        if got != want:
            raise RuntimeError(f"{cid} holds {[(f.path, f.bytes) for f in listed]}, expected sizes {want}")
    client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--containers", type=int, default=200, help="Pool size N. Default 200.")
    ap.add_argument("--concurrency", type=int, default=16, help="Tasks at once per worker (and the minimal client's).")
    ap.add_argument("--workers", type=int, default=1, help="`hearth worker` processes. Default 1.")
    ap.add_argument("--input-mib", type=float, default=1.0, help="Size of each of the 3 inputs, MiB. Default 1.")
    ap.add_argument("--latency-ms", type=float, default=50.0, help="Injected latency per request. Default 50.")
    ap.add_argument("--jitter-ms", type=float, default=20.0, help="Uniform extra latency 0..jitter. Default 20.")
    ap.add_argument("--skip-sdk", action="store_true", help="Estimate the SDK loop from 20 containers instead of N.")
    ap.add_argument("--timeout", type=float, default=900.0, help="Give up on the Hearth fill after this. Default 900.")
    args = ap.parse_args()

    faults = {"latency_ms": args.latency_ms, "jitter_ms": args.jitter_ms, "seed": 1}
    n = args.containers
    c = args.concurrency * args.workers
    latency = (args.latency_ms + args.jitter_ms / 2) / 1000
    with tempfile.TemporaryDirectory(prefix="hearth-bench-fill-") as tmp:
        root = Path(tmp)
        files = write_inputs(root, int(args.input_mib * MIB))
        with local_api(root, faults) as base:
            print(f"pool fill: {n} containers x {len(files)} inputs of {args.input_mib:g} MiB, {faults}", flush=True)
            sdk_n = min(n, 20) if args.skip_sdk else n
            sdk = sdk_loop(base, files, sdk_n)
            if sdk_n != n:  # scaled linearly: the loop is one request at a time
                sdk = Run(sdk.name + f" (x{n / sdk_n:g} of {sdk_n})", sdk.seconds * n / sdk_n,
                          sdk.requests * n // sdk_n, sdk.uploaded * n // sdk_n)
            print(f"  sdk loop: {sdk.seconds:.1f} s", flush=True)
            minimal = minimal_client(base, files, n, c)
            print(f"  minimal asyncio client: {minimal.seconds:.2f} s", flush=True)
            hearth, ids = hearth_fill(root, base, n, workers=args.workers, concurrency=args.concurrency,
                                      timeout=args.timeout)
            check(base, ids, files)
    bound = n * 2 * latency / c
    print()
    print(f"{'':18} {'seconds':>9} {'containers/s':>13} {'requests/container':>19} {'MiB uploaded':>13}")
    for run in (sdk, minimal, hearth):
        print(f"{run.name:18} {run.seconds:9.2f} {n / run.seconds:13.1f} {run.per_container(n):19.2f} "
              f"{run.uploaded / MIB:13.1f}")
    print(f"theoretical bound N·k·L/C = {n}·2·{latency * 1000:.0f} ms/{c} = {bound:.2f} s")
    print(f"ratio sdk loop / hearth:          {sdk.seconds / hearth.seconds:.1f}x  (goal >= 30x)")
    print(f"ratio hearth / minimal client:    {hearth.seconds / minimal.seconds:.2f}x  (goal <= 1.5x)")
    print(f"ratio minimal client / bound:     {minimal.seconds / bound:.2f}x")


if __name__ == "__main__":
    main()

"""Benchmark: harvest of a 1 GiB assistant file — memory growth and throughput vs a plain download.

A local Containers API runs in its own process. A 1 GiB file "written by code" is put in a container
through its dev switch. Then, each in a fresh process so neither run's memory leaks into the other,
(1) a plain streamed download of that file with the client into a local file (fsync'd), the
baseline, and (2) a harvest of the container into a local directory (size checks, temporary name,
fsync, rename, manifest); the two alternate ``--repeat`` times and the best time of each is kept.
Each child samples its own RSS every 20 ms; growth is peak minus the RSS just before the transfer.
Prints harvest/download throughput as a ratio and the RSS growth against the 64 MiB budget. Never
fails CI (exit status 0 unless the setup itself breaks).

Run: ``.venv/bin/python bench/harvest.py [--gib 1] [--repeat 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
BUDGET = 64 * 2**20

SERVER = """
import sys, time
from pathlib import Path
from hearth.localapi import LocalAPIServer
server = LocalAPIServer(Path(sys.argv[1]), dev=True)
server.start()
print(server.base_url, flush=True)
sys.stdin.read()  # until the parent closes our stdin
server.stop()
"""

CHILD = """
import json, os, sys, threading, time
import psutil
from hearth.api.client import ContainersClient
from hearth.clock import SystemClock
from hearth.files.harvest import Harvester
from hearth.files.storage import StorageTarget

mode, base_url, cid, fid, out = sys.argv[1:6]
proc = psutil.Process()
peak = [0]
stop = threading.Event()

def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        stop.wait(0.02)

with ContainersClient(base_url, dialect="openai", timeout=600) as client:
    list(client.list_files(cid))  # warm the connection and imports before the baseline
    base = proc.memory_info().rss
    peak[0] = base
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    start = time.perf_counter()
    if mode == "download":
        with open(out, "wb") as sink:
            result = client.download_file(cid, fid, sink)
            sink.flush()
            os.fsync(sink.fileno())
        nbytes = result.bytes
    else:
        target = StorageTarget.from_url(out, container_id=cid)
        report = Harvester(client, SystemClock()).harvest(cid, target)
        assert report.complete and report.files == 1, report
        nbytes = report.bytes
    elapsed = time.perf_counter() - start
    stop.set()
    t.join()
print(json.dumps({"bytes": nbytes, "seconds": elapsed, "rss_base": base, "rss_peak": peak[0]}))
"""


def _child(*args: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, capture_output=True, timeout=1800, check=True)
    result: dict[str, float] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return result


def _best(runs: list[dict[str, float]]) -> dict[str, float]:
    """The fastest run's time, and the largest RSS growth of any run."""
    fastest = min(runs, key=lambda r: r["seconds"])
    worst = max(runs, key=lambda r: r["rss_peak"] - r["rss_base"])
    return {**fastest, "rss_base": worst["rss_base"], "rss_peak": worst["rss_peak"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="file size in GiB (default 1)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each, alternated; best time (default 2)")
    args = parser.parse_args()
    size = int(args.gib * 2**30)

    with tempfile.TemporaryDirectory(prefix="hearth-bench-harvest-") as tmp:
        work = Path(tmp)
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(work / "api")], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        try:
            assert server.stdout is not None
            base_url = server.stdout.readline().strip()
            cid = httpx.post(f"{base_url}/containers", json={"name": "bench-harvest"}, timeout=30).json()["id"]

            block = os.urandom(2**20)

            def body() -> object:
                boundary = "benchboundary"
                yield (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
                       "Content-Type: application/octet-stream\r\n\r\n").encode()
                sent = 0
                while sent < size:
                    chunk = block[: min(len(block), size - sent)]
                    sent += len(chunk)
                    yield chunk
                yield f"\r\n--{boundary}--\r\n".encode()

            t0 = time.perf_counter()
            made = httpx.post(
                f"{base_url}/containers/{cid}/files",
                content=body(),  # type: ignore[arg-type]
                headers={"Content-Type": "multipart/form-data; boundary=benchboundary",
                         "X-Hearth-File-Source": "assistant", "X-Hearth-File-Path": "/mnt/data/out/big.bin"},
                timeout=1800,
            )
            made.raise_for_status()
            fid = made.json()["id"]
            print(f"created a {size / 2**30:.2f} GiB assistant file in {time.perf_counter() - t0:.1f} s")

            downloads, harvests = [], []
            for i in range(args.repeat):  # alternated, so load from other processes hits both alike
                downloads.append(_child("download", base_url, cid, fid, str(work / "plain.bin")))
                (work / "plain.bin").unlink()
                harvests.append(_child("harvest", base_url, cid, fid, str(work / f"harvest{i}")))
                subprocess.run(["rm", "-rf", str(work / f"harvest{i}")], check=True)
            dl = _best(downloads)
            hv = _best(harvests)
        finally:
            if server.stdin:
                server.stdin.close()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()

    def mib_s(r: dict[str, float]) -> float:
        return r["bytes"] / 2**20 / r["seconds"]

    for name, r in (("plain download", dl), ("harvest", hv)):
        growth = r["rss_peak"] - r["rss_base"]
        print(f"{name:15s} {r['bytes'] / 2**30:.2f} GiB in {r['seconds']:6.2f} s = {mib_s(r):7.1f} MiB/s, "
              f"RSS growth {growth / 2**20:6.1f} MiB")
    growth = hv["rss_peak"] - hv["rss_base"]
    print(f"harvest RSS growth / 64 MiB budget = {growth / BUDGET:.2f} "
          f"({'within' if growth < BUDGET else 'OVER'} budget)")
    print(f"harvest throughput / plain download throughput = {mib_s(hv) / mib_s(dl):.2f}")


if __name__ == "__main__":
    main()

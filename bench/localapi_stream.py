"""Streaming memory bound of the local API: upload and download 1 GiB through ``hearth api``.

The server runs in a subprocess; a sampler thread reads its RSS (psutil) every 20 ms. The payload is
generated on the fly and hashed on both sides of the trip, never held in memory. Prints the server's
RSS growth against the 64 MiB bound, and throughput against a baseline measured in the same run
(generating + hashing the same bytes with no server in between). Never fails CI: it only prints.

    .venv/bin/python bench/localapi_stream.py [SIZE_MIB]     (default 1024)
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

MIB = 1 << 20
BOUND = 64 * MIB
BLOCK = os.urandom(MIB)


class Generated:
    """A file-like object producing ``size`` bytes on demand (and their sha256), holding one block."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.sent = 0
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        if self.sent >= self.size:
            return b""
        n = MIB if n is None or n < 0 else min(n, MIB)
        n = min(n, self.size - self.sent)
        offset = self.sent % MIB
        chunk = BLOCK[offset : offset + n]  # may be shorter at the block's end: read() may return less
        self.sent += len(chunk)
        self.sha.update(chunk)
        return chunk


class RSSSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.02)

    def rss(self) -> int:
        return int(self.proc.memory_info().rss)


def baseline(size: int) -> float:
    """Seconds to generate and hash the payload twice (upload side + download side), no server."""
    start = time.perf_counter()
    g = Generated(size)
    while g.read(64 * 1024):
        pass
    g2 = Generated(size)
    while g2.read(64 * 1024):
        pass
    return time.perf_counter() - start


def main() -> None:
    size = int(sys.argv[1]) * MIB if len(sys.argv) > 1 else 1024 * MIB
    data_dir = Path(tempfile.mkdtemp(prefix="hearth-bench-"))
    root = Path(__file__).resolve().parents[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "api", "--port", "0", "--data-dir", str(data_dir / "api"),
         "--log-level", "warning"],
        stdout=subprocess.PIPE, text=True, cwd=root,
    )
    try:
        assert server.stdout is not None
        match = re.search(r"(http://\S+/v1)", server.stdout.readline())
        if not match:
            raise SystemExit("server did not start")
        base = match.group(1)
        with httpx.Client(base_url=base, timeout=600) as h:
            cid = h.post("/containers", json={"name": "bench"}).json()["id"]
            h.post(f"/containers/{cid}/files", files={"file": ("warm.bin", b"x" * MIB)}).raise_for_status()
            sampler = RSSSampler(server.pid)
            rss0 = sampler.rss()
            sampler.start()

            payload = Generated(size)
            t0 = time.perf_counter()
            r = h.post(f"/containers/{cid}/files", files={"file": ("big.bin", payload)})
            r.raise_for_status()
            up_s = time.perf_counter() - t0
            up_peak = sampler.peak
            info = r.json()
            assert info["bytes"] == size, info

            sampler.peak = 0
            down_sha = hashlib.sha256()
            got = 0
            t0 = time.perf_counter()
            with h.stream("GET", f"/containers/{cid}/files/{info['id']}/content") as resp:
                resp.raise_for_status()
                for chunk in resp.iter_bytes(256 * 1024):
                    down_sha.update(chunk)
                    got += len(chunk)
            down_s = time.perf_counter() - t0
            down_peak = sampler.peak
            sampler.stop_flag.set()
            assert got == size and down_sha.hexdigest() == payload.sha.hexdigest(), "content mismatch"
        base_s = baseline(size)
        growth_up, growth_down = up_peak - rss0, down_peak - rss0
        print(f"payload: {size / MIB:.0f} MiB, sha256 verified after the round trip")
        print(f"server RSS before: {rss0 / MIB:.1f} MiB")
        print(f"upload:   {size / MIB / up_s:7.1f} MiB/s, server RSS growth {growth_up / MIB:6.1f} MiB "
              f"= {growth_up / BOUND:.2f} x the 64 MiB bound")
        print(f"download: {size / MIB / down_s:7.1f} MiB/s, server RSS growth {growth_down / MIB:6.1f} MiB "
              f"= {growth_down / BOUND:.2f} x the 64 MiB bound")
        print(f"baseline (generate+hash both ways, no server): {2 * size / MIB / base_s:7.1f} MiB/s; "
              f"round trip through the server takes {(up_s + down_s) / base_s:.1f} x the baseline time")
        print("within bound" if max(growth_up, growth_down) <= BOUND else "OVER BOUND")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Streamed upload and download of a 1 GiB file through ContainersClient against the local API.

Why: harvest and input sync move files of any size in worker processes; the client must do it in
constant memory and without costing much over plain httpx. The local API runs in a subprocess so
that only the client's memory is measured. Prints the client process's peak RSS growth against a
64 MiB budget, and the client's download throughput as a ratio of a plain httpx streaming download
of the same file measured in the same run. Never fails: it reports.

    .venv/bin/python bench/client_stream.py [--mib 1024]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hearth.api.client import ContainersClient  # noqa: E402
from hearth.api.models import CreateContainerRequest  # noqa: E402
from worker.redis_server import free_port  # noqa: E402

BUDGET_MIB = 64
SERVER = (
    "import sys; from pathlib import Path; from hearth.localapi import LocalAPIServer; "
    "LocalAPIServer(Path(sys.argv[1]), port=int(sys.argv[2]), log_level='warning').serve_forever()"
)


class Discard:
    """A write-only sink that keeps nothing (so the sink's own memory is not measured)."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, b: bytes) -> int:
        self.n += len(b)
        return len(b)

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.n


class PeakRSS:
    """Samples this process's RSS every 20 ms; ``peak`` is the highest seen since ``reset``."""

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self.peak = 0
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.02)

    def reset(self) -> int:
        now = self._proc.memory_info().rss
        self.peak = now
        return now

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


def make_file(path: Path, mib: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(1 << 20)
    with path.open("wb") as fh:
        for i in range(mib):
            chunk = i.to_bytes(8, "little") + block[8:]  # every MiB differs
            fh.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="file size in MiB (default 1024 = 1 GiB)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hearth-bench-") as tmp:
        work = Path(tmp)
        src = work / "big.bin"
        print(f"writing a {args.mib} MiB file ...", flush=True)
        expected = make_file(src, args.mib)
        size = src.stat().st_size
        port = free_port()
        server = subprocess.Popen([sys.executable, "-c", SERVER, str(work / "api"), str(port)], cwd=ROOT)
        base = f"http://127.0.0.1:{port}/v1"
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"{base}/containers", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.05)
            rss = PeakRSS()
            with ContainersClient(base, dialect="local", timeout=300) as client:
                container = client.create_container(CreateContainerRequest(name="bench-stream", memory_limit="1g"))
                start_rss = rss.reset()
                t0 = time.perf_counter()
                cfile = client.upload_file(container.id, src)
                up_s = time.perf_counter() - t0
                up_growth = (rss.peak - start_rss) / (1 << 20)

                url = f"{base}/containers/{container.id}/files/{cfile.id}/content"
                down_s, base_s, hashed_s, down_growth = float("inf"), float("inf"), float("inf"), 0.0
                # Alternate baseline and client, best of two each, so cache warm-up favours neither.
                for _ in range(2):
                    sink = Discard()
                    t0 = time.perf_counter()
                    with httpx.Client(timeout=300) as plain, plain.stream("GET", url) as r:
                        for chunk in r.iter_bytes(1 << 20):
                            sink.write(chunk)
                    base_s = min(base_s, time.perf_counter() - t0)

                    # The same plus an inline sha256: separates the hashing cost from the client's own.
                    digest = hashlib.sha256()
                    t0 = time.perf_counter()
                    with httpx.Client(timeout=300) as plain, plain.stream("GET", url) as r:
                        for chunk in r.iter_bytes(1 << 20):
                            digest.update(chunk)
                    hashed_s = min(hashed_s, time.perf_counter() - t0)

                    start_rss = rss.reset()
                    t0 = time.perf_counter()
                    got = client.download_file(container.id, cfile.id, Discard())  # type: ignore[arg-type]
                    down_s = min(down_s, time.perf_counter() - t0)
                    down_growth = max(down_growth, (rss.peak - start_rss) / (1 << 20))
            rss.stop()
        finally:
            server.terminate()
            server.wait(30)

    ok = got.bytes == size and got.sha256 == expected and cfile.bytes == size and sink.n == size
    mib = size / (1 << 20)
    print(f"file: {mib:.0f} MiB, upload+download intact (size and sha256): {ok}")
    print(f"upload:   {mib / up_s:8.1f} MiB/s, client RSS growth {up_growth:6.1f} MiB (budget {BUDGET_MIB} MiB): "
          f"{'OK' if up_growth < BUDGET_MIB else 'OVER'}")
    print(f"download: {mib / down_s:8.1f} MiB/s, client RSS growth {down_growth:6.1f} MiB (budget {BUDGET_MIB} MiB): "
          f"{'OK' if down_growth < BUDGET_MIB else 'OVER'}")
    print(f"baseline plain httpx streaming download: {mib / base_s:8.1f} MiB/s")
    print(f"baseline plain httpx streaming download + inline sha256: {mib / hashed_s:8.1f} MiB/s")
    print(f"ratio client download / plain httpx download throughput: {base_s / down_s:.2f} "
          "(1.0 = as fast; the client also hashes sha256 on the way)")
    print(f"ratio client download / plain httpx + sha256 throughput: {hashed_s / down_s:.2f}")


if __name__ == "__main__":
    main()

"""Streamed upload and download of a 1 GiB file through ContainersClient against the local API.

Why: harvest and input sync move files of any size in worker processes; the client must do it in
constant memory and without costing much over plain httpx. The local API runs in a subprocess so
that only the client's memory is measured. Prints the client process's peak RSS growth against a
64 MiB budget, the client's download throughput as a ratio of a plain httpx streaming download of
the same file (with and without an inline sha256) and its upload throughput as a ratio of a plain
httpx multipart upload, all measured in the same run, alternating, best of ``--rounds``. It also
prints the client process's CPU time per MiB for each, which is steadier than wall time on a
shared machine: the client's sha256 has to cost about what the baseline's inline sha256 costs.
Never fails: it reports.

    .venv/bin/python bench/client_stream.py [--mib 1024] [--rounds 3]
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
from collections.abc import Callable
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


class Timed:
    """Best-of wall time and the matching process CPU time (all threads) of repeated runs."""

    def __init__(self) -> None:
        self.wall = float("inf")
        self.cpu = 0.0

    def run(self, fn: Callable[[], object]) -> None:
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if wall < self.wall:
            self.wall, self.cpu = wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="file size in MiB (default 1024 = 1 GiB)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds, best of (default 3)")
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
        up, plain_up = Timed(), Timed()
        down, plain_down, plain_hashed = Timed(), Timed(), Timed()
        up_growth = down_growth = 0.0
        intact = True
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"{base}/containers", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.05)
            rss = PeakRSS()
            with ContainersClient(base, dialect="local", timeout=300) as client, httpx.Client(timeout=300) as plain:
                container = client.create_container(CreateContainerRequest(name="bench-stream", memory_limit="1g"))
                files_path = f"{base}/containers/{container.id}/files"
                kept: list[str] = []

                def client_upload() -> None:
                    nonlocal intact
                    cfile = client.upload_file(container.id, src)
                    intact &= cfile.bytes == size
                    kept.append(cfile.id)

                def plain_upload() -> None:
                    with src.open("rb") as fh:
                        r = plain.post(files_path, files={"file": ("plain.bin", fh, "application/octet-stream")})
                    r.raise_for_status()
                    client.delete_file(container.id, r.json()["id"])

                # Alternate client and baseline, so cache warm-up and neighbours' load favour neither.
                for _ in range(args.rounds):
                    if kept:
                        client.delete_file(container.id, kept.pop())
                    start_rss = rss.reset()
                    up.run(client_upload)
                    up_growth = max(up_growth, (rss.peak - start_rss) / (1 << 20))
                    plain_up.run(plain_upload)

                url = f"{files_path}/{kept[-1]}/content"

                def plain_download() -> None:
                    sink = Discard()
                    with plain.stream("GET", url) as r:
                        for chunk in r.iter_bytes(1 << 20):
                            sink.write(chunk)

                def plain_hashed_download() -> None:
                    # The same plus an inline sha256: separates the hashing cost from the client's own.
                    nonlocal intact
                    digest = hashlib.sha256()
                    with plain.stream("GET", url) as r:
                        for chunk in r.iter_bytes(1 << 20):
                            digest.update(chunk)
                    intact &= digest.hexdigest() == expected

                def client_download() -> None:
                    nonlocal intact
                    sink = Discard()
                    got = client.download_file(container.id, kept[-1], sink)  # type: ignore[arg-type]
                    intact &= got.bytes == size == sink.n and got.sha256 == expected

                for _ in range(args.rounds):
                    plain_down.run(plain_download)
                    plain_hashed.run(plain_hashed_download)
                    start_rss = rss.reset()
                    down.run(client_download)
                    down_growth = max(down_growth, (rss.peak - start_rss) / (1 << 20))
            rss.stop()
        finally:
            server.terminate()
            server.wait(30)

    mib = size / (1 << 20)

    def line(label: str, t: Timed) -> str:
        return f"{label:<44} {mib / t.wall:8.1f} MiB/s, client CPU {1000 * t.cpu / mib:5.2f} ms/MiB"

    def growth(g: float) -> str:
        return f"client RSS growth {g:6.1f} MiB (budget {BUDGET_MIB} MiB): {'OK' if g < BUDGET_MIB else 'OVER'}"

    print(f"file: {mib:.0f} MiB, best of {args.rounds} alternating rounds; "
          f"uploads and downloads intact (size and sha256): {intact}")
    print(line("upload (ContainersClient.upload_file):", up) + ", " + growth(up_growth))
    print(line("baseline plain httpx multipart upload:", plain_up))
    print(line("download (ContainersClient.download_file):", down) + ", " + growth(down_growth))
    print(line("baseline plain httpx streaming download:", plain_down))
    print(line("baseline plain httpx download + inline sha256:", plain_hashed))
    print(f"ratio client upload / plain httpx upload throughput: {plain_up.wall / up.wall:.2f}")
    print(f"ratio client download / plain httpx download throughput: {plain_down.wall / down.wall:.2f} "
          "(1.0 = as fast; the client also hashes sha256 on the way)")
    print(f"ratio client download / plain httpx + sha256 throughput: {plain_hashed.wall / down.wall:.2f}")


if __name__ == "__main__":
    main()

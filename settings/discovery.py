"""Find the embedded Redis, local API and pools file that a running ``hearth up`` uses.

``hearth up`` writes ``<data_dir>/up.json`` with the URLs it serves and the pools file it was given;
any other ``hearth`` command run with the same settings (same data dir) reads it, so it needs no
extra configuration. The file holds no secrets: the embedded Redis listens on loopback only, a
configured Redis URL that carries a password is not written at all, and the API key stays in the
environment.

A ``hearth up`` that was killed (``kill -9``) leaves its file behind; it is ignored when its pid is
gone, or when the pid now belongs to another process (pid reuse: the start time differs).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psutil

UP_FILE = "up.json"


def _process_started(pid: int) -> float | None:
    """When ``pid`` started (epoch seconds), None when it is gone, a zombie or unreadable."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped: it serves nothing
            return None
        return float(proc.create_time())
    except (psutil.Error, OSError):
        return None


@dataclass(frozen=True)
class UpInfo:
    pid: int
    redis_url: str | None
    api_base: str | None
    pools: str | None = None  # absolute path of the pools file ``hearth up`` runs with
    started: float | None = None  # the pid's start time, so a reused pid is not mistaken for it

    def write(self, data_dir: Path) -> Path:
        info = _for_disk(self)
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / UP_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(info)))
        tmp.replace(path)
        return path


def has_password(url: str | None) -> bool:
    if not url:
        return False
    parts = urlsplit(url)
    return parts.password is not None or "password" in parse_qs(parts.query)


def _for_disk(info: UpInfo) -> UpInfo:
    """What may be written: a Redis URL with a password is left out (a configured Redis is in the settings
    of every command that shares them anyway), and the start time is filled in."""
    return replace(
        info,
        redis_url=None if has_password(info.redis_url) else info.redis_url,
        started=info.started if info.started is not None else _process_started(info.pid),
    )


def _alive(info: UpInfo) -> bool:
    started = _process_started(info.pid)
    if started is None:
        return False
    # create_time is rounded differently across reads on some platforms: allow a little slack.
    return info.started is None or abs(started - info.started) < 1.0


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def read_up(data_dir: Path) -> UpInfo | None:
    """The running ``hearth up`` of this data dir, or None if there is none (or it died)."""
    path = data_dir / UP_FILE
    try:
        raw = json.loads(path.read_text())
        started = raw.get("started")
        info = UpInfo(
            pid=int(raw["pid"]),
            redis_url=_opt_str(raw.get("redis_url")),
            api_base=_opt_str(raw.get("api_base")),
            pools=_opt_str(raw.get("pools")),
            started=float(started) if started is not None else None,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return info if _alive(info) else None


def clear_up(data_dir: Path, pid: int) -> None:
    info = read_up(data_dir)
    if info is None or info.pid == pid:
        (data_dir / UP_FILE).unlink(missing_ok=True)


# These take the data dir, not the Settings: the settings ask them (``Settings.resolved_*``), so a
# Settings parameter here would tie the two modules into an import cycle.


def discover_redis_url(data_dir: Path) -> str | None:
    info = read_up(data_dir)
    return info.redis_url if info else None


def discover_api_base(data_dir: Path) -> str | None:
    info = read_up(data_dir)
    return info.api_base if info else None


def discover_pools(data_dir: Path) -> Path | None:
    info = read_up(data_dir)
    return Path(info.pools) if info and info.pools else None


__all__ = [
    "UP_FILE", "UpInfo", "clear_up", "discover_api_base", "discover_pools", "discover_redis_url", "has_password",
    "read_up",
]

"""Find the embedded Redis and local API that a running ``hearth up`` started.

``hearth up`` writes ``<data_dir>/up.json`` with the URLs it serves; any other ``hearth`` command run
with the same settings (same data dir) reads it, so it needs no extra configuration. The file holds
no secrets: the embedded Redis listens on loopback only and the API key stays in the environment.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from settings.config import Settings

UP_FILE = "up.json"


@dataclass(frozen=True)
class UpInfo:
    pid: int
    redis_url: str | None
    api_base: str | None

    def write(self, data_dir: Path) -> Path:
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / UP_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(path)
        return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_up(data_dir: Path) -> UpInfo | None:
    """The running ``hearth up`` of this data dir, or None if there is none (or it died)."""
    path = data_dir / UP_FILE
    try:
        raw = json.loads(path.read_text())
        info = UpInfo(pid=int(raw["pid"]), redis_url=raw.get("redis_url"), api_base=raw.get("api_base"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info if _alive(info.pid) else None


def clear_up(data_dir: Path, pid: int) -> None:
    info = read_up(data_dir)
    if info is None or info.pid == pid:
        (data_dir / UP_FILE).unlink(missing_ok=True)


def discover_redis_url(settings: Settings) -> str | None:
    info = read_up(settings.data_dir)
    return info.redis_url if info else None


def discover_api_base(settings: Settings) -> str | None:
    info = read_up(settings.data_dir)
    return info.api_base if info else None

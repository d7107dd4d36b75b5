"""Dev switches of the local API that change what it *does* (not how it fails), and its request counter.

Why: Hearth copies pool inputs into containers server-side (``file_ids`` on create) and falls back to
streamed uploads for a backend that cannot; that fallback, and the Files API refusing an input, must be
shown against a real server over a socket. ``file_ids``:

* ``copy`` (default): a create's ``file_ids`` are copied in as ``/mnt/data/<filename>`` (SEMANTICS §2.5);
* ``ignore``: they are accepted and dropped, as a gateway that does not forward them (no copy appears);
* ``reject``: a create carrying ``file_ids`` answers 400 ``param: file_ids``.

``files_max_bytes`` lowers the Files API's per-file limit (512 MiB) so "too large" is cheap to provoke.
Set with ``PUT /_dev/switches`` (JSON, the fields given are changed) or ``hearth api --dev --file-ids
ignore``. ``GET /_dev/requests`` counts API requests by endpoint name (``containers.create``, …, the
names of ``faults``), ``DELETE /_dev/requests`` resets the counts: how the tests and the bench count
requests per container at the server.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Literal

FileIdsMode = Literal["copy", "ignore", "reject"]
FILE_IDS_MODES: tuple[str, ...] = ("copy", "ignore", "reject")


@dataclass
class Switches:
    file_ids: FileIdsMode = "copy"
    files_max_bytes: int | None = None


class DevSwitches:
    """Thread-safe switches; shared by the app and its server (they survive a restart of the server)."""

    def __init__(self, *, file_ids: FileIdsMode = "copy", files_max_bytes: int | None = None) -> None:
        self._lock = threading.Lock()
        self._s = Switches(file_ids=file_ids, files_max_bytes=files_max_bytes)

    @property
    def file_ids(self) -> FileIdsMode:
        with self._lock:
            return self._s.file_ids

    @property
    def files_max_bytes(self) -> int | None:
        with self._lock:
            return self._s.files_max_bytes

    def update(self, body: dict[str, Any]) -> None:
        """Change the switches named in ``body``; ``ValueError`` naming the bad field (nothing changed)."""
        unknown = sorted(set(body) - {"file_ids", "files_max_bytes"})
        if unknown:
            raise ValueError(f"unknown switch(es) {unknown}; known: file_ids, files_max_bytes")
        mode = body.get("file_ids", self.file_ids)
        if mode not in FILE_IDS_MODES:
            raise ValueError(f"file_ids: expected one of {', '.join(FILE_IDS_MODES)}, got {mode!r}")
        limit = body.get("files_max_bytes", self.files_max_bytes)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"files_max_bytes: expected a byte count >= 0 or null, got {limit!r}")
        with self._lock:
            self._s = Switches(file_ids=mode, files_max_bytes=limit)

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return asdict(self._s)


class RequestCounter:
    """API requests seen, by endpoint name; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._upload_bytes = 0

    def add(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def add_upload(self, size: int) -> None:
        """Bytes of file content received (Files API and container uploads): what a fill sends."""
        with self._lock:
            self._upload_bytes += size

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @property
    def upload_bytes(self) -> int:
        with self._lock:
            return self._upload_bytes

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self._upload_bytes = 0

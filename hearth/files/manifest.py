"""``manifest.json``: the per-container record of what harvest saved, and what it skipped and why.

The manifest is what makes harvest idempotent and resumable: a file id listed under ``files`` (and
whose object still exists with that size) is never copied again. It is rewritten atomically after
every file, so an interrupted harvest loses at most the record of the file in flight — whose object
is then simply copied again (same key, atomic overwrite), never duplicated.

Skipped entries are advisory: they are re-evaluated on every harvest (a later policy may admit a file)
and dropped once the file is saved.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

MANIFEST_KEY = "manifest.json"
MANIFEST_VERSION = 1


class SkipReason:
    """Why a container file was not saved (the ``reason`` of a skipped entry)."""

    SOURCE = "source"  # its source (user/assistant) is not the one the policy harvests
    FILTERED = "filtered"  # include/exclude globs
    TOO_BIG = "too_big"  # over max_file_bytes
    CONTAINER_CAP = "container_cap"  # saving it would exceed max_container_bytes
    UNSAFE_PATH = "unsafe_path"  # the path would escape the target
    SUPERSEDED = "superseded"  # a newer file in the container has the same path (and so the same key)
    GONE = "gone"  # deleted from the container before it could be copied
    FAILED = "failed"  # every attempt failed; retried on the next harvest


def iso(ts: float) -> str:
    """Epoch seconds as ISO 8601 UTC with a ``Z``."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class ManifestEntry:
    file_id: str
    container_path: str
    storage_key: str
    bytes: int
    sha256: str
    source: str
    created_at: int  # the container file's created_at, epoch seconds, as the API reported it
    harvested_at: str  # ISO 8601 UTC


@dataclass(frozen=True)
class SkippedEntry:
    file_id: str
    container_path: str
    reason: str
    detail: str
    bytes: int | None
    source: str
    created_at: int
    recorded_at: str  # ISO 8601 UTC


@dataclass
class Manifest:
    container_id: str
    files: dict[str, ManifestEntry] = field(default_factory=dict)
    skipped: dict[str, SkippedEntry] = field(default_factory=dict)
    pool: str | None = None
    lease_id: str | None = None
    updated_at: str | None = None

    def add(self, entry: ManifestEntry) -> None:
        self.files[entry.file_id] = entry
        self.skipped.pop(entry.file_id, None)

    def skip(self, entry: SkippedEntry) -> None:
        if entry.file_id not in self.files:
            self.skipped[entry.file_id] = entry

    @property
    def saved_bytes(self) -> int:
        return sum(e.bytes for e in self.files.values())

    def merged_with(self, other: Manifest) -> Manifest:
        """This manifest plus what ``other`` (e.g. a concurrent writer's) saved that this one lacks."""
        ours = {e.storage_key for e in self.files.values()}
        theirs = {fid: e for fid, e in other.files.items() if e.storage_key not in ours}  # ours supersede
        out = Manifest(
            container_id=self.container_id,
            files=theirs | self.files,
            skipped={},
            pool=self.pool or other.pool,
            lease_id=self.lease_id or other.lease_id,
            updated_at=self.updated_at,
        )
        for s in (other.skipped | self.skipped).values():
            out.skip(s)
        return out

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "version": MANIFEST_VERSION,
            "container_id": self.container_id,
            "pool": self.pool,
            "lease_id": self.lease_id,
            "updated_at": self.updated_at,
            "files": [asdict(e) for e in sorted(self.files.values(), key=lambda e: (e.created_at, e.file_id))],
            "skipped": [asdict(e) for e in sorted(self.skipped.values(), key=lambda e: (e.created_at, e.file_id))],
        }
        return (json.dumps(doc, indent=2, ensure_ascii=False, sort_keys=False) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, *, container_id: str) -> Manifest:
        """Parse a manifest; raises ``ValueError`` when it is not one (the caller decides what to do)."""
        doc = json.loads(data.decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("version") != MANIFEST_VERSION:
            raise ValueError("not a version-1 manifest")
        if doc.get("container_id") not in (None, container_id):
            raise ValueError(f"manifest belongs to container {doc.get('container_id')!r}")
        files = {}
        for raw in doc.get("files", []):
            e = ManifestEntry(**{k: raw[k] for k in ManifestEntry.__dataclass_fields__})
            files[e.file_id] = e
        skipped = {}
        for raw in doc.get("skipped", []):
            s = SkippedEntry(**{k: raw.get(k) for k in SkippedEntry.__dataclass_fields__})
            skipped[s.file_id] = s
        return cls(
            container_id=container_id,
            files=files,
            skipped=skipped,
            pool=doc.get("pool"),
            lease_id=doc.get("lease_id"),
            updated_at=doc.get("updated_at"),
        )

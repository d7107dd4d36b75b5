"""The restore: every file a session's earlier containers held, uploaded into its current one.

Identity across generations: a file restored into a container is an upload there, under another
path (``/mnt/data/<32 hex>-b__report.csv``), and that container's harvest saves it again. Each
restore records the uploaded container-file id -> the original path on the container's history
entry (``SessionContainer.restored``), so a later restore knows that manifest entry IS
``/mnt/data/b/report.csv`` by its id, not by guessing from names or timestamps.

Where the files come from: every container a session had is remembered with its harvest target;
``plan`` reads their ``manifest.json`` files oldest first, so a later version of a path wins.

Names: a file comes back as its base name (``/mnt/data/out/chart.png`` -> ``chart.png``; an
upload's ``<32 hex>-report.csv`` -> ``report.csv``); when two paths share a base name, the others
come back with their directories in the name (``b__report.csv``, listed in ``renamed``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterable
from typing import BinaryIO, NamedTuple, cast

from hearth.errors import HearthError, StorageError, UnsafePath
from hearth.files.inputs import restore_name
from hearth.files.manifest import MANIFEST_KEY, Manifest, ManifestEntry
from hearth.files.paths import CONTAINER_ROOT, relative_container_path
from hearth.files.storage import StorageTarget
from hearth.runtime import Runtime
from hearth.sessions.records import SessionRecord
from settings.pools import PoolSpec

log = logging.getLogger(__name__)


class RestoreItem(NamedTuple):
    """One file a restore brings back: its original container path, and its newest saved version."""

    original: str  # e.g. /mnt/data/b/report.csv, whatever name the newest copy had
    target: StorageTarget
    entry: ManifestEntry


def read_manifest(target: StorageTarget, container_id: str) -> Manifest | None:
    """A container's harvest manifest, or None when it is missing or unreadable (said in the log)."""
    try:
        raw = target.read_bytes(MANIFEST_KEY)
        return None if raw is None else Manifest.from_json(raw, container_id=container_id)
    except (ValueError, KeyError, TypeError, StorageError) as exc:
        log.warning("manifest of %s at %s unreadable: %s", container_id, target.url, exc)
        return None


def plan(rt: Runtime, rec: SessionRecord, spec: PoolSpec) -> dict[str, RestoreItem]:
    """Restored name -> the file's original path and where its newest saved version is, over every
    earlier container of the session.

    Keyed by the file's path below ``/mnt/data`` (an upload's by its name): ``a/report.csv`` and
    ``b/report.csv`` are two files. Restored files are uploads, which the backend keeps by base name,
    so when base names collide the first path (sorted) keeps the name and the others get their
    directories in it (``b__report.csv``); ``rec.renamed`` says which path became which name.

    A manifest entry whose file id an earlier restore recorded for that container is the original
    path's file. Every other entry is the container's own (its code wrote it or the app uploaded
    it): a later container's own version beats an earlier one's, and within one container an own
    version beats the copy restored into it (it was written after the restore, whatever the
    whole-second ``created_at`` says), then the manifest's order decides.
    """
    items, _ = rt.inputs(spec)
    input_sizes = {i.dest_name: i.size for i in items if i.dest_name}
    by_path: dict[str, tuple[StorageTarget, ManifestEntry]] = {}
    for past in rec.history:
        if past.container_id == rec.container_id:
            continue
        target = StorageTarget.from_url(past.target, clock=rt.clock)
        manifest = read_manifest(target, past.container_id)
        entries = list(manifest.files.values()) if manifest is not None else []
        copies: dict[str, ManifestEntry] = {}  # original path -> the copy restored into this container
        own: dict[str, ManifestEntry] = {}  # path -> this container's own newest version
        for entry in sorted(entries, key=lambda e: (e.created_at, e.file_id)):
            original = past.restored.get(entry.file_id)
            if original is not None:
                copies[_restore_path(original)] = entry
                continue
            name = restore_name(entry.container_path)
            if entry.source != "assistant" and name in input_sizes and input_sizes[name] in (None, entry.bytes):
                continue  # the pool's input: the fresh container has it already
            own[_restore_path(entry.container_path)] = entry
        for path, entry in (copies | own).items():
            by_path[path] = (target, entry)  # later containers win
    names = _names(by_path)
    rec.renamed = {CONTAINER_ROOT + path: name for path, name in names.items() if name != path.rsplit("/", 1)[-1]}
    return {name: RestoreItem(CONTAINER_ROOT + path, *by_path[path]) for path, name in names.items()}


def restore(rt: Runtime, rec: SessionRecord, spec: PoolSpec, *, renew: Callable[[], None] | None = None) -> list[str]:
    """Upload every file of the session's earlier containers into the current one; the names restored.

    Idempotent: a name already in the container with the right size is not sent again. Each
    object's sha256 is checked against its manifest entry as it streams into the upload; a
    mismatch removes the upload and fails (temporary). ``renew`` runs after each file (it keeps the
    session lock while a long restore runs).
    """
    here = rec.current
    if here is None:
        raise HearthError(f"session {rec.session_id}: current container missing from its history")
    items = plan(rt, rec, spec)
    present: dict[str, dict[int | None, str]] = {}  # restored name -> bytes -> container-file id
    for f in rt.client.list_files(here.container_id, order="asc"):
        if f.source != "assistant":
            present.setdefault(restore_name(f.path), {})[f.bytes] = f.id
    done: list[str] = []
    restored: dict[str, str] = {}  # container-file id -> original path (the file's identity next time)
    for name, (original, target, entry) in items.items():
        already = present.get(name, {}).get(entry.bytes)
        if already is not None:  # a resumed restore: uploaded before the interruption
            restored[already] = original
            done.append(name)
            continue
        with target.open_read(entry.storage_key) as fh:
            reader = _HashingReader(fh)
            uploaded = rt.client.upload_file(here.container_id, cast(BinaryIO, reader), filename=name)
        if reader.hexdigest() != entry.sha256 or (uploaded.bytes is not None and uploaded.bytes != entry.bytes):
            with contextlib.suppress(HearthError):
                rt.client.delete_file(here.container_id, uploaded.id)
            raise StorageError(f"restore of {name}: the stored object does not match its manifest entry "
                               f"({entry.bytes} bytes, sha256 {entry.sha256[:12]}…)")
        restored[uploaded.id] = original
        done.append(name)
        if renew is not None:
            renew()
    here.restored = restored  # saved with the record when the restore finishes
    return done


def _names(paths: Iterable[str]) -> dict[str, str]:
    """Path below /mnt/data -> restored name: top-level files keep their names, then the first path
    (sorted) keeps a base name and the others get their directories in it (``b__report.csv``)."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for path in sorted(paths, key=lambda p: (p.count("/"), p)):
        base = path.rsplit("/", 1)[-1]
        name = base if base not in taken else path.replace("/", "__")
        while name in taken:
            name = "_" + name
        taken.add(name)
        names[path] = name
    return names


def _restore_path(container_path: str) -> str:
    """A saved file's identity for a restore: its path below /mnt/data, with an upload's prefix dropped."""
    name = restore_name(container_path)
    try:
        rel = relative_container_path(container_path)
    except UnsafePath:
        return name
    parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
    return f"{parent}/{name}" if parent else name


class _HashingReader:
    """A read-only stream that hashes what the upload reads; a rewind (a retried upload) starts over."""

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner
        self._hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._inner.read(n)
        self._hash.update(data)
        return data

    def seekable(self) -> bool:
        return self._inner.seekable()

    def tell(self) -> int:
        return self._inner.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        pos = self._inner.seek(offset, whence)
        if pos == 0:
            self._hash = hashlib.sha256()
        return pos

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

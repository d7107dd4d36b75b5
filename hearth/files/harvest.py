"""Harvest: copy the files code wrote in a container to durable storage, losing and duplicating nothing.

A container's files vanish when it expires. ``Harvester.harvest`` lists the container's files, picks
those the ``HarvestPolicy`` wants, and streams each one straight from the API into an atomic write
on the ``StorageTarget`` (never a whole file in memory), checking its size against the listing and the
client's count before the object becomes visible. The sha256 recorded is the one the client computed
over exactly the bytes it handed to storage; ``Harvester(rehash=True)`` hashes them a second time on
their way in and refuses a difference. After every saved file it rewrites ``manifest.json``
atomically, so a harvest killed at any point and run again copies only what the manifest does not
vouch for: an object written but not yet recorded is written again at the same key (an atomic
overwrite, not a duplicate); a temporary left by a killed writer is swept; a half-downloaded file
never reaches its final key. Callers run one harvest of a container at a time (``hearth.files.lock``).

Everything not saved is recorded with a reason (see ``SkipReason``). Errors on one file do not stop
the others; an expired (or vanished) container stops the harvest and the report says so, with the
files saved before that kept.

A long harvest can report how far it got: ``harvest(..., progress=callback)`` calls back with a
``HarvestProgress`` (files and bytes done of the totals the listing announced, the current path) at
the start, after every file and every ``PROGRESS_STEP`` bytes within one; without a callback nothing
extra is computed or called.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

from hearth.api.models import ContainerFile
from hearth.clock import Clock
from hearth.errors import ContainerExpired, HearthError, NotFound, StorageError, UnsafePath
from hearth.files.globs import selected
from hearth.files.manifest import MANIFEST_KEY, Manifest, ManifestEntry, SkippedEntry, SkipReason, iso
from hearth.files.paths import container_path_to_key, relative_container_path
from hearth.files.ports import FilesClient
from hearth.files.storage import AtomicWrite, StorageTarget

log = logging.getLogger(__name__)

SOURCES = ("assistant", "user", "any")
PROGRESS_STEP = 1 << 20  # bytes between progress calls within one file


@dataclass(frozen=True)
class HarvestPolicy:
    """Which files to save. Globs match the path after ``/mnt/data/`` (see ``hearth.files.globs``)."""

    source: str = "assistant"  # "assistant" (files code wrote), "user" (uploads) or "any"
    include: tuple[str, ...] = ()  # empty: everything
    exclude: tuple[str, ...] = ()
    max_file_bytes: int | None = None
    max_container_bytes: int | None = None  # counts what earlier harvests of this container saved
    attempts: int = 3  # per file, for size/hash mismatches and temporary errors

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, not {self.source!r}")
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        for name in ("max_file_bytes", "max_container_bytes"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.attempts < 1:
            raise ValueError("attempts must be >= 1")


@dataclass
class HarvestReport:
    """What one harvest did. ``files``/``bytes`` count this run's copies; ``already`` earlier ones."""

    container_id: str
    target: str
    files: int = 0
    bytes: int = 0
    skipped: int = 0
    failures: int = 0
    already: int = 0
    expired: bool = False  # the container expired or vanished before everything was copied
    saved: list[ManifestEntry] = field(default_factory=list)
    skipped_entries: list[SkippedEntry] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every wanted file is in storage (skips by policy are fine; failures and expiry are not)."""
        return not self.expired and self.failures == 0

    def summary(self) -> dict[str, Any]:
        """The counts as JSON (task results, ``hearth harvest --json``)."""
        return {
            "container_id": self.container_id, "target": self.target, "files": self.files, "bytes": self.bytes,
            "already": self.already, "skipped": self.skipped, "failures": self.failures, "expired": self.expired,
        }


@dataclass(frozen=True)
class HarvestProgress:
    """How far a harvest got. Totals are what the listing announced for the files the policy wants and
    storage lacks; they grow only if a file turns out bigger than listed (or unlisted size)."""

    container_id: str
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    path: str | None = None  # the file being copied, None between files


ProgressCallback = Callable[[HarvestProgress], None]


class _Tracker:
    """Turns per-file, per-chunk events into monotonic ``HarvestProgress`` calls.

    ``planned`` maps each file id the harvest expects to copy to its listed size. A file skipped or
    found already stored still counts as done (with its listed bytes) so the totals are reached; a
    retried download does not move ``bytes_done`` back (the high-water mark of the file counts).
    """

    def __init__(self, container_id: str, planned: dict[str, int], callback: ProgressCallback) -> None:
        self.container_id = container_id
        self.planned = planned
        self.callback = callback
        self.finished: set[str] = set()
        self.files_total = len(planned)
        self.bytes_total = sum(planned.values())
        self.files_done = 0
        self.base = 0  # bytes of finished files
        self.current = 0  # high-water mark of the file being copied
        self.path: str | None = None
        self.last = 0  # bytes_done at the last call

    def emit(self) -> None:
        done = self.base + self.current
        self.bytes_total = max(self.bytes_total, done)
        self.last = done
        self.callback(HarvestProgress(self.container_id, self.files_done, self.files_total, done,
                                      self.bytes_total, self.path))

    def start(self, f: ContainerFile) -> None:
        if f.id not in self.planned:  # not foreseen (storage changed since the pre-pass): count it now
            self.planned[f.id] = f.bytes or 0
            self.files_total += 1
            self.bytes_total += f.bytes or 0
        self.path, self.current = f.path, 0
        self.emit()

    def on_bytes(self, count: int) -> None:
        self.current = max(self.current, count)
        if self.base + self.current - self.last >= PROGRESS_STEP:
            self.emit()

    def finish(self, f: ContainerFile) -> None:
        if f.id not in self.planned or f.id in self.finished:
            return
        self.finished.add(f.id)
        self.files_done += 1
        self.base += max(self.planned[f.id], self.current)
        self.current, self.path = 0, None
        self.emit()


class _Mismatch(HearthError):
    temporary = True


class _OverLimit(HearthError):
    def __init__(self, reason: str, limit: int) -> None:
        super().__init__(f"more than {limit} bytes")
        self.reason = reason


class _CheckingSink:
    """The sink handed to the client: counts, hashes, enforces a byte limit, writes through."""

    def __init__(
        self, writer: AtomicWrite, limit: int | None, reason: str, *, rehash: bool,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self._writer = writer
        self._on_bytes = on_bytes
        self._limit = limit
        self._reason = reason
        self.count = 0
        self.hash = hashlib.sha256() if rehash else None
        self.error: BaseException | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = len(data)
        if self._limit is not None and self.count + n > self._limit:
            self.error = _OverLimit(self._reason, self._limit)
            raise self.error
        try:
            self._writer.write(data if isinstance(data, bytes) else bytes(data))
        except BaseException as exc:
            self.error = exc
            raise
        if self.hash is not None:
            self.hash.update(data)
        self.count += n
        if self._on_bytes is not None:
            self._on_bytes(self.count)
        return n

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False  # a retry must start a fresh write, not rewind this one

    def flush(self) -> None:
        pass


class Harvester:
    """Copies container files to storage. ``client`` speaks the Containers API; ``clock`` stamps times."""

    def __init__(self, client: FilesClient, clock: Clock, *, retry_delay: float = 0.5, rehash: bool = False) -> None:
        """``rehash``: hash the bytes again on their way into storage instead of trusting the client's sha256.

        The client hashes exactly the chunks it hands to our sink, so a second pass only guards against
        a client bug, at the price of one more sha256 pass per byte (the slowest step on small CPUs).
        Sizes are always counted on both sides.
        """
        self.client = client
        self.clock = clock
        self.retry_delay = retry_delay
        self.rehash = rehash

    def harvest(
        self,
        container_id: str,
        target: StorageTarget,
        policy: HarvestPolicy | None = None,
        *,
        pool: str | None = None,
        lease_id: str | None = None,
        progress: ProgressCallback | None = None,
        sweep_min_age: float = 0.0,
    ) -> HarvestReport:
        """Copy the wanted files of ``container_id`` to ``target``; ``progress`` is called as they arrive.

        ``sweep_min_age``: temporaries younger than this are not swept at the start (they may be a live
        writer's); a file's own leftover temporaries are removed whenever it is committed.
        """
        policy = policy or HarvestPolicy()
        report = HarvestReport(container_id=container_id, target=target.url)
        swept = target.sweep_temporaries(min_age=sweep_min_age, now=self.clock.now())
        if swept:
            log.info("harvest %s: swept %d temporaries left by an interrupted harvest", container_id, swept)
        manifest = self._load_manifest(target, container_id, report)
        written: list[int | None] = [target.size(MANIFEST_KEY)]  # just read: no merge needed yet
        manifest.pool = manifest.pool or pool
        manifest.lease_id = lease_id or manifest.lease_id
        dirty = False

        try:
            listing = list(self.client.list_files(container_id, order="asc"))
        except (ContainerExpired, NotFound) as exc:
            report.expired = True
            report.errors.append(f"listing files: {exc}")
            return report

        newest = self._newest_per_key(listing, policy)
        tracker: _Tracker | None = None
        if progress is not None:
            tracker = _Tracker(container_id, self._planned(listing, policy, newest, manifest, target), progress)
            tracker.emit()
        for f in listing:
            prior = manifest.files.get(f.id)
            if prior is not None:
                if target.size(prior.storage_key) == prior.bytes:
                    report.already += 1
                    if tracker is not None:
                        tracker.finish(f)
                    continue
                # Recorded but gone or altered in storage: copy again, the container still has it.
                del manifest.files[f.id]
            outcome = self._one(container_id, f, target, policy, manifest, report, newest, tracker)
            if tracker is not None and outcome != "expired":
                tracker.finish(f)
            if outcome == "saved":
                self._write_manifest(target, manifest, written)
                dirty = False
            elif outcome == "expired":
                report.expired = True
                break
            else:
                dirty = True
        if dirty or report.skipped_entries:
            self._write_manifest(target, manifest, written)
        log.info(
            "harvest %s → %s: %d files (%d bytes) copied, %d already there, %d skipped, %d failed%s",
            container_id, target.url, report.files, report.bytes, report.already, report.skipped,
            report.failures, ", container expired" if report.expired else "",
        )
        return report

    # --- one file ----------------------------------------------------------------------------

    def _one(
        self,
        container_id: str,
        f: ContainerFile,
        target: StorageTarget,
        policy: HarvestPolicy,
        manifest: Manifest,
        report: HarvestReport,
        newest: dict[str, str],
        tracker: _Tracker | None = None,
    ) -> str:
        def skip(reason: str, detail: str) -> str:
            entry = SkippedEntry(
                file_id=f.id, container_path=f.path, reason=reason, detail=detail, bytes=f.bytes,
                source=f.source, created_at=f.created_at, recorded_at=iso(self.clock.now()),
            )
            manifest.skip(entry)
            report.skipped_entries.append(entry)
            if reason == SkipReason.FAILED:
                report.failures += 1
            else:
                report.skipped += 1
            return "skipped"

        if policy.source != "any" and f.source != policy.source:
            return skip(SkipReason.SOURCE, f"source is {f.source!r}, policy harvests {policy.source!r}")
        try:
            key = container_path_to_key(f.path)
            rel = relative_container_path(f.path)
        except UnsafePath as exc:
            log.warning("harvest %s: refused unsafe path %r: %s", container_id, f.path, exc)
            return skip(SkipReason.UNSAFE_PATH, str(exc))
        if newest.get(key, f.id) != f.id:
            return skip(SkipReason.SUPERSEDED, f"{newest[key]} is a newer file at the same path")
        if not selected(rel, policy.include, policy.exclude):
            return skip(SkipReason.FILTERED, "excluded by include/exclude globs")
        if policy.max_file_bytes is not None and f.bytes is not None and f.bytes > policy.max_file_bytes:
            return skip(SkipReason.TOO_BIG, f"{f.bytes} bytes > max_file_bytes {policy.max_file_bytes}")
        room: int | None = None
        if policy.max_container_bytes is not None:
            room = policy.max_container_bytes - manifest.saved_bytes
            if f.bytes is not None and f.bytes > room:
                return skip(SkipReason.CONTAINER_CAP, f"{f.bytes} bytes > {max(room, 0)} left of max_container_bytes")
        limit, limit_reason = policy.max_file_bytes, SkipReason.TOO_BIG
        if room is not None and (limit is None or room < limit):
            limit, limit_reason = room, SkipReason.CONTAINER_CAP

        last: BaseException | None = None
        if tracker is not None:
            tracker.start(f)
        for attempt in range(policy.attempts):
            if attempt:
                self.clock.sleep(self.retry_delay * 2 ** (attempt - 1))
            try:
                entry = self._copy(container_id, f, key, target, limit, limit_reason,
                                   tracker.on_bytes if tracker is not None else None)
            except _OverLimit as exc:
                return skip(exc.reason, f"{exc.message} (size not in the listing; found while copying)")
            except ContainerExpired as exc:
                report.errors.append(f"{f.id}: {exc}")
                return "expired"
            except NotFound as exc:
                if self._container_gone(container_id):
                    report.errors.append(f"{f.id}: {exc}")
                    return "expired"
                return skip(SkipReason.GONE, f"deleted from the container before it was copied: {exc}")
            except HearthError as exc:
                last = exc
                log.warning("harvest %s: %s attempt %d failed: %s", container_id, f.id, attempt + 1, exc)
                if not exc.temporary:
                    break
                continue
            self._supersede(manifest, entry)
            manifest.add(entry)
            report.saved.append(entry)
            report.files += 1
            report.bytes += entry.bytes
            return "saved"
        report.errors.append(f"{f.id} ({f.path}): {last}")
        return skip(SkipReason.FAILED, str(last))

    def _copy(
        self, container_id: str, f: ContainerFile, key: str, target: StorageTarget, limit: int | None, why: str,
        on_bytes: Callable[[int], None] | None = None,
    ) -> ManifestEntry:
        with target.open_atomic(key) as writer:
            sink = _CheckingSink(writer, limit, why, rehash=self.rehash, on_bytes=on_bytes)
            try:
                result = self.client.download_file(container_id, f.id, cast(BinaryIO, sink))
            except BaseException:
                if isinstance(sink.error, HearthError):
                    raise sink.error from None  # the client may have wrapped our own error
                raise
            if sink.error is not None:
                raise sink.error
            if result.bytes != sink.count:
                raise _Mismatch(f"client counted {result.bytes} bytes, storage received {sink.count}")
            if f.bytes is not None and f.bytes != sink.count:
                raise _Mismatch(f"listing says {f.bytes} bytes, download gave {sink.count}")
            digest = result.sha256
            if sink.hash is not None and sink.hash.hexdigest() != digest:
                raise _Mismatch("sha256 of the bytes stored differs from the client's")
            if len(digest) != 64:
                raise _Mismatch("the client reported no sha256 for the download")
            writer.commit()
        with contextlib.suppress(HearthError):  # leftovers of a killed copy of this key: best effort
            target.remove_temporaries_of(key)
        stored = target.size(key)
        if stored != sink.count:
            raise StorageError(f"{key}: storage holds {stored} bytes after commit, wrote {sink.count}")
        return ManifestEntry(
            file_id=f.id, container_path=f.path, storage_key=key, bytes=sink.count, sha256=digest,
            source=f.source, created_at=f.created_at, harvested_at=iso(self.clock.now()),
        )

    @staticmethod
    def _planned(
        listing: list[ContainerFile], policy: HarvestPolicy, newest: dict[str, str], manifest: Manifest,
        target: StorageTarget,
    ) -> dict[str, int]:
        """The files a harvest expects to copy (for progress totals): wanted by the policy, not stored yet.

        Only an estimate of ``_one``'s decisions (the container cap and copy failures are found while
        copying); the tracker counts a file it did not foresee when it starts.
        """
        planned: dict[str, int] = {}
        for f in listing:
            prior = manifest.files.get(f.id)
            if prior is not None and target.size(prior.storage_key) == prior.bytes:
                continue
            if policy.source != "any" and f.source != policy.source:
                continue
            try:
                key = container_path_to_key(f.path)
                rel = relative_container_path(f.path)
            except UnsafePath:
                continue
            if newest.get(key, f.id) != f.id or not selected(rel, policy.include, policy.exclude):
                continue
            if policy.max_file_bytes is not None and f.bytes is not None and f.bytes > policy.max_file_bytes:
                continue
            planned[f.id] = f.bytes or 0
        return planned

    @staticmethod
    def _newest_per_key(listing: list[ContainerFile], policy: HarvestPolicy) -> dict[str, str]:
        """For each storage key, the id of the last-created wanted file mapping to it (it wins)."""
        newest: dict[str, str] = {}
        for f in listing:  # oldest first
            if policy.source != "any" and f.source != policy.source:
                continue
            try:
                newest[container_path_to_key(f.path)] = f.id
            except UnsafePath:
                continue
        return newest

    def _container_gone(self, container_id: str) -> bool:
        try:
            c = self.client.retrieve_container(container_id)
        except (NotFound, ContainerExpired):
            return True
        except HearthError:
            return False
        return c.expired

    @staticmethod
    def _supersede(manifest: Manifest, entry: ManifestEntry) -> None:
        """A newer file at the same path replaces the older one's object; keep one record per key."""
        for fid, e in list(manifest.files.items()):
            if e.storage_key == entry.storage_key and fid != entry.file_id:
                del manifest.files[fid]

    # --- manifest ----------------------------------------------------------------------------

    def _load_manifest(self, target: StorageTarget, container_id: str, report: HarvestReport) -> Manifest:
        raw = target.read_bytes(MANIFEST_KEY)
        if raw is None:
            return Manifest(container_id=container_id)
        try:
            return Manifest.from_json(raw, container_id=container_id)
        except (ValueError, KeyError, TypeError) as exc:
            # Re-copying everything is safe (atomic overwrites); refusing could lose files to expiry.
            report.errors.append(f"{MANIFEST_KEY} unreadable ({exc}); copying every file again")
            log.warning("harvest %s: %s unreadable, starting afresh: %s", container_id, MANIFEST_KEY, exc)
            return Manifest(container_id=container_id)

    def _write_manifest(self, target: StorageTarget, manifest: Manifest, last_size: list[int | None]) -> None:
        """Atomically replace the manifest, first merging what a concurrent harvest may have recorded.

        ``last_size`` holds the size of our previous write; when storage still has that size nobody else
        wrote, and the re-read (which would make a many-file harvest quadratic) is skipped.
        """
        manifest.updated_at = iso(self.clock.now())
        size = target.size(MANIFEST_KEY)
        if size is not None and size != last_size[0]:
            current = target.read_bytes(MANIFEST_KEY)
            other: Manifest | None = None
            if current is not None:
                try:
                    other = Manifest.from_json(current, container_id=manifest.container_id)
                except (ValueError, KeyError, TypeError):
                    other = None
            if other is not None:
                merged = manifest.merged_with(other)
                manifest.files, manifest.skipped = merged.files, merged.skipped
        data = manifest.to_json()
        target.write_bytes(MANIFEST_KEY, data)
        last_size[0] = len(data)

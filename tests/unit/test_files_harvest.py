"""Harvest logic against a tiny in-memory client: filters, caps, checks, resume, expiry.

The integration tests (tests/integration/test_harvest*.py) repeat the important cases against the
real client and the real local API; here the stand-in lets a test corrupt a download or fail at an
exact byte, which a real server does not do on cue.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from hearth.api.models import Container, ContainerFile, FileObject
from hearth.api.transfer import Download
from hearth.clock import ManualClock
from hearth.errors import ContainerExpired, NotFound, TransportError
from hearth.files.harvest import Harvester, HarvestPolicy
from hearth.files.manifest import MANIFEST_KEY
from hearth.files.paths import TEMP_MARKER
from hearth.files.storage import StorageTarget

CID = "cntr_unit"


class StandIn:
    """Just enough of ContainersClient for harvest: files in a dict, downloads in 64 KiB chunks."""

    def __init__(self) -> None:
        self.files: list[ContainerFile] = []
        self.blobs: dict[str, bytes] = {}
        self.expired = False
        self.downloads: list[str] = []
        self.on_download: Callable[[str, int], bytes | None] | None = None  # may corrupt the nth try
        self.explode_after: tuple[str, int, BaseException] | None = None  # (file id, bytes, what to raise)
        self.lie_about_sha = 0  # how many downloads report a wrong sha256

    def add(self, path: str, data: bytes, *, source: str = "assistant", report_bytes: bool = True) -> str:
        fid = f"cfile_{len(self.files):04d}"
        self.files.append(
            ContainerFile(
                id=fid, container_id=CID, created_at=1000 + len(self.files), path=path, source=source,
                bytes=len(data) if report_bytes else None,
            )
        )
        self.blobs[fid] = data
        return fid

    def list_files(self, container_id: str, *, order: str = "asc", page_size: int = 100) -> Iterator[ContainerFile]:
        if self.expired:
            raise ContainerExpired("Container is expired.", status=404)
        return iter(list(self.files))

    def download_file(self, container_id: str, file_id: str, sink: BinaryIO) -> Download:
        if self.expired:
            raise ContainerExpired("Container is expired.", status=404)
        if file_id not in self.blobs:
            raise NotFound(f"File {file_id} not found on container {container_id}.", status=404)
        self.downloads.append(file_id)
        data = self.blobs[file_id]
        if self.on_download is not None:
            data = self.on_download(file_id, self.downloads.count(file_id)) or data
        digest = hashlib.sha256()
        for i in range(0, len(data), 65536):
            chunk = data[i : i + 65536]
            if self.explode_after and self.explode_after[0] == file_id and i >= self.explode_after[1]:
                exc, self.explode_after = self.explode_after[2], None
                raise exc
            sink.write(chunk)
            digest.update(chunk)
        if self.lie_about_sha:
            self.lie_about_sha -= 1
            return Download(bytes=len(data), sha256="0" * 64)
        return Download(bytes=len(data), sha256=digest.hexdigest())

    def upload_file(self, container_id: str, source: Path | BinaryIO, *, filename: str | None = None) -> ContainerFile:
        raise NotImplementedError

    def add_file_by_id(self, container_id: str, file_id: str) -> ContainerFile:
        raise NotImplementedError

    def retrieve_container(self, container_id: str) -> Container:
        return Container(id=CID, name="n", created_at=1, status="expired" if self.expired else "running")

    def retrieve_input_file(self, file_id: str) -> FileObject:
        raise NotImplementedError


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so no handler in harvest swallows it."""


@pytest.fixture
def client() -> StandIn:
    return StandIn()


@pytest.fixture
def target(tmp_path: Path) -> StorageTarget:
    return StorageTarget.from_url(str(tmp_path / "out" / "{container_id}"), container_id=CID)


def harvester(client: StandIn) -> Harvester:
    return Harvester(client, ManualClock(), retry_delay=0.01)


def manifest(target: StorageTarget) -> dict:  # type: ignore[type-arg]
    raw = target.read_bytes(MANIFEST_KEY)
    assert raw is not None
    return json.loads(raw)  # type: ignore[no-any-return]


def stored(target: StorageTarget) -> dict[str, bytes]:
    out = {}
    for key in target.list_keys():
        if key != MANIFEST_KEY:
            with target.open_read(key) as f:
                out[key] = f.read()
    return out


def test_saves_assistant_files_byte_for_byte_with_a_manifest(client: StandIn, target: StorageTarget) -> None:
    a = client.add("/mnt/data/chart.png", b"\x89PNG" * 50_000)
    b = client.add("/mnt/data/out/deep/report.csv", b"x,y\n1,2\n")
    u = client.add("/mnt/data/0123abcd-input.csv", b"in", source="user")
    report = harvester(client).harvest(CID, target, pool="p", lease_id="L")
    assert (report.files, report.skipped, report.failures, report.complete) == (2, 1, 0, True)
    assert report.bytes == 200_000 + 8
    assert stored(target) == {"chart.png": b"\x89PNG" * 50_000, "out/deep/report.csv": b"x,y\n1,2\n"}
    doc = manifest(target)
    assert doc["container_id"] == CID and doc["pool"] == "p" and doc["lease_id"] == "L"
    by_id = {f["file_id"]: f for f in doc["files"]}
    assert set(by_id) == {a, b}
    assert by_id[a]["sha256"] == hashlib.sha256(b"\x89PNG" * 50_000).hexdigest()
    assert by_id[b]["storage_key"] == "out/deep/report.csv" and by_id[b]["container_path"].endswith("report.csv")
    assert by_id[a]["created_at"] == 1000 and by_id[a]["harvested_at"].endswith("Z")
    assert [(s["file_id"], s["reason"]) for s in doc["skipped"]] == [(u, "source")]


def test_source_any_takes_uploads_too(client: StandIn, target: StorageTarget) -> None:
    client.add("/mnt/data/a.txt", b"a")
    client.add("/mnt/data/b.txt", b"b", source="user")
    report = harvester(client).harvest(CID, target, HarvestPolicy(source="any"))
    assert report.files == 2


def test_filters_and_caps_are_recorded_as_skipped(client: StandIn, target: StorageTarget) -> None:
    ok = client.add("/mnt/data/charts/a.png", b"a" * 10)
    tmp = client.add("/mnt/data/tmp/b.png", b"b" * 10)
    csv = client.add("/mnt/data/c.csv", b"c" * 10)
    big = client.add("/mnt/data/big.png", b"d" * 100)
    unknown_big = client.add("/mnt/data/secretly_big.png", b"e" * 100, report_bytes=False)
    ok2 = client.add("/mnt/data/b.png", b"g" * 40)
    over_cap = client.add("/mnt/data/late.png", b"f" * 15)
    unknown_over_cap = client.add("/mnt/data/later.png", b"h" * 15, report_bytes=False)
    policy = HarvestPolicy(include=("**/*.png",), exclude=("tmp/**",), max_file_bytes=50, max_container_bytes=60)
    report = harvester(client).harvest(CID, target, policy)
    reasons = {s.file_id: s.reason for s in report.skipped_entries}
    assert reasons == {
        tmp: "filtered", csv: "filtered", big: "too_big", unknown_big: "too_big", over_cap: "container_cap",
        unknown_over_cap: "container_cap",
    }
    assert [e.file_id for e in report.saved] == [ok, ok2]
    # nothing partial from the downloads stopped at a limit
    assert stored(target) == {"charts/a.png": b"a" * 10, "b.png": b"g" * 40}
    assert not any(TEMP_MARKER in k for k in target.list_keys())


def test_container_cap_counts_earlier_harvests(client: StandIn, target: StorageTarget) -> None:
    client.add("/mnt/data/a.bin", b"a" * 60)
    policy = HarvestPolicy(max_container_bytes=100)
    assert harvester(client).harvest(CID, target, policy).files == 1
    late = client.add("/mnt/data/b.bin", b"b" * 60)
    report = harvester(client).harvest(CID, target, policy)
    assert report.files == 0 and report.already == 1
    assert report.skipped_entries[0].file_id == late and report.skipped_entries[0].reason == "container_cap"


def test_unsafe_paths_are_refused_and_recorded(client: StandIn, target: StorageTarget, tmp_path: Path) -> None:
    bad = [
        client.add("/mnt/data/../../etc/passwd", b"root:x"),
        client.add("/mnt/data//etc/shadow", b"x"),
        client.add("/etc/hosts", b"x"),
        client.add("/mnt/data/%2e%2e/%2e%2e/x", b"x"),
        client.add("/mnt/data/a\\..\\..\\b", b"x"),
        client.add("/mnt/data/\uff0e\uff0e/x", b"x"),
    ]
    good = client.add("/mnt/data/fine.txt", b"ok")
    report = harvester(client).harvest(CID, target)
    assert {s.file_id for s in report.skipped_entries if s.reason == "unsafe_path"} == set(bad)
    assert [e.file_id for e in report.saved] == [good]
    everything = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert everything == [f"out/{CID}/fine.txt", f"out/{CID}/manifest.json"]
    assert {s["reason"] for s in manifest(target)["skipped"]} == {"unsafe_path"}


def test_second_harvest_copies_only_new_files(client: StandIn, target: StorageTarget) -> None:
    client.add("/mnt/data/a.txt", b"a")
    harvester(client).harvest(CID, target)
    client.add("/mnt/data/b.txt", b"b")
    client.downloads.clear()
    report = harvester(client).harvest(CID, target)
    assert (report.files, report.already) == (1, 1)
    assert client.downloads == ["cfile_0001"]
    assert len(manifest(target)["files"]) == 2


def test_a_recorded_object_missing_from_storage_is_copied_again(client: StandIn, target: StorageTarget) -> None:
    client.add("/mnt/data/a.txt", b"abc")
    harvester(client).harvest(CID, target)
    target.fs.rm_file(target.path("a.txt"))
    report = harvester(client).harvest(CID, target)
    assert report.files == 1 and stored(target) == {"a.txt": b"abc"}
    assert len(manifest(target)["files"]) == 1


def test_a_corrupt_download_is_retried_and_never_stored(client: StandIn, target: StorageTarget) -> None:
    fid = client.add("/mnt/data/a.bin", b"good" * 1000)
    client.on_download = lambda f, n: b"bad!" * 999 if n == 1 else None  # first try short
    report = harvester(client).harvest(CID, target)
    assert report.files == 1 and client.downloads == [fid, fid]
    assert stored(target) == {"a.bin": b"good" * 1000}


def test_a_download_that_is_always_wrong_fails_without_an_object(client: StandIn, target: StorageTarget) -> None:
    client.add("/mnt/data/a.bin", b"good" * 1000)
    client.add("/mnt/data/b.bin", b"fine")
    client.on_download = lambda f, n: b"evil" * 1000 if f == "cfile_0000" else None  # same size, other bytes
    # The stand-in hashes what it sends, so flip the listing size to provoke a mismatch every time.
    client.files[0] = client.files[0].model_copy(update={"bytes": 3999})
    report = harvester(client).harvest(CID, target, HarvestPolicy(attempts=3))
    assert report.failures == 1 and report.files == 1 and not report.complete
    assert client.downloads.count("cfile_0000") == 3
    assert stored(target) == {"b.bin": b"fine"}
    assert [s["reason"] for s in manifest(target)["skipped"]] == ["failed"]
    # The failed file is tried again next time (and succeeds once the backend behaves).
    client.files[0] = client.files[0].model_copy(update={"bytes": 4000})
    client.on_download = None
    again = harvester(client).harvest(CID, target)
    assert again.files == 1 and again.complete and manifest(target)["skipped"] == []


def test_expiry_mid_harvest_keeps_what_was_saved(client: StandIn, target: StorageTarget) -> None:
    client.add("/mnt/data/a.txt", b"a")
    client.add("/mnt/data/b.txt", b"b")

    def expire_on_second(fid: str, n: int) -> None:
        if fid == "cfile_0001":
            client.expired = True
            raise ContainerExpired("Container is expired.", status=404)

    client.on_download = expire_on_second
    report = harvester(client).harvest(CID, target)
    assert report.expired and not report.complete and report.files == 1
    assert stored(target) == {"a.txt": b"a"} and len(manifest(target)["files"]) == 1
    again = harvester(client).harvest(CID, target)  # listing an expired container
    assert again.expired and again.files == 0 and stored(target) == {"a.txt": b"a"}


def test_a_file_deleted_before_copy_is_skipped_as_gone(client: StandIn, target: StorageTarget) -> None:
    fid = client.add("/mnt/data/a.txt", b"a")
    del client.blobs[fid]
    report = harvester(client).harvest(CID, target)
    assert not report.expired and report.skipped_entries[0].reason == "gone"


def test_temporary_errors_are_retried_per_file(client: StandIn, target: StorageTarget) -> None:
    client.add("/mnt/data/a.txt", b"abc")

    def drop_first(fid: str, n: int) -> None:
        if n == 1:
            raise TransportError("connection reset")

    client.on_download = drop_first
    assert harvester(client).harvest(CID, target).files == 1


@pytest.mark.parametrize("point", ["mid_download", "before_rename", "after_rename", "manifest_write"])
def test_a_crash_anywhere_then_a_rerun_loses_and_duplicates_nothing(
    client: StandIn, tmp_path: Path, point: str
) -> None:
    files = {f"/mnt/data/f{i}.bin": bytes([i]) * (70_000 + i) for i in range(4)}
    for path, data in files.items():
        client.add(path, data)

    class Crashing(StorageTarget):
        armed = True
        renames = 0
        manifest_writes = 0

        def _rename(self, tmp: str, final: str) -> None:
            if final.endswith("f2.bin") and point == "before_rename" and Crashing.armed:
                Crashing.armed = False
                raise Crash
            super()._rename(tmp, final)
            if final.endswith("f2.bin") and point == "after_rename" and Crashing.armed:
                Crashing.armed = False
                raise Crash

        def write_bytes(self, key: str, data: bytes) -> None:
            if key == MANIFEST_KEY and point == "manifest_write" and Crashing.armed:
                Crashing.manifest_writes += 1
                if Crashing.manifest_writes == 2:
                    Crashing.armed = False
                    raise Crash
            super().write_bytes(key, data)

    if point == "mid_download":
        client.explode_after = ("cfile_0002", 65536, Crash())
    root = str(tmp_path / "out")
    with pytest.raises(Crash):
        Harvester(client, ManualClock()).harvest(CID, Crashing.from_url(root, container_id=CID))
    # A fresh process, a fresh harvester, the same storage.
    target = StorageTarget.from_url(root, container_id=CID)
    report = Harvester(client, ManualClock()).harvest(CID, target)
    assert report.complete
    want = {p.removeprefix("/mnt/data/"): d for p, d in files.items()}
    assert stored(target) == want
    doc = manifest(target)
    assert sorted(f["file_id"] for f in doc["files"]) == [f"cfile_{i:04d}" for i in range(4)]
    assert not any(TEMP_MARKER in k for k in target.list_keys())


def test_an_unreadable_manifest_means_copy_everything_again(client: StandIn, target: StorageTarget) -> None:
    client.add("/mnt/data/a.txt", b"a")
    target.write_bytes(MANIFEST_KEY, b"{not json")
    report = harvester(client).harvest(CID, target)
    assert report.files == 1 and report.errors and "unreadable" in report.errors[0]
    assert len(manifest(target)["files"]) == 1


def test_a_newer_file_at_the_same_path_supersedes_the_older(client: StandIn, target: StorageTarget) -> None:
    client.add("/mnt/data/a.txt", b"v1")
    harvester(client).harvest(CID, target)
    client.add("/mnt/data/a.txt", b"v2-longer")
    report = harvester(client).harvest(CID, target)
    assert report.files == 1
    assert stored(target) == {"a.txt": b"v2-longer"}
    assert [f["file_id"] for f in manifest(target)["files"]] == ["cfile_0001"]
    assert harvester(client).harvest(CID, target).files == 0  # stable: no ping-pong between versions


def test_rehash_catches_a_client_whose_sha256_is_wrong(client: StandIn, target: StorageTarget) -> None:
    client.add("/mnt/data/a.bin", b"abc" * 100)
    client.lie_about_sha = 1
    report = Harvester(client, ManualClock(), rehash=True).harvest(CID, target)
    assert report.files == 1 and len(client.downloads) == 2
    assert report.saved[0].sha256 == hashlib.sha256(b"abc" * 100).hexdigest()

"""Harvest against the real local API over a socket, with the real client, into a local directory.

Files "written by code" are made with the local API's dev switch (source assistant, raw path).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from hearth.api.client import ContainersClient
from hearth.api.models import ContainerFile, CreateContainerRequest, ExpiresAfter
from hearth.api.retry import RetryPolicy
from hearth.api.transfer import Download
from hearth.clock import ManualClock
from hearth.files.harvest import Harvester, HarvestPolicy
from hearth.files.manifest import MANIFEST_KEY
from hearth.files.paths import TEMP_MARKER
from hearth.files.storage import StorageTarget
from tests.fixtures.localapi import LocalAPI

REPO = Path(__file__).resolve().parents[2]


def make_client(api: LocalAPI) -> ContainersClient:
    return ContainersClient(api.base_url, dialect="openai", clock=ManualClock(), rng=random.Random(0),
                            retry=RetryPolicy(max_retries=2, base=0.01, cap=0.05), timeout=30)


@pytest.fixture
def client(local_api: LocalAPI) -> Iterator[ContainersClient]:
    with make_client(local_api) as c:
        yield c


@pytest.fixture
def container_id(client: ContainersClient) -> str:
    return client.create_container(CreateContainerRequest(name="hearth-harvest-test")).id


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative POSIX path → bytes), manifest excluded."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST_KEY
    }


def manifest(root: Path) -> dict[str, Any]:
    return json.loads((root / MANIFEST_KEY).read_bytes())  # type: ignore[no-any-return]


def test_files_written_by_code_are_all_in_storage_byte_for_byte(
    local_api: LocalAPI, client: ContainersClient, container_id: str, tmp_path: Path
) -> None:
    rng = random.Random(5)
    written = {
        "/mnt/data/chart.png": rng.randbytes(3 * 2**20 + 17),  # several download chunks
        "/mnt/data/reports/2024/q1.csv": b"a,b\n1,2\n",
        "/mnt/data/empty.txt": b"",
        "/mnt/data/odd name: v1?.txt": b"odd",
        "/mnt/data/manifest.json": b'{"mine": true}',  # a file code named like our manifest
    }
    for path, data in written.items():
        local_api.write_assistant_file(container_id, path, data)
    client.upload_file(container_id, _bytes_file(tmp_path / "in.csv", b"input"), filename="in.csv")

    target = StorageTarget.from_url(str(tmp_path / "harvest" / "{pool}" / "{container_id}"),
                                    pool="reports", container_id=container_id)
    report = Harvester(client, ManualClock()).harvest(container_id, target, pool="reports", lease_id="lease-1")

    root = tmp_path / "harvest" / "reports" / container_id
    assert report.complete and report.files == len(written) and report.skipped == 1
    assert tree(root) == {
        "chart.png": written["/mnt/data/chart.png"],
        "reports/2024/q1.csv": b"a,b\n1,2\n",
        "empty.txt": b"",
        "odd name%3A v1%3F.txt": b"odd",
        "%6Danifest.json": b'{"mine": true}',
    }
    doc = manifest(root)
    assert doc["lease_id"] == "lease-1" and doc["pool"] == "reports"
    listed = {f.id: f for f in client.list_files(container_id)}
    for entry in doc["files"]:
        f = listed[entry["file_id"]]
        assert entry["container_path"] == f.path and entry["source"] == "assistant"
        assert entry["bytes"] == len(written[f.path]) == (root / entry["storage_key"]).stat().st_size
        assert entry["sha256"] == hashlib.sha256(written[f.path]).hexdigest()
    assert [s["reason"] for s in doc["skipped"]] == ["source"]


def _bytes_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


TRAVERSALS = [
    "/mnt/data/../../etc/passwd",
    "/mnt/data/../../../../tmp/hearth-escape",
    "/mnt/data//etc/cron.d/x",
    "/etc/hosts",
    "/mnt/data/%2e%2e/%2e%2e/escape",
    "/mnt/data/a\\..\\..\\escape",
    "/mnt/data/ok/../../escape",
]


def test_traversal_attempts_are_refused_and_recorded(
    local_api: LocalAPI, client: ContainersClient, container_id: str, tmp_path: Path
) -> None:
    for path in TRAVERSALS:
        local_api.write_assistant_file(container_id, path, b"pwned")
    local_api.write_assistant_file(container_id, "/mnt/data/ok/fine.txt", b"fine")
    out = tmp_path / "a" / "b" / "c"
    target = StorageTarget.from_url(str(out), container_id=container_id)
    report = Harvester(client, ManualClock()).harvest(container_id, target)

    assert report.files == 1 and report.skipped == len(TRAVERSALS) and report.complete
    skipped = {s["container_path"]: s["reason"] for s in manifest(out / container_id)["skipped"]}
    assert skipped == dict.fromkeys(TRAVERSALS, "unsafe_path")
    # Nothing anywhere under tmp_path but the one good file and the manifest (the API's own data aside).
    found = sorted(
        p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
        if p.is_file() and "localapi" not in p.relative_to(tmp_path).parts
    )
    assert found == [f"a/b/c/{container_id}/manifest.json", f"a/b/c/{container_id}/ok/fine.txt"]
    assert not Path("/tmp/hearth-escape").exists()


def test_a_second_harvest_copies_only_new_files(
    local_api: LocalAPI, client: ContainersClient, container_id: str, tmp_path: Path
) -> None:
    local_api.write_assistant_file(container_id, "/mnt/data/one.txt", b"1")
    local_api.write_assistant_file(container_id, "/mnt/data/two.txt", b"2")
    target = StorageTarget.from_url(str(tmp_path), container_id=container_id)
    first = Harvester(client, ManualClock()).harvest(container_id, target)
    assert first.files == 2
    inode = (tmp_path / container_id / "one.txt").stat().st_ino

    local_api.write_assistant_file(container_id, "/mnt/data/three.txt", b"3")
    counting = CountingClient(client)
    second = Harvester(counting, ManualClock()).harvest(container_id, target)
    assert (second.files, second.already, second.bytes) == (1, 2, 1)
    assert len(counting.downloads) == 1
    assert (tmp_path / container_id / "one.txt").stat().st_ino == inode  # not rewritten
    assert len(manifest(tmp_path / container_id)["files"]) == 3
    third = Harvester(counting, ManualClock()).harvest(container_id, target)
    assert third.files == 0 and third.already == 3 and len(counting.downloads) == 1


class CountingClient:
    """Delegates to the real client; remembers downloads and can run a hook after each one."""

    def __init__(self, inner: ContainersClient, after_download: Any = None) -> None:
        self.inner = inner
        self.downloads: list[str] = []
        self.after_download = after_download

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def list_files(self, container_id: str, *, order: str = "asc", page_size: int = 100) -> Iterator[ContainerFile]:
        return self.inner.list_files(container_id, order=order, page_size=page_size)

    def download_file(self, container_id: str, file_id: str, sink: BinaryIO) -> Download:
        result = self.inner.download_file(container_id, file_id, sink)
        self.downloads.append(file_id)
        if self.after_download is not None:
            self.after_download(file_id)
        return result


def test_a_container_that_expires_mid_harvest_keeps_what_was_saved(
    local_api: LocalAPI, client: ContainersClient, tmp_path: Path
) -> None:
    cid = client.create_container(
        CreateContainerRequest(name="hearth-expiring", expires_after=ExpiresAfter(anchor="last_active_at", minutes=1))
    ).id
    for i in range(3):
        local_api.write_assistant_file(cid, f"/mnt/data/f{i}.txt", f"file {i}".encode())
    expire = CountingClient(client, after_download=lambda fid: local_api.advance_clock(3600))
    target = StorageTarget.from_url(str(tmp_path), container_id=cid)
    report = Harvester(expire, ManualClock()).harvest(cid, target)
    assert report.expired and not report.complete
    assert report.files == 1 and tree(tmp_path / cid) == {"f0.txt": b"file 0"}
    assert len(manifest(tmp_path / cid)["files"]) == 1
    again = Harvester(client, ManualClock()).harvest(cid, target)
    assert again.expired and tree(tmp_path / cid) == {"f0.txt": b"file 0"}


def test_the_policy_filters_with_the_real_listing(
    local_api: LocalAPI, client: ContainersClient, container_id: str, tmp_path: Path
) -> None:
    local_api.write_assistant_file(container_id, "/mnt/data/plots/a.png", b"a" * 100)
    local_api.write_assistant_file(container_id, "/mnt/data/plots/big.png", b"b" * 5000)
    local_api.write_assistant_file(container_id, "/mnt/data/scratch/tmp.png", b"c")
    local_api.write_assistant_file(container_id, "/mnt/data/log.txt", b"d")
    target = StorageTarget.from_url(str(tmp_path), container_id=container_id)
    policy = HarvestPolicy(include=("**/*.png",), exclude=("scratch/**",), max_file_bytes=1000)
    report = Harvester(client, ManualClock()).harvest(container_id, target, policy)
    assert tree(tmp_path / container_id) == {"plots/a.png": b"a" * 100}
    assert sorted(s.reason for s in report.skipped_entries) == ["filtered", "filtered", "too_big"]


# --- a harvest process killed (SIGKILL) at an exact point, then run again ------------------------

CRASHING_HARVEST = textwrap.dedent(
    """
    import os, signal, sys
    from hearth.api.client import ContainersClient
    from hearth.clock import ManualClock
    from hearth.files.harvest import Harvester
    from hearth.files.storage import AtomicWrite, StorageTarget

    base_url, cid, root, point, victim = sys.argv[1:6]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    class Dying(AtomicWrite):
        def write(self, data):
            n = super().write(data)
            if point == "mid_download" and self.key == victim and self.bytes_written >= 2**20:
                die()
            return n

    class Target(StorageTarget):
        def open_atomic(self, key):
            return Dying(self, key)

        def _rename(self, tmp, final):
            if point == "before_rename" and final.endswith("/" + victim):
                die()
            super()._rename(tmp, final)
            if point == "after_rename" and final.endswith("/" + victim):
                die()

    with ContainersClient(base_url, dialect="openai") as client:
        Harvester(client, ManualClock()).harvest(cid, Target.from_url(root, container_id=cid))
    sys.exit(3)  # the crash point was never reached
    """
)


@pytest.mark.parametrize("point", ["mid_download", "before_rename", "after_rename"])
def test_a_harvest_killed_anywhere_resumes_without_loss_duplicates_or_corruption(
    local_api: LocalAPI, client: ContainersClient, container_id: str, tmp_path: Path, point: str
) -> None:
    rng = random.Random(11)
    written = {f"/mnt/data/part{i}.bin": rng.randbytes(2**20 + 4096 * i) for i in range(4)}
    written["/mnt/data/part1.bin"] = rng.randbytes(3 * 2**20)  # the victim: big enough to die mid-way
    for path, data in written.items():
        local_api.write_assistant_file(container_id, path, data)
    root = str(tmp_path / "out")
    script = tmp_path / "crash.py"
    script.write_text(CRASHING_HARVEST)
    proc = subprocess.run(
        [sys.executable, str(script), local_api.base_url, container_id, root, point, "part1.bin"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, timeout=120,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    out = tmp_path / "out" / container_id
    leftovers = [p.name for p in out.rglob("*") if TEMP_MARKER in p.name]
    if point in ("mid_download", "before_rename"):
        assert leftovers and not (out / "part1.bin").exists()  # the kill left a temporary, never a partial file
    else:
        assert (out / "part1.bin").exists()
        assert "part1.bin" not in {f["storage_key"] for f in manifest(out)["files"]}  # saved, not yet recorded

    target = StorageTarget.from_url(root, container_id=container_id)
    report = Harvester(client, ManualClock()).harvest(container_id, target)
    assert report.complete
    assert tree(out) == {p.removeprefix("/mnt/data/"): d for p, d in written.items()}
    doc = manifest(out)
    assert sorted(f["storage_key"] for f in doc["files"]) == sorted(p.removeprefix("/mnt/data/") for p in written)
    for f in doc["files"]:
        assert f["sha256"] == hashlib.sha256(written[f["container_path"]]).hexdigest()
    assert not [p for p in out.rglob("*") if TEMP_MARKER in p.name]

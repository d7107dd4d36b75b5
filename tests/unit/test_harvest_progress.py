"""Harvest progress: the callback sees done counts only grow and reach the totals the listing announced.

Uses the in-memory stand-in client of ``test_files_harvest`` (downloads in 64 KiB chunks, failures on
cue); the real-API check is in ``test_a_real_harvest_reports_progress_to_the_totals`` below.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

from hearth.api.client import ContainersClient
from hearth.api.models import CreateContainerRequest
from hearth.api.retry import RetryPolicy
from hearth.clock import ManualClock
from hearth.errors import TransportError
from hearth.files.harvest import PROGRESS_STEP, Harvester, HarvestPolicy, HarvestProgress
from hearth.files.storage import StorageTarget
from tests.fixtures.localapi import LocalAPI
from tests.unit.test_files_harvest import CID, StandIn, harvester


def assert_monotonic(seen: list[HarvestProgress]) -> None:
    assert seen, "progress was never reported"
    for before, after in itertools.pairwise(seen):
        assert after.files_done >= before.files_done
        assert after.bytes_done >= before.bytes_done
        assert after.files_total >= before.files_total and after.bytes_total >= before.bytes_total
    for p in seen:
        assert p.container_id == CID or p.container_id.startswith("cntr_")
        assert 0 <= p.files_done <= p.files_total and 0 <= p.bytes_done <= p.bytes_total


def test_progress_grows_to_the_listed_totals(tmp_path: Path) -> None:
    client = StandIn()
    big = b"x" * (3 * PROGRESS_STEP + 5)
    client.add("/mnt/data/big.bin", big)
    client.add("/mnt/data/small.csv", b"a,b\n")
    client.add("/mnt/data/in.csv", b"upload", source="user")  # not wanted: not in the totals
    client.add("/mnt/data/tmp/x.log", b"zzz")  # excluded by the policy
    target = StorageTarget.from_url(str(tmp_path / "out"), container_id=CID)
    seen: list[HarvestProgress] = []

    report = harvester(client).harvest(CID, target, HarvestPolicy(exclude=("tmp/**",)), progress=seen.append)

    assert report.files == 2 and report.complete
    assert_monotonic(seen)
    assert (seen[0].files_done, seen[0].bytes_done) == (0, 0)
    assert (seen[0].files_total, seen[0].bytes_total) == (2, len(big) + 4)
    last = seen[-1]
    assert (last.files_done, last.files_total, last.bytes_done, last.bytes_total) == (2, 2, len(big) + 4, len(big) + 4)
    # within the big file, progress came per PROGRESS_STEP, naming the file being copied
    mid = [p for p in seen if p.path == "/mnt/data/big.bin" and 0 < p.bytes_done < len(big)]
    assert len(mid) >= 2


def test_retries_and_skips_still_reach_the_totals(tmp_path: Path) -> None:
    client = StandIn()
    flaky = client.add("/mnt/data/flaky.bin", b"f" * (2 * PROGRESS_STEP))
    client.add("/mnt/data/later.bin", b"l" * 100)
    client.add("/mnt/data/unsized.bin", b"u" * 70, report_bytes=False)  # size learned while copying
    client.explode_after = (flaky, PROGRESS_STEP + 65536, TransportError("connection reset"))
    target = StorageTarget.from_url(str(tmp_path / "out"), container_id=CID)
    seen: list[HarvestProgress] = []

    # the cap leaves no room for later.bin after flaky.bin: skipped, but counted done
    report = harvester(client).harvest(
        CID, target, HarvestPolicy(max_container_bytes=2 * PROGRESS_STEP + 50), progress=seen.append
    )

    assert client.downloads.count(flaky) == 2  # the retry happened
    assert report.files == 1 and report.skipped == 2
    assert_monotonic(seen)
    last = seen[-1]
    assert last.files_done == last.files_total == 3
    assert last.bytes_done == last.bytes_total


def test_already_stored_files_are_not_counted_again(tmp_path: Path) -> None:
    client = StandIn()
    client.add("/mnt/data/a.txt", b"a" * 10)
    target = StorageTarget.from_url(str(tmp_path / "out"), container_id=CID)
    harvester(client).harvest(CID, target)
    client.add("/mnt/data/b.txt", b"b" * 20)
    seen: list[HarvestProgress] = []

    report = harvester(client).harvest(CID, target, progress=seen.append)

    assert (report.files, report.already) == (1, 1)
    assert_monotonic(seen)
    assert (seen[-1].files_done, seen[-1].files_total, seen[-1].bytes_done, seen[-1].bytes_total) == (1, 1, 20, 20)


def test_a_real_harvest_reports_progress_to_the_totals(local_api: LocalAPI, tmp_path: Path) -> None:
    """The same through the real client and the local API over a socket (its own download chunks)."""
    data = random.Random(3).randbytes(2 * PROGRESS_STEP + 123)
    with ContainersClient(local_api.base_url, dialect="openai", clock=ManualClock(), rng=random.Random(0),
                          retry=RetryPolicy(max_retries=2, base=0.01, cap=0.05), timeout=30) as client:
        cid = client.create_container(CreateContainerRequest(name="hearth-progress-test")).id
        local_api.write_assistant_file(cid, "/mnt/data/out.bin", data)
        local_api.write_assistant_file(cid, "/mnt/data/note.txt", b"done")
        target = StorageTarget.from_url(str(tmp_path / "out"), container_id=cid)
        seen: list[HarvestProgress] = []
        report = Harvester(client, ManualClock()).harvest(cid, target, progress=seen.append)

    assert report.files == 2 and report.complete
    assert_monotonic(seen)
    total = len(data) + 4
    assert (seen[0].files_total, seen[0].bytes_total) == (2, total)
    assert (seen[-1].files_done, seen[-1].bytes_done) == (2, total)
    with target.open_read("out.bin") as stored:
        assert stored.read() == data

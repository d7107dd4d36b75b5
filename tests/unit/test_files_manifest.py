"""manifest.json: round trip, supersession and merging with a concurrent writer's record."""

from __future__ import annotations

import json

import pytest

from hearth.files.manifest import Manifest, ManifestEntry, SkippedEntry, iso


def _entry(fid: str, key: str, n: int = 3, created: int = 10) -> ManifestEntry:
    return ManifestEntry(fid, f"/mnt/data/{key}", key, n, "ab" * 32, "assistant", created, iso(1_700_000_000))


def _skip(fid: str) -> SkippedEntry:
    return SkippedEntry(fid, "/mnt/data/../x", "unsafe_path", "dot segment", 1, "assistant", 5, iso(1_700_000_000))


def test_round_trip_keeps_every_field() -> None:
    m = Manifest("cntr_1", pool="p", lease_id="L")
    m.add(_entry("cfile_b", "b.txt", created=20))
    m.add(_entry("cfile_a", "a.txt", created=10))
    m.skip(_skip("cfile_s"))
    doc = json.loads(m.to_json())
    assert [f["file_id"] for f in doc["files"]] == ["cfile_a", "cfile_b"]  # by created_at
    assert set(doc["files"][0]) == {
        "file_id", "container_path", "storage_key", "bytes", "sha256", "source", "created_at", "harvested_at",
    }
    assert doc["skipped"][0]["reason"] == "unsafe_path"
    back = Manifest.from_json(m.to_json(), container_id="cntr_1")
    assert back.files == m.files and back.skipped == m.skipped and back.pool == "p"
    assert iso(0) == "1970-01-01T00:00:00Z"


def test_saving_a_file_drops_its_skip_record() -> None:
    m = Manifest("c")
    m.skip(_skip("f"))
    m.add(_entry("f", "f.txt"))
    assert "f" not in m.skipped
    m.skip(_skip("f"))  # a saved file is never also "skipped"
    assert "f" not in m.skipped


def test_merge_keeps_a_concurrent_writers_files_but_not_superseded_keys() -> None:
    ours = Manifest("c")
    ours.add(_entry("new", "same.txt"))
    theirs = Manifest("c")
    theirs.add(_entry("old", "same.txt"))
    theirs.add(_entry("other", "other.txt"))
    merged = ours.merged_with(theirs)
    assert set(merged.files) == {"new", "other"}


def test_refuses_another_containers_manifest() -> None:
    with pytest.raises(ValueError):
        Manifest.from_json(Manifest("cntr_other").to_json(), container_id="cntr_1")
    with pytest.raises(ValueError):
        Manifest.from_json(b'{"version": 99}', container_id="cntr_1")

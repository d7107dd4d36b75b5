"""Storage targets: URL templates, atomic writes (never a partial object at a key), temporaries swept."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from hearth.clock import ManualClock
from hearth.errors import ConfigError, StorageError
from hearth.files.paths import TEMP_MARKER
from hearth.files.storage import StorageTarget, render_url

# 2024-02-29 12:00:00 UTC
LEAP_DAY = 1_709_208_000.0


def test_render_fills_placeholders_from_an_injected_clock() -> None:
    url = render_url(
        "s3://b/{pool}/{date}/{year}-{month}-{day}/{lease_id}/{container_id}",
        clock=ManualClock(LEAP_DAY), pool="reports", container_id="cntr_1", lease_id="L1",
    )
    assert url == "s3://b/reports/2024-02-29/2024-02-29/L1/cntr_1"


def test_render_appends_the_container_when_the_template_lacks_it() -> None:
    assert render_url("/srv/out/{pool}", pool="p", container_id="cntr_9") == "/srv/out/p/cntr_9"
    assert render_url("/srv/out/", container_id="cntr_9") == "/srv/out/cntr_9"
    assert render_url("/srv/out/{lease_id}", container_id="c") == "/srv/out/none/c"


def test_render_refuses_unknown_placeholders() -> None:
    with pytest.raises(ConfigError, match="contianer_id"):
        render_url("/srv/{contianer_id}")
    with pytest.raises(ConfigError):
        render_url("/srv/{pool")


def test_placeholder_values_cannot_move_the_target() -> None:
    url = render_url("/srv/out/{pool}/{container_id}", pool="../../etc", container_id="a/b")
    assert url == "/srv/out/..%2F..%2Fetc/a%2Fb"
    assert render_url("/srv/{pool}/{container_id}", pool="..", container_id=".") == "/srv/.%2E/%2E"


def test_from_url_local_default_and_file_scheme(tmp_path: Path) -> None:
    plain = StorageTarget.from_url(str(tmp_path / "{pool}"), pool="p", container_id="c")
    scheme = StorageTarget.from_url(tmp_path.as_uri() + "/{pool}/{container_id}", pool="p", container_id="c")
    for t in (plain, scheme):
        assert t.atomic_rename and t.is_local
        t.write_bytes("x/y.txt", b"hi")
    assert (tmp_path / "p" / "c" / "x" / "y.txt").read_bytes() == b"hi"


def test_from_url_unknown_protocol_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        StorageTarget.from_url("nosuchproto://bucket/x")


def test_commit_makes_the_object_visible_and_replaces_atomically(tmp_path: Path) -> None:
    t = StorageTarget.from_url(str(tmp_path))
    t.write_bytes("a/b.bin", b"old")
    with t.open_atomic("a/b.bin") as w:
        w.write(b"new-")
        assert (tmp_path / "a" / "b.bin").read_bytes() == b"old"  # not visible until commit
        temps = [p for p in os.listdir(tmp_path / "a") if TEMP_MARKER in p]
        assert len(temps) == 1  # in the same directory, so the rename is atomic
        w.write(b"content")
        w.commit()
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"new-content"
    assert t.list_keys() == ["a/b.bin"]
    assert t.size("a/b.bin") == 11


def test_an_aborted_write_leaves_nothing(tmp_path: Path) -> None:
    t = StorageTarget.from_url(str(tmp_path))
    with pytest.raises(RuntimeError), t.open_atomic("x.bin") as w:
        w.write(b"partial")
        raise RuntimeError("download dropped")
    assert t.list_keys() == []
    assert not t.exists("x.bin")


def test_a_failed_rename_leaves_the_old_object_and_no_temporary(tmp_path: Path) -> None:
    class BrokenRename(StorageTarget):
        def _rename(self, tmp_path: str, final_path: str) -> None:
            raise OSError(28, "No space left on device")

    t = BrokenRename.from_url(str(tmp_path))
    (tmp_path / "k").write_bytes(b"old")
    with pytest.raises(StorageError) as info, t.open_atomic("k") as w:
        w.write(b"new")
        w.commit()
    assert info.value.temporary
    assert t.list_keys() == ["k"] and (tmp_path / "k").read_bytes() == b"old"


def test_sweep_removes_only_temporaries_of_killed_writers(tmp_path: Path) -> None:
    t = StorageTarget.from_url(str(tmp_path))
    t.write_bytes("d/keep.txt", b"1")
    (tmp_path / "d" / f"keep.txt{TEMP_MARKER}deadbeef").write_bytes(b"half")
    (tmp_path / f"x{TEMP_MARKER}1").write_bytes(b"half")
    assert t.sweep_temporaries() == 2
    assert t.list_keys() == ["d/keep.txt"]


def test_keys_that_escape_are_refused(tmp_path: Path) -> None:
    t = StorageTarget.from_url(str(tmp_path / "root"))
    for bad in ("../x", "/etc/passwd", "a//b", "a/./b", "", "a\\b"):
        with pytest.raises(StorageError):
            t.path(bad)


def test_memory_filesystem_uses_rename_too() -> None:
    root = f"memory://hearth-test-{uuid.uuid4().hex}"
    t = StorageTarget.from_url(root)
    assert t.atomic_rename and not t.is_local
    t.write_bytes("m.json", b"{}")
    assert t.read_bytes("m.json") == b"{}"
    assert t.read_bytes("absent") is None
    assert t.list_keys() == ["m.json"]
    t.fs.rm(t.root, recursive=True)

"""Container paths → storage keys: traversal refused, awkward names mapped reversibly (hypothesis)."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hearth.errors import UnsafePath
from hearth.files.paths import (
    MAX_SEGMENT_BYTES,
    TEMP_MARKER,
    container_path_to_key,
    key_to_container_path,
    safe_name,
)


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("/mnt/data/a/b.png", "a/b.png"),
        ("/mnt/data/report.pdf", "report.pdf"),
        ("/mnt/data/100%.txt", "100%25.txt"),
        ("/mnt/data/a:b?.csv", "a%3Ab%3F.csv"),
        ('/mnt/data/x*y"<z>|.txt', "x%2Ay%22%3Cz%3E%7C.txt"),
        ("/mnt/data/tab\there", "tab%09here"),
        ("/mnt/data/CON", "%43ON"),
        ("/mnt/data/dir/nul.txt", "dir/%6Eul.txt"),
        ("/mnt/data/ends with dot.", "ends with dot%2E"),
        ("/mnt/data/ends with space ", "ends with space%20"),
        ("/mnt/data/manifest.json", "%6Danifest.json"),  # the root's manifest name is reserved
        ("/mnt/data/sub/manifest.json", "sub/manifest.json"),  # only at the root
        ("/mnt/data/café/naïve.txt", "café/naïve.txt"),
        ("/mnt/data/.hidden", ".hidden"),
        ("/mnt/data/a..b", "a..b"),
    ],
)
def test_maps_paths_to_keys(path: str, key: str) -> None:
    assert container_path_to_key(path) == key
    assert key_to_container_path(key) == path


@pytest.mark.parametrize(
    "path",
    [
        "/mnt/data/../../etc/passwd",
        "/mnt/data/a/../../x",
        "/mnt/data/./x",
        "/mnt/data//etc/passwd",
        "/mnt/data/",
        "/mnt/data/a/",
        "/mnt/data",
        "/etc/passwd",
        "mnt/data/x",
        "",
        "/mnt/data/a\\..\\..\\x",
        "/mnt/data/..\\x",
        "/mnt/data/%2e%2e/x",
        "/mnt/data/%2E%2E%2Fetc",
        "/mnt/data/a%2fb",
        "/mnt/data/a%5cb",
        "/mnt/data/%252e%252e/x",  # double encoding
        "/mnt/data/x%00.png",
        "/mnt/data/x\x00.png",
        "/mnt/data/\uff0e\uff0e/x",  # fullwidth dots (NFKC → ..)
        "/mnt/data/\u2024\u2024/x",  # one-dot leaders
        "/mnt/data/a\uff0fb",  # fullwidth solidus
        "/mnt/data/a\u2215b",  # division slash
        "/mnt/data/%EF%BC%8E%EF%BC%8E",  # fullwidth dots, percent-encoded
        "/mnt/data/...",
        "/mnt/data/ ",
        "/mnt/data/\ud800",  # lone surrogate
        "/mnt/data/etc/../../../root",
    ],
)
def test_refuses_escapes(path: str) -> None:
    with pytest.raises(UnsafePath):
        container_path_to_key(path)


def test_long_segments_are_split_reversibly() -> None:
    name = "é" * 500 + ".csv"
    path = f"/mnt/data/deep/{name}"
    key = container_path_to_key(path)
    segments = key.split("/")
    assert len(segments) > 2
    assert all(len(s.encode()) <= MAX_SEGMENT_BYTES for s in segments)
    assert all(s.endswith("%") for s in segments[1:-1])
    assert key_to_container_path(key) == path


def _key_is_contained(key: str) -> None:
    assert key and not key.startswith("/")
    for seg in key.split("/"):
        assert seg not in ("", ".", ".."), key
        assert len(seg.encode("utf-8")) <= MAX_SEGMENT_BYTES
        assert "\\" not in seg and "\x00" not in seg
        assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in seg)
        assert not any(c in ':*?"<>|' for c in seg)
        assert not seg.endswith((".", " "))
    assert TEMP_MARKER not in key
    root = "/srv/harvest/cntr_1"
    joined = posixpath.normpath(posixpath.join(root, key))
    assert joined.startswith(root + "/")
    assert key != "manifest.json"


segments = st.text(min_size=1, max_size=300)


@settings(max_examples=400, deadline=None)
@given(st.lists(segments, min_size=1, max_size=4))
@example(["..", "x"])
@example(["%2e%2e"])
@example(["CON.txt"])
@example(["a" * 250])
@example(["x" * 199 + "."])
def test_mapping_is_reversible_and_never_escapes(parts: list[str]) -> None:
    path = "/mnt/data/" + "/".join(parts)
    try:
        key = container_path_to_key(path)
    except UnsafePath:
        return
    _key_is_contained(key)
    assert key_to_container_path(key) == path


@settings(max_examples=200, deadline=None)
@given(st.lists(segments, min_size=1, max_size=3), st.lists(segments, min_size=1, max_size=3))
def test_distinct_paths_get_distinct_keys(a: list[str], b: list[str]) -> None:
    pa, pb = "/mnt/data/" + "/".join(a), "/mnt/data/" + "/".join(b)
    try:
        ka, kb = container_path_to_key(pa), container_path_to_key(pb)
    except UnsafePath:
        return
    assert (ka == kb) == (pa == pb)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_safe_name_is_one_harmless_segment(value: str) -> None:
    name = safe_name(value)
    assert name and "/" not in name and "\\" not in name and name not in (".", "..")
    assert not name.endswith(".")

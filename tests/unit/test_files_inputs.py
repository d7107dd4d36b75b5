"""The input plan: globs expanded and sorted, contents hashed, destinations named, digest stable."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pytest

from hearth.errors import ConfigError
from hearth.files.inputs import InputItem, inputs_digest, resolve_inputs, split_file_ids


@dataclass
class Spec:
    path: str | None = None
    url: str | None = None
    file_id: str | None = None
    as_: str | None = None


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "b.csv").write_bytes(b"b" * 10)
    (tmp_path / "data" / "a.csv").write_bytes(b"a" * 20)
    (tmp_path / "data" / "sub" / "c.csv").write_bytes(b"c")
    (tmp_path / "notes.txt").write_text("hello")
    return tmp_path


def test_local_paths_and_globs(tree: Path) -> None:
    items = resolve_inputs([Spec(path="data/*.csv"), Spec(path="notes.txt", as_="README.txt")], tree)
    assert [(i.kind, i.dest_name, i.size) for i in items] == [
        ("local", "a.csv", 20), ("local", "b.csv", 10), ("local", "README.txt", 5),
    ]
    assert items[0].source == str(tree / "data" / "a.csv")
    assert items[2].sha256 == hashlib.sha256(b"hello").hexdigest()


def test_recursive_glob(tree: Path) -> None:
    items = resolve_inputs([Spec(path="data/**/*.csv")], tree)
    assert [i.dest_name for i in items] == ["a.csv", "b.csv", "c.csv"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (Spec(path="missing.txt"), "does not exist"),
        (Spec(path="data/*.nope"), "matches no file"),
        (Spec(path="data"), "directory"),
        (Spec(path="data/*.csv", as_="one.csv"), "names one file"),
        (Spec(path="notes.txt", as_="../x"), "plain file name"),
        (Spec(path="notes.txt", as_=".."), "dot segment"),
        (Spec(file_id="file-1", as_="x"), "cannot rename"),
        (Spec(), "exactly one"),
        (Spec(path="notes.txt", url="file:///x"), "exactly one"),
    ],
)
def test_bad_specs_name_the_place(tree: Path, spec: Spec, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        resolve_inputs([Spec(path="notes.txt"), spec], tree)
    assert info.value.where == "inputs[1]"


def test_two_inputs_with_one_destination_are_refused(tree: Path) -> None:
    with pytest.raises(ConfigError, match="would both be"):
        resolve_inputs([Spec(path="data/a.csv"), Spec(path="notes.txt", as_="a.csv")], tree)


def test_urls_are_hashed_by_streaming(tree: Path) -> None:
    root = f"memory://inputs-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{root}/x/one.json", b"{}")
    fs.pipe(f"{root}/x/two.json", b"[1]")
    items = resolve_inputs([Spec(url=f"{root}/x/*.json"), Spec(url=(tree / "notes.txt").as_uri(), as_="n.txt")], tree)
    assert [(i.kind, i.dest_name, i.size) for i in items] == [("url", "one.json", 2), ("url", "two.json", 3),
                                                              ("url", "n.txt", 5)]
    assert items[1].sha256 == hashlib.sha256(b"[1]").hexdigest()
    assert items[0].source.startswith("memory://")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_inputs([Spec(url=f"{root}/absent.bin")], tree)
    fs.rm(root, recursive=True)


def test_digest_changes_with_content_names_and_ids_but_not_order_or_location(tree: Path) -> None:
    a = InputItem("local", "/x/a.csv", "a.csv", 3, "11" * 32)
    b = InputItem("url", "s3://b/b.csv", "b.csv", 4, "22" * 32)
    f = InputItem("file_id", "file-1", None)
    base = inputs_digest([a, b, f])
    assert inputs_digest([f, b, a]) == base
    assert inputs_digest([InputItem("local", "/elsewhere/a.csv", "a.csv", 3, "11" * 32), b, f]) == base
    assert inputs_digest([InputItem("local", "/x/a.csv", "a.csv", 3, "33" * 32), b, f]) != base
    assert inputs_digest([InputItem("local", "/x/a.csv", "renamed.csv", 3, "11" * 32), b, f]) != base
    assert inputs_digest([a, b, InputItem("file_id", "file-2", None)]) != base
    assert inputs_digest([a, b]) != base
    assert len(base) == 64
    # A touched file with the same bytes keeps the digest; an edited one changes it.
    first = inputs_digest(resolve_inputs([Spec(path="notes.txt")], tree))
    (tree / "notes.txt").write_text("hello")
    assert inputs_digest(resolve_inputs([Spec(path="notes.txt")], tree)) == first
    (tree / "notes.txt").write_text("hello!")
    assert inputs_digest(resolve_inputs([Spec(path="notes.txt")], tree)) != first


def test_split_file_ids() -> None:
    items = [InputItem("file_id", "file-1", None), InputItem("local", "/a", "a", 1, "0" * 64),
             InputItem("file_id", "file-2", None)]
    ids, rest = split_file_ids(items)
    assert ids == ["file-1", "file-2"] and [i.source for i in rest] == ["/a"]


def test_accepts_the_pools_file_model(tree: Path) -> None:
    from settings.pools import InputSpec

    spec = InputSpec.model_validate({"path": str(tree / "notes.txt"), "as": "n.txt"})
    assert [i.dest_name for i in resolve_inputs([spec], tree)] == ["n.txt"]

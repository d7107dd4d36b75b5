"""The pure parts of input staging: content addresses, copy verification, refusals, the dev switches."""

from __future__ import annotations

import pytest

from hearth.api.models import ContainerFile
from hearth.errors import BadRequest, NotFound
from hearth.files.inputs import InputItem, input_paths
from hearth.files.staging import (
    copy_names,
    file_ids_refused,
    in_use_keys,
    missing_copies,
    refused_index,
    stage_key,
    stageable,
)
from hearth.localapi.devswitches import DevSwitches


def item(name: str, sha: str = "a" * 64, kind: str = "local", size: int = 3) -> InputItem:
    return InputItem(kind, f"/data/{name}", name, size, sha)  # type: ignore[arg-type]


def cfile(path: str, size: int | None = 3, source: str = "user", fid: str | None = None) -> ContainerFile:
    return ContainerFile(id=fid or f"cfile_{abs(hash(path))}", object="container.file", container_id="cntr_1",
                         created_at=0, bytes=size, path=path, source=source)


def test_the_stage_key_is_content_plus_destination_name() -> None:
    a = stage_key(item("x.csv"))
    assert stage_key(InputItem("url", "s3://b/elsewhere.csv", "x.csv", 3, "a" * 64)) == a  # where it came from: no
    assert stage_key(item("y.csv")) != a  # another destination name
    assert stage_key(item("x.csv", sha="b" * 64)) != a  # another byte
    with pytest.raises(ValueError):
        stage_key(InputItem("file_id", "file-1", None))


def test_only_local_and_url_inputs_are_staged() -> None:
    items = [item("a"), InputItem("file_id", "file-1", None), InputItem("url", "s3://b/k", "k", 1, "c" * 64)]
    assert [i.source for i in stageable(items)] == ["/data/a", "s3://b/k"]
    assert in_use_keys({"p": items, "q": [item("a")]}) == {stage_key(items[0]), stage_key(items[2])}


def test_missing_copies_accepts_both_copy_paths_and_checks_size_and_source() -> None:
    assert copy_names("d.csv", "file-9") == ("d.csv", "file-9-d.csv")
    files = [cfile("/mnt/data/d.csv"), cfile("/mnt/data/file-9-e.csv", size=5)]
    assert missing_copies(files, [("d.csv", "file-1", 3), ("e.csv", "file-9", 5)]) == []
    assert missing_copies(files, [("d.csv", "file-1", 4)]) == ["d.csv"]  # wrong size
    assert missing_copies([cfile("/mnt/data/d.csv", source="assistant")], [("d.csv", "file-1", 3)]) == ["d.csv"]
    # One container file satisfies one input only.
    assert missing_copies([cfile("/mnt/data/d.csv")], [("d.csv", "f1", 3), ("d.csv", "f2", 3)]) == ["d.csv"]
    assert missing_copies([cfile("/mnt/data/abc-d.csv")], [("d.csv", "f1", None)]) == ["d.csv"]  # not a copy path


def test_a_refusal_about_file_ids_is_told_apart_and_its_index_read() -> None:
    gone = NotFound("POST /containers: 404 No such File object: file-x", status=404, param="file_ids[2]")
    assert file_ids_refused(gone) and refused_index(gone) == 2
    unknown = BadRequest("POST /containers: 400 Unknown parameter: 'file_ids'.", status=400, param="file_ids")
    assert file_ids_refused(unknown) and refused_index(unknown) is None
    other = BadRequest("POST /containers: 400 bad memory_limit", status=400, param="memory_limit")
    assert not file_ids_refused(other)


def test_copies_named_with_their_file_id_count_as_inputs_not_outputs() -> None:
    items = [item("d.csv")]
    files = [cfile("/mnt/data/file-AbC123-d.csv"), cfile("/mnt/data/d.csv.out"), cfile("/mnt/data/d.csv")]
    assert input_paths(files, items) == ["file-AbC123-d.csv", "d.csv"]


def test_dev_switches_validate_and_change_only_what_is_named() -> None:
    sw = DevSwitches()
    assert sw.to_json() == {"file_ids": "copy", "files_max_bytes": None}
    sw.update({"files_max_bytes": 100})
    sw.update({"file_ids": "ignore"})
    assert sw.to_json() == {"file_ids": "ignore", "files_max_bytes": 100}
    for bad in ({"file_ids": "sometimes"}, {"files_max_bytes": -1}, {"files_max_bytes": True}, {"nope": 1}):
        with pytest.raises(ValueError):
            sw.update(bad)
    assert sw.to_json() == {"file_ids": "ignore", "files_max_bytes": 100}

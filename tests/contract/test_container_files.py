"""Container files: multipart and file_id creation, list/pagination, retrieve, content, delete, dev headers."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from tests.contract.conftest import Api
from tests.fixtures.localapi import LocalAPI


def test_upload_shape_and_content(api: Api) -> None:
    c = api.create_container("files")
    f = api.sdk.containers.files.create(c.id, file=("tsconfig.json", b'{"a": 1}\n'))
    assert f.id.startswith("cfile_") and len(f.id) == len("cfile_") + 32
    assert f.object == "container.file" and f.container_id == c.id
    assert f.bytes == 9 and f.source == "user"
    assert re.fullmatch(r"/mnt/data/[0-9a-f]{32}-tsconfig\.json", f.path)
    got = api.sdk.containers.files.retrieve(f.id, container_id=c.id)
    assert api.strip(got.model_dump()) == api.strip(f.model_dump())
    content = api.sdk.containers.files.content.retrieve(f.id, container_id=c.id)
    assert content.read() == b'{"a": 1}\n'
    raw = api.http.get(f"/containers/{c.id}/files/{f.id}/content")
    assert raw.headers["content-type"].startswith("application/json")  # guessed from the extension
    assert raw.headers["content-length"] == "9"
    if api.gateway:
        assert api.http.get(f"/containers/{c.id}/files/{f.id}").json()["extra_fields"]["request_type"] == (
            "container_file_retrieve"
        )


def test_upload_keeps_only_the_base_name(v1: Api) -> None:
    c = v1.create_container("x")
    f = v1.sdk.containers.files.create(c.id, file=("../../etc/passwd", b"root"))
    assert re.fullmatch(r"/mnt/data/[0-9a-f]{32}-passwd", f.path)


def test_create_from_file_id_copies_independently(api: Api) -> None:
    up = api.sdk.files.create(file=("input.csv", b"x,y\n1,2\n"), purpose="user_data")
    c = api.create_container("by-id")
    f = api.sdk.containers.files.create(c.id, file_id=up.id)
    assert f.path == "/mnt/data/input.csv" and f.bytes == 8 and f.source == "user"
    api.sdk.files.delete(up.id)  # the copy outlives the original
    assert api.sdk.containers.files.content.retrieve(f.id, container_id=c.id).read() == b"x,y\n1,2\n"


def test_create_container_with_file_ids(api: Api) -> None:
    a = api.sdk.files.create(file=("a.txt", b"A"), purpose="assistants")
    b = api.sdk.files.create(file=("b.txt", b"BB"), purpose="user_data")
    c = api.create_container("seeded", file_ids=[a.id, b.id])
    files = list(api.sdk.containers.files.list(c.id, order="asc"))
    assert [(f.path, f.bytes) for f in files] == [("/mnt/data/a.txt", 1), ("/mnt/data/b.txt", 2)]
    with pytest.raises(openai.NotFoundError) as err:
        api.create_container("bad", file_ids=[a.id, "file-doesnotexist"])
    assert err.value.response.json()["error"]["param"] == "file_ids[1]"


def test_list_pagination_both_orders(api: Api) -> None:
    c = api.create_container("many")
    ids = [api.sdk.containers.files.create(c.id, file=(f"f{i}.txt", b"x" * i)).id for i in range(5)]
    for order, expected in (("asc", ids), ("desc", list(reversed(ids)))):
        seen: list[str] = []
        after = None
        while True:
            params = {"order": order, "limit": 2, **api.query_extra()}
            if after:
                params["after"] = after
            body = api.http.get(f"/containers/{c.id}/files", params=params).json()
            seen += [f["id"] for f in body["data"]]
            if not body.get("has_more", False):
                break
            after = body["last_id"]
        assert seen == expected
    assert [f.id for f in api.sdk.containers.files.list(c.id, limit=2, order="asc")] == ids


def test_delete_file(api: Api) -> None:
    c = api.create_container("del")
    f = api.sdk.containers.files.create(c.id, file=("a.txt", b"a"))
    body = api.http.delete(f"/containers/{c.id}/files/{f.id}").json()
    assert (body["id"], body["object"], body["deleted"]) == (f.id, "container.file.deleted", True)
    assert not (api.local.data_dir / "blobs" / f.id).exists()
    for call in (
        lambda: api.sdk.containers.files.retrieve(f.id, container_id=c.id),
        lambda: api.sdk.containers.files.content.retrieve(f.id, container_id=c.id),
        lambda: api.sdk.containers.files.delete(f.id, container_id=c.id),
    ):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.response.json()["error"] == {
            "message": f"File {f.id} not found on container {c.id}.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    assert list(api.sdk.containers.files.list(c.id)) == []


def test_file_of_another_container_is_not_found(v1: Api) -> None:
    a, b = v1.create_container("a"), v1.create_container("b")
    f = v1.sdk.containers.files.create(a.id, file=("a.txt", b"a"))
    with pytest.raises(openai.NotFoundError):
        v1.sdk.containers.files.retrieve(f.id, container_id=b.id)


def test_dev_headers_record_assistant_files_verbatim(local_api: LocalAPI) -> None:
    c = httpx.post(f"{local_api.base_url}/containers", json={"name": "dev"}).json()
    nested = local_api.write_assistant_file(c["id"], "/mnt/data/out/sub/report.csv", b"r")
    assert nested["source"] == "assistant" and nested["path"] == "/mnt/data/out/sub/report.csv"
    evil = local_api.write_assistant_file(c["id"], "/mnt/data/../../etc/passwd", b"not really")
    assert evil["path"] == "/mnt/data/../../etc/passwd"
    # Bytes are stored by id, inside the data dir, whatever the path said.
    assert (local_api.data_dir / "blobs" / evil["id"]).read_bytes() == b"not really"
    listed = httpx.get(f"{local_api.base_url}/containers/{c['id']}/files").json()["data"]
    assert {f["path"] for f in listed} == {"/mnt/data/out/sub/report.csv", "/mnt/data/../../etc/passwd"}
    body = httpx.get(f"{local_api.base_url}/containers/{c['id']}/files/{evil['id']}/content")
    assert body.content == b"not really"
    bad = httpx.post(
        f"{local_api.base_url}/containers/{c['id']}/files",
        headers={"X-Hearth-File-Source": "robot"},
        files={"file": ("a", b"a")},
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-hearth-file-source"


def test_dev_headers_ignored_without_dev(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from hearth.localapi import LocalAPIServer

    with LocalAPIServer(tmp_path / "nodev") as server:
        c = httpx.post(f"{server.base_url}/containers", json={"name": "x"}).json()
        f = httpx.post(
            f"{server.base_url}/containers/{c['id']}/files",
            headers={"X-Hearth-File-Source": "assistant", "X-Hearth-File-Path": "/mnt/data/x"},
            files={"file": ("a.txt", b"a")},
        ).json()
        assert f["source"] == "user" and f["path"].endswith("-a.txt")
        for method, path in (("POST", "/_dev/clock"), ("GET", "/_dev/clock"), ("PUT", "/_dev/faults")):
            r = httpx.request(method, f"{server.root_url}{path}", json={"advance_seconds": 1})
            assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"


def test_multipart_with_file_id_field(v1: Api) -> None:
    up = v1.sdk.files.create(file=("in.txt", b"hi"), purpose="user_data")
    c = v1.create_container("mp")
    r = v1.http.post(f"/containers/{c.id}/files", files={"file_id": (None, up.id)})
    assert r.status_code == 200 and r.json()["path"] == "/mnt/data/in.txt"

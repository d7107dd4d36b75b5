"""The Files API subset (upload with purpose, list, retrieve, delete, content) through the SDK."""

from __future__ import annotations

import openai
import pytest

from tests.contract.conftest import Api


def test_upload_retrieve_content_delete(api: Api) -> None:
    f = api.sdk.files.create(file=("data.csv", b"a,b\n1,2\n"), purpose="assistants")
    assert f.id.startswith("file-") and f.object == "file"
    assert (f.bytes, f.filename, f.purpose, f.status) == (8, "data.csv", "assistants", "processed")
    assert f.expires_at is None
    got = api.sdk.files.retrieve(f.id)
    assert api.strip(got.model_dump()) == api.strip(f.model_dump())
    assert api.sdk.files.content(f.id).read() == b"a,b\n1,2\n"
    raw = api.http.get(f"/files/{f.id}/content")
    assert raw.headers["content-type"].startswith("text/csv")
    deleted = api.sdk.files.delete(f.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (f.id, "file", True)
    assert not (api.local.data_dir / "blobs" / f.id).exists()
    with pytest.raises(openai.NotFoundError):
        api.sdk.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        api.sdk.files.content(f.id)


@pytest.mark.parametrize("purpose", ["assistants", "batch", "fine-tune", "vision", "user_data", "evals"])
def test_every_purpose(v1: Api, purpose: str) -> None:
    f = v1.sdk.files.create(file=("x.jsonl", b"{}\n"), purpose=purpose)  # type: ignore[arg-type]
    assert f.purpose == purpose


def test_list_filter_and_pagination(api: Api) -> None:
    a = api.sdk.files.create(file=("a.txt", b"a"), purpose="assistants").id
    b = api.sdk.files.create(file=("b.txt", b"b"), purpose="user_data").id
    c = api.sdk.files.create(file=("c.txt", b"c"), purpose="user_data").id
    assert [f.id for f in api.sdk.files.list()] == [c, b, a]  # default desc
    assert [f.id for f in api.sdk.files.list(order="asc", limit=1)] == [a, b, c]  # walked page by page
    assert [f.id for f in api.sdk.files.list(purpose="user_data")] == [c, b]
    page = api.http.get("/files", params={"limit": 2, "order": "asc", **api.query_extra()}).json()
    assert [f["id"] for f in page["data"]] == [a, b] and page["has_more"] is True


def test_expires_after_form_fields(v1: Api) -> None:
    r = v1.http.post(
        "/files",
        files={"file": ("e.txt", b"e")},
        data={"purpose": "user_data", "expires_after[anchor]": "created_at", "expires_after[seconds]": "7200"},
    )
    body = r.json()
    assert r.status_code == 200 and body["expires_at"] == body["created_at"] + 7200

"""Expiry on the injected clock (SEMANTICS.md §3), tenants by API key, and persistence across restarts."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.contract.conftest import Api, make_api
from tests.fixtures.localapi import LocalAPI


def test_expiry_retrieve_200_expired_and_file_calls_404(api: Api) -> None:
    c = api.create_container("short", expires_after={"anchor": "last_active_at", "minutes": 1})
    f = api.sdk.containers.files.create(c.id, file=("a.txt", b"abc"))
    blob = api.local.data_dir / "blobs" / f.id
    assert blob.exists()
    api.local.advance_clock(61)
    got = api.sdk.containers.retrieve(c.id)
    assert got.status == "expired"
    assert got.last_active_at == c.last_active_at  # an expired container is not refreshed
    assert not blob.exists()  # its files are discarded
    calls = [
        lambda: api.sdk.containers.files.list(c.id),
        lambda: api.sdk.containers.files.retrieve(f.id, container_id=c.id),
        lambda: api.sdk.containers.files.content.retrieve(f.id, container_id=c.id),
        lambda: api.sdk.containers.files.delete(f.id, container_id=c.id),
        lambda: api.sdk.containers.files.create(c.id, file=("b.txt", b"b")),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.response.json()["error"] == {
            "message": "Container is expired.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    listed = {x.id: x.status for x in api.sdk.containers.list()}
    assert listed[c.id] == "expired"
    # Expired for good: time does not revive it, and it can still be deleted.
    api.local.advance_clock(3600)
    assert api.sdk.containers.retrieve(c.id).status == "expired"
    api.sdk.containers.delete(c.id)
    with pytest.raises(openai.NotFoundError):
        api.sdk.containers.retrieve(c.id)


def test_not_expired_just_before_the_window(v1: Api) -> None:
    c = v1.create_container("edge", expires_after={"anchor": "last_active_at", "minutes": 2})
    v1.local.advance_clock(100)
    assert v1.sdk.containers.retrieve(c.id).status == "running"


def test_per_container_calls_refresh_list_all_does_not(v1: Api) -> None:
    c = v1.create_container("kept", expires_after={"anchor": "last_active_at", "minutes": 1})
    idle = v1.create_container("idle", expires_after={"anchor": "last_active_at", "minutes": 1})
    f = v1.sdk.containers.files.create(c.id, file=("a.txt", b"a"))
    refreshing = [
        lambda: v1.sdk.containers.retrieve(c.id),
        lambda: v1.sdk.containers.files.list(c.id),
        lambda: v1.sdk.containers.files.retrieve(f.id, container_id=c.id),
        lambda: v1.sdk.containers.files.content.retrieve(f.id, container_id=c.id),
        lambda: v1.sdk.containers.files.create(c.id, file=("b.txt", b"b")),
    ]
    for call in refreshing:
        before = v1.http.get("/containers", params={"name": "kept"}).json()["data"][0]["last_active_at"]
        v1.local.advance_clock(45)  # 45 s per step, 225 s in all: only the refreshes keep it alive
        call()
        after = v1.http.get("/containers", params={"name": "kept"}).json()["data"][0]
        assert after["status"] == "running" and after["last_active_at"] >= before + 45
    # Listing every container all along refreshed nothing.
    assert v1.sdk.containers.retrieve(idle.id).status == "expired"
    assert v1.sdk.containers.retrieve(c.id).status == "running"


def test_file_delete_refreshes(v1: Api) -> None:
    c = v1.create_container("d", expires_after={"anchor": "last_active_at", "minutes": 1})
    f = v1.sdk.containers.files.create(c.id, file=("a.txt", b"a"))
    v1.local.advance_clock(50)
    v1.sdk.containers.files.delete(f.id, container_id=c.id)
    v1.local.advance_clock(50)
    assert v1.sdk.containers.retrieve(c.id).status == "running"


def test_files_api_expiry(v1: Api) -> None:
    f = v1.sdk.files.create(
        file=("t.txt", b"t"), purpose="user_data", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert f.expires_at == f.created_at + 3600
    v1.local.advance_clock(3601)
    with pytest.raises(openai.NotFoundError):
        v1.sdk.files.retrieve(f.id)
    batch = v1.sdk.files.create(file=("b.jsonl", b"{}"), purpose="batch")
    assert batch.expires_at == batch.created_at + 30 * 86400  # batch files default to 30 days


def test_tenants_are_isolated(local_api_with_keys: LocalAPI) -> None:
    a = make_api(local_api_with_keys, "openai", "sk-test-a")
    b = make_api(local_api_with_keys, "openai", "sk-test-b")
    ca = a.create_container("mine")
    fa = a.sdk.files.create(file=("in.txt", b"i"), purpose="user_data")
    cfa = a.sdk.containers.files.create(ca.id, file=("x.txt", b"x"))
    assert [c.id for c in b.sdk.containers.list()] == []
    assert list(b.sdk.files.list()) == []
    with pytest.raises(openai.NotFoundError) as err:
        b.sdk.containers.retrieve(ca.id)
    assert err.value.response.json()["error"]["message"] == f"Container with id '{ca.id}' not found."
    for call in (
        lambda: b.sdk.containers.delete(ca.id),
        lambda: b.sdk.containers.files.list(ca.id),
        lambda: b.sdk.containers.files.retrieve(cfa.id, container_id=ca.id),
        lambda: b.sdk.containers.files.content.retrieve(cfa.id, container_id=ca.id),
        lambda: b.sdk.files.retrieve(fa.id),
        lambda: b.sdk.files.content(fa.id),
        lambda: b.sdk.containers.create(name="steal", file_ids=[fa.id]),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    # a still has everything.
    assert a.sdk.containers.retrieve(ca.id).status == "running"
    assert [c.id for c in a.sdk.containers.list()] == [ca.id]
    # The keys themselves are never written to disk.
    for path in local_api_with_keys.data_dir.rglob("*"):
        if path.is_file():
            assert b"sk-test-a" not in path.read_bytes()


def test_restart_keeps_everything(api: Api) -> None:
    up = api.sdk.files.create(file=("in.txt", b"input"), purpose="user_data")
    c = api.create_container("persist", memory_limit="16g", file_ids=[up.id])
    f = api.sdk.containers.files.create(c.id, file=("out.bin", bytes(range(256))))
    now = api.local.advance_clock(30)
    api.local.restart()
    assert api.local.now() >= now  # the moved clock survived
    got = api.sdk.containers.retrieve(c.id)
    assert (got.name, got.memory_limit, got.status) == ("persist", "16g", "running")
    assert api.sdk.containers.files.content.retrieve(f.id, container_id=c.id).read() == bytes(range(256))
    assert len(list(api.sdk.containers.files.list(c.id))) == 2
    assert api.sdk.files.content(up.id).read() == b"input"


def test_concurrent_requests_are_safe(v1: Api) -> None:
    from concurrent.futures import ThreadPoolExecutor

    c = v1.create_container("busy")

    def work(i: int) -> str:
        with httpx.Client(base_url=v1.base_url, timeout=60) as h:
            r = h.post(f"/containers/{c.id}/files", files={"file": (f"f{i}.txt", str(i).encode() * 1000)})
            r.raise_for_status()
            fid: str = r.json()["id"]
            assert h.get(f"/containers/{c.id}/files/{fid}/content").content == str(i).encode() * 1000
            h.post("/containers", json={"name": f"n{i}"}).raise_for_status()
            return fid

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(work, range(32)))
    assert len(set(ids)) == 32
    assert len(list(v1.sdk.containers.files.list(c.id, limit=100))) == 32
    assert len(list(v1.sdk.containers.list(limit=100))) == 33

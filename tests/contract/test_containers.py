"""Containers: every field of create, retrieve, list (pagination, name filter), delete — through the SDK."""

from __future__ import annotations

import json

import openai
import pytest

from tests.contract.conftest import Api

EMPTY_ZIP_B64 = "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="


def test_create_defaults_and_shape(api: Api) -> None:
    c = api.create_container("defaults")
    assert c.id.startswith("cntr_") and len(c.id) == len("cntr_") + 48
    assert c.object == "container" and c.name == "defaults" and c.status == "running"
    assert c.expires_after is not None
    assert (c.expires_after.anchor, c.expires_after.minutes) == ("last_active_at", 20)
    assert c.memory_limit == "1g"
    assert c.last_active_at == c.created_at
    assert c.network_policy is None
    raw = api.http.get(f"/containers/{c.id}").json()
    assert "network_policy" not in raw  # omitted, not null, when none was requested
    if api.gateway:
        assert raw["extra_fields"]["provider"] == "openai"
        assert raw["extra_fields"]["request_type"] == "container_retrieve"
        assert raw["metadata"] == {}
    else:
        assert "extra_fields" not in raw and "metadata" not in raw


@pytest.mark.parametrize("memory", ["1g", "4g", "16g", "64g"])
def test_memory_limit_enum(api: Api, memory: str) -> None:
    c = api.create_container("m", memory_limit=memory)  # type: ignore[arg-type]
    assert c.memory_limit == memory
    assert api.sdk.containers.retrieve(c.id).memory_limit == memory


def test_every_create_field(api: Api) -> None:
    c = api.create_container(
        "full",
        expires_after={"anchor": "last_active_at", "minutes": 7},
        memory_limit="4g",
        network_policy={
            "type": "allowlist",
            "allowed_domains": ["api.example.com", "pypi.org"],
            "domain_secrets": [{"domain": "api.example.com", "name": "API_KEY", "value": "s3cr3t-value"}],
        },
        skills=[
            {"type": "skill_reference", "skill_id": "skill_4db6f1a2c9e73508b41f9da06e2c7b5f"},
            {"type": "skill_reference", "skill_id": "openai-spreadsheets", "version": "latest"},
            {
                "type": "inline",
                "name": "hello",
                "description": "says hello",
                "source": {"type": "base64", "media_type": "application/zip", "data": EMPTY_ZIP_B64},
            },
        ],
    )
    assert c.expires_after is not None and c.expires_after.minutes == 7
    assert c.memory_limit == "4g"
    raw = api.http.get(f"/containers/{c.id}").json()
    assert "skills" not in raw and "file_ids" not in raw
    assert "s3cr3t-value" not in json.dumps(raw)
    if api.gateway:
        assert "network_policy" not in raw  # Bifrost's container struct has no network_policy
    else:
        assert raw["network_policy"] == {"type": "allowlist", "allowed_domains": ["api.example.com", "pypi.org"]}
        assert c.network_policy is not None and c.network_policy.allowed_domains == ["api.example.com", "pypi.org"]
    # Secrets are never persisted either.
    db = (api.local.data_dir / "localapi.sqlite3").read_bytes()
    wal = api.local.data_dir / "localapi.sqlite3-wal"
    assert b"s3cr3t-value" not in db and (not wal.exists() or b"s3cr3t-value" not in wal.read_bytes())


def test_network_policy_disabled(v1: Api) -> None:
    c = v1.create_container("off", network_policy={"type": "disabled"})
    assert c.network_policy is not None and c.network_policy.type == "disabled"
    assert v1.http.get(f"/containers/{c.id}").json()["network_policy"] == {"type": "disabled"}


def test_gateway_create_echoes_metadata_and_provider(local_api) -> None:  # type: ignore[no-untyped-def]
    import httpx

    r = httpx.post(
        f"{local_api.gateway_base_url}/containers",
        json={"provider": "azure", "name": "gw", "metadata": {"team": "data"}, "memory_limit": "1g"},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["metadata"] == {"team": "data"}
    assert body["extra_fields"]["provider"] == "azure" and body["extra_fields"]["request_type"] == "container_create"
    assert isinstance(body["extra_fields"]["latency"], int)
    got = httpx.get(f"{local_api.gateway_base_url}/containers/{body['id']}", params={"provider": "openai"}).json()
    assert got["metadata"] == {"team": "data"}
    # The OpenAI format neither knows nor shows them.
    plain = httpx.get(f"{local_api.base_url}/containers/{body['id']}").json()
    assert "metadata" not in plain and "extra_fields" not in plain
    for field in ("provider", "metadata"):
        bad = httpx.post(f"{local_api.base_url}/containers", json={"name": "x", field: {"a": "b"}})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == field
    bad_provider = httpx.post(f"{local_api.gateway_base_url}/containers", json={"name": "x", "provider": "nope"})
    assert bad_provider.status_code == 400 and bad_provider.json()["error"]["param"] == "provider"


def test_retrieve_and_delete(api: Api) -> None:
    c = api.create_container("gone")
    assert api.sdk.containers.retrieve(c.id).id == c.id
    raw = api.http.delete(f"/containers/{c.id}")
    assert raw.status_code == 200
    body = raw.json()
    assert (body["id"], body["object"], body["deleted"]) == (c.id, "container.deleted", True)
    with pytest.raises(openai.NotFoundError) as err:
        api.sdk.containers.retrieve(c.id)
    assert err.value.body is not None
    assert err.value.response.json()["error"]["message"] == f"Container with id '{c.id}' not found."
    with pytest.raises(openai.NotFoundError):
        api.sdk.containers.delete(c.id)
    with pytest.raises(openai.NotFoundError) as err2:
        api.sdk.containers.files.list(c.id)
    assert err2.value.response.json()["error"]["message"] == f"Container with id '{c.id}' not found."
    assert c.id not in [x.id for x in api.sdk.containers.list()]


def test_sdk_delete_returns_none(v1: Api) -> None:
    c = v1.create_container("d")
    assert v1.sdk.containers.delete(c.id) is None


def _walk(api: Api, order: str, limit: int, **kw: object) -> tuple[list[str], int]:
    """All ids, page by page, following ``after`` until ``has_more`` is false; and the page count."""
    ids: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        params: dict[str, object] = {"order": order, "limit": limit, **kw, **api.query_extra()}
        if after:
            params["after"] = after
        body = api.http.get("/containers", params=params).json()
        pages += 1
        page_ids = [c["id"] for c in body["data"]]
        ids += page_ids
        if page_ids:
            assert body["first_id"] == page_ids[0] and body["last_id"] == page_ids[-1]
        if not body.get("has_more", False):  # the gateway omits has_more: false
            return ids, pages
        after = body["last_id"]


def test_pagination_walked_to_the_end_in_both_orders(api: Api) -> None:
    created = [api.create_container(f"p{i}").id for i in range(7)]
    asc, pages = _walk(api, "asc", 3)
    assert asc == created and pages == 3
    desc, _ = _walk(api, "desc", 3)
    assert desc == list(reversed(created))
    default = api.http.get("/containers", params=api.query_extra()).json()
    assert [c["id"] for c in default["data"]] == list(reversed(created))  # default order desc, limit 20
    # The SDK's own auto-pagination walks the same list.
    assert [c.id for c in api.sdk.containers.list(limit=2, order="asc")] == created
    exact = api.http.get("/containers", params={"limit": 7, "order": "asc", **api.query_extra()}).json()
    assert exact.get("has_more", False) is False and len(exact["data"]) == 7


def test_default_limit_is_20_and_max_100(v1: Api) -> None:
    for i in range(21):
        v1.create_container(f"n{i}")
    body = v1.http.get("/containers").json()
    assert len(body["data"]) == 20 and body["has_more"] is True
    assert len(v1.http.get("/containers", params={"limit": 100}).json()["data"]) == 21


def test_name_filter_is_exact(api: Api) -> None:
    a1 = api.create_container("alpha").id
    api.create_container("alphabet")
    api.create_container("beta")
    a2 = api.create_container("alpha").id
    ids, _ = _walk(api, "asc", 1, name="alpha")
    assert ids == [a1, a2]
    assert [c.id for c in api.sdk.containers.list(name="alpha", order="desc")] == [a2, a1]
    assert api.http.get("/containers", params={"name": "ALPHA", **api.query_extra()}).json()["data"] == []


def test_empty_list_envelope(v1: Api, local_api) -> None:  # type: ignore[no-untyped-def]
    import httpx

    body = v1.http.get("/containers").json()
    assert body == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    gw = httpx.get(f"{local_api.gateway_base_url}/containers").json()
    assert gw["data"] == [] and "has_more" not in gw and "first_id" not in gw and "extra_fields" in gw


def test_deleted_cursor_still_pages(v1: Api) -> None:
    ids = [v1.create_container(f"c{i}").id for i in range(4)]
    v1.sdk.containers.delete(ids[1])
    body = v1.http.get("/containers", params={"order": "asc", "after": ids[1]}).json()
    assert [c["id"] for c in body["data"]] == ids[2:]


def test_gateway_route_without_v1(local_api) -> None:  # type: ignore[no-untyped-def]
    import httpx

    made = httpx.post(f"{local_api.root_url}/openai/containers", json={"name": "short", "provider": "openai"})
    assert made.status_code == 200 and made.json()["extra_fields"]["provider"] == "openai"
    assert httpx.get(f"{local_api.base_url}/containers/{made.json()['id']}").json()["name"] == "short"

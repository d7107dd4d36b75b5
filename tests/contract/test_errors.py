"""Every error case answers the OpenAI envelope with the right status, message and ``param``; no 500s."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.contract.conftest import Api, make_api
from tests.fixtures.localapi import LocalAPI


def _err(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    err: dict[str, Any] = body["error"]
    return err


def test_401_missing_and_wrong_key(local_api_with_keys: LocalAPI) -> None:
    base = local_api_with_keys.base_url
    missing = _err(httpx.get(f"{base}/containers"), 401)
    assert missing["message"].startswith("You didn't provide an API key.")
    assert missing["type"] == "invalid_request_error"
    wrong = _err(httpx.get(f"{base}/containers", headers={"Authorization": "Bearer sk-wrong-key-1234"}), 401)
    assert wrong["message"].startswith("Incorrect API key provided: ****1234.")
    assert wrong["code"] == "invalid_api_key"
    assert "sk-wrong" not in wrong["message"]
    # Every route is guarded, both prefixes; the SDK maps it to AuthenticationError.
    for flavour in ("openai", "gateway"):
        bad = make_api(local_api_with_keys, flavour, "sk-nope")
        with pytest.raises(openai.AuthenticationError):
            bad.sdk.containers.create(name="x")
        with pytest.raises(openai.AuthenticationError):
            bad.sdk.files.list()
    # Azure's header works too.
    assert httpx.get(f"{base}/containers", headers={"api-key": "sk-test-b"}).status_code == 200


def test_404_messages(api: Api) -> None:
    e = _err(api.http.get("/containers/cntr_nope"), 404)
    assert e == {"message": "Container with id 'cntr_nope' not found.", "type": "invalid_request_error",
                 "param": None, "code": None}
    c = api.create_container("x")
    e = _err(api.http.get(f"/containers/{c.id}/files/cfile_nope"), 404)
    assert e["message"] == f"File cfile_nope not found on container {c.id}."
    e = _err(api.http.get(f"/containers/{c.id}/files/cfile_nope/content"), 404)
    assert e["message"] == f"File cfile_nope not found on container {c.id}."
    e = _err(api.http.get("/files/file-nope"), 404)
    assert e["message"] == "No such File object: file-nope"
    e = _err(api.http.post(f"/containers/{c.id}/files", json={"file_id": "file-nope"}), 404)
    assert e["param"] == "file_id"
    e = _err(api.http.get("/nowhere"), 404)
    assert e["message"].startswith("Invalid URL (GET ")
    _err(api.http.put("/containers"), 405)
    if api.gateway:
        body = api.http.get("/containers/cntr_nope").json()
        assert body["is_bifrost_error"] is False and body["status_code"] == 404 and "extra_fields" in body


BAD_CREATES: list[tuple[dict[str, Any], str, str]] = [
    ({}, "name", "Missing required parameter: 'name'."),
    ({"name": 5}, "name", "Invalid type for 'name': expected a string, but got an integer instead."),
    ({"name": "x", "memory_limit": "2g"}, "memory_limit", "Invalid value: '2g'."),
    ({"name": "x", "expires_after": {"anchor": "created_at", "minutes": 5}}, "expires_after.anchor", "Invalid value"),
    ({"name": "x", "expires_after": {"anchor": "last_active_at"}}, "expires_after.minutes", "Missing required"),
    ({"name": "x", "expires_after": {"anchor": "last_active_at", "minutes": 0}}, "expires_after.minutes", "minimum"),
    ({"name": "x", "expires_after": {"anchor": "last_active_at", "minutes": 10**30}}, "expires_after.minutes", ""),
    ({"name": "x", "file_ids": "file-1"}, "file_ids", "expected an array"),
    ({"name": "x", "file_ids": [1]}, "file_ids[0]", "expected a string"),
    ({"name": "x", "network_policy": {"type": "open"}}, "network_policy.type", "Invalid value: 'open'."),
    ({"name": "x", "network_policy": {}}, "network_policy.type", "Missing required parameter"),
    ({"name": "x", "network_policy": {"type": "allowlist"}}, "network_policy.allowed_domains", "Missing"),
    ({"name": "x", "network_policy": {"type": "allowlist", "allowed_domains": []}},
     "network_policy.allowed_domains", "too short"),
    ({"name": "x", "network_policy": {"type": "allowlist", "allowed_domains": ["a.com"],
      "domain_secrets": [{"domain": "a.com", "name": "K"}]}}, "network_policy.domain_secrets[0].value", "Missing"),
    ({"name": "x", "network_policy": {"type": "disabled", "allowed_domains": ["a"]}},
     "network_policy.allowed_domains", "Unknown parameter"),
    ({"name": "x", "skills": [{"type": "skill_reference"}]}, "skills[0].skill_id", "Missing required"),
    ({"name": "x", "skills": [{"type": "skill_reference", "skill_id": "s" * 65}]}, "skills[0].skill_id", "too long"),
    ({"name": "x", "skills": [{"type": "skill_reference", "skill_id": "s", "version": "0"}]},
     "skills[0].version", "pattern"),
    ({"name": "x", "skills": [{"type": "magic"}]}, "skills[0].type", "Invalid value: 'magic'."),
    ({"name": "x", "skills": [{"type": "inline", "name": "n", "description": "d",
      "source": {"type": "base64", "media_type": "application/tar", "data": "AA=="}}]},
     "skills[0].source.media_type", "Invalid value"),
    ({"name": "x", "color": "blue"}, "color", "Unknown parameter: 'color'."),
]


@pytest.mark.parametrize(("body", "param", "message"), BAD_CREATES)
def test_400_create_params(v1: Api, body: dict[str, Any], param: str, message: str) -> None:
    e = _err(v1.http.post("/containers", json=body), 400)
    assert e["param"] == param and e["type"] == "invalid_request_error"
    assert message in e["message"]


def test_400_secret_value_never_echoed(v1: Api) -> None:
    body = {"name": "x", "network_policy": {"type": "allowlist", "allowed_domains": ["a.com"],
            "domain_secrets": [{"domain": "a.com", "name": "K", "value": "TOPSECRET" * 2_000_000}]}}
    r = v1.http.post("/containers", json=body)
    assert r.status_code == 400 and "TOPSECRET" not in r.text


@pytest.mark.parametrize(
    ("query", "param"),
    [({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"limit": "ten"}, "limit"), ({"order": "up"}, "order"),
     ({"after": "cntr_unknown"}, "after")],
)
def test_400_list_params(api: Api, query: dict[str, Any], param: str) -> None:
    assert _err(api.http.get("/containers", params=query), 400)["param"] == param
    c = api.create_container("x")
    assert _err(api.http.get(f"/containers/{c.id}/files", params=query), 400)["param"] == param


def test_400_via_sdk(api: Api) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        api.sdk.containers.list(limit=101)
    assert err.value.param == "limit"  # type: ignore[attr-defined]


def test_400_malformed_bodies(api: Api) -> None:
    e = _err(api.http.post("/containers", content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert e["message"].startswith("We could not parse the JSON body of your request.") and e["param"] is None
    _err(api.http.post("/containers", content=b"[1, 2]"), 400)
    _err(api.http.post("/containers", content=b'"\\ud800"'), 400)
    _err(api.http.post("/containers", content=b'{"name": "\\ud800"}'), 400)
    c = api.create_container("x")
    e = _err(api.http.post(f"/containers/{c.id}/files", files={"other": ("a", b"a")}), 400)
    assert e["param"] == "file" and e["message"] == "Missing required parameter: 'file'."
    e = _err(api.http.post(f"/containers/{c.id}/files", data={"purpose": "x"}), 400)
    assert e["param"] == "file"
    _err(api.http.post(f"/containers/{c.id}/files", content=b"", headers={"content-type": "application/json"}), 400)
    _err(api.http.post(f"/containers/{c.id}/files", json={}), 400)
    e = _err(api.http.post(f"/containers/{c.id}/files", json={"file_id": 3}), 400)
    assert e["param"] == "file_id"
    bad_mp = api.http.post(
        f"/containers/{c.id}/files", content=b"--xx\r\ngarbage", headers={"content-type": "multipart/form-data"}
    )
    _err(bad_mp, 400)
    bad_mp2 = api.http.post(
        f"/containers/{c.id}/files", content=b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    _err(bad_mp2, 400)
    # Nothing half-written is left behind.
    assert list((api.local.data_dir / "tmp").iterdir()) == []


def test_400_files_api(v1: Api) -> None:
    e = _err(v1.http.post("/files", files={"file": ("a.txt", b"a")}), 400)
    assert e["param"] == "purpose"
    e = _err(v1.http.post("/files", files={"file": ("a.txt", b"a")}, data={"purpose": "fun"}), 400)
    assert e["param"] == "purpose"
    e = _err(v1.http.post("/files", data={"purpose": "user_data"}), 400)
    assert e["param"] == "file"
    e = _err(v1.http.post("/files", files={"file": ("a", b"a")},
                         data={"purpose": "user_data", "expires_after[anchor]": "created_at",
                               "expires_after[seconds]": "60"}), 400)
    assert e["param"] == "expires_after.seconds"
    e = _err(v1.http.post("/files", json={"purpose": "user_data"}), 400)
    assert e["param"] == "file"


GARBAGE: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/containers", {"content": b"\x00\xff\xfe" * 100}),
    ("POST", "/containers", {"content": b"{" * 100_000}),
    ("POST", "/containers", {"json": {"name": ["a"], "file_ids": {"x": 1}, "skills": "s"}}),
    ("POST", "/containers", {"json": {"name": "x", "expires_after": None, "skills": None}}),
    ("POST", "/containers", {"json": {"name": "\u0000\u202e\ufeff"}}),
    ("GET", "/containers", {"params": {"limit": "9" * 5000}}),
    ("GET", "/containers", {"params": {"limit": "-1", "order": "\u0000"}}),
    ("GET", "/containers/%00%ff", {}),
    ("GET", "/containers/" + "a" * 5000, {}),
    ("DELETE", "/containers/../../etc/passwd", {}),
    ("POST", "/containers/x/files", {"content": b"--", "headers": {"content-type": "multipart/form-data; boundary="}}),
    ("POST", "/containers/x/files", {"content": b"abc", "headers": {"content-type": "text/plain"}}),
    ("POST", "/files", {"content": b"\x00", "headers": {"content-type": "multipart/form-data; boundary=\x7f"}}),
    ("GET", "/files", {"params": {"limit": "10001"}}),
    ("GET", "/files/file-x/content", {}),
    ("PATCH", "/files", {}),
]


@pytest.mark.parametrize(("method", "path", "kw"), GARBAGE)
def test_no_500_for_garbage(api: Api, method: str, path: str, kw: dict[str, Any]) -> None:
    r = api.http.request(method, path, **kw)
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    else:  # odd but valid (nulls for optional fields, control characters in a name) is accepted
        assert r.json()["object"] == "container"

"""Backend behaviours the local server cannot produce, on httpx.MockTransport.

Azure's header and URL, a gateway's omissions (no ``has_more: false``, no name filter, its own
``after`` cursor, no JSON ``file_id`` copy), error envelopes, malformed bodies, and that the API
key never leaks into repr, logs or exception text.
"""

from __future__ import annotations

import io
import json
import logging
import random
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from hearth.api.client import ContainersClient
from hearth.api.models import CreateContainerRequest
from hearth.api.retry import RetryPolicy
from hearth.clock import ManualClock
from hearth.errors import AuthError, ContainerExpired, MalformedResponse, NotFound, TransportError
from settings.config import Settings

KEY = "sk-test-SUPERSECRET0123456789"


def container(cid: str, name: str, status: str = "running", **extra: Any) -> dict[str, Any]:
    return {"id": cid, "object": "container", "name": name, "created_at": 1, "status": status,
            "last_active_at": 1, "expires_after": {"anchor": "last_active_at", "minutes": 20}, **extra}


def cfile(fid: str, cid: str, path: str, size: int = 3) -> dict[str, Any]:
    return {"id": fid, "object": "container.file", "container_id": cid, "created_at": 1, "bytes": size,
            "path": path, "source": "user"}


class Recorder:
    def __init__(self, handler: Callable[[httpx.Request], httpx.Response]) -> None:
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []
        self._handler = handler

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(request.read())
        self.requests.append(request)
        return self._handler(request)


def make(handler: Callable[[httpx.Request], httpx.Response], **kw: Any) -> tuple[ContainersClient, Recorder]:
    rec = Recorder(handler)
    kw.setdefault("retry", RetryPolicy(max_retries=2, base=0.01, cap=0.02))
    client = ContainersClient(
        kw.pop("base_url", "https://api.example.test/v1"), transport=httpx.MockTransport(rec), clock=ManualClock(),
        rng=random.Random(0), **kw,
    )
    return client, rec


def test_openai_sends_bearer() -> None:
    client, rec = make(lambda r: httpx.Response(200, json=container("cntr_1", "a")), api_key=KEY)
    assert client.retrieve_container("cntr_1").id == "cntr_1"
    req = rec.requests[0]
    assert req.url == "https://api.example.test/v1/containers/cntr_1"
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert "api-key" not in req.headers


def test_local_without_key_sends_no_authorization() -> None:
    client, rec = make(lambda r: httpx.Response(200, json=container("cntr_1", "a")), dialect="local")
    client.retrieve_container("cntr_1")
    assert "authorization" not in rec.requests[0].headers


@pytest.mark.parametrize("endpoint", ["https://res.openai.azure.com", "https://res.openai.azure.com/",
                                      "https://res.openai.azure.com/openai/v1"])
def test_azure_uses_openai_v1_and_api_key_header(endpoint: str) -> None:
    client, rec = make(lambda r: httpx.Response(200, json=container("cntr_1", "a")), dialect="azure",
                       api_key=KEY, base_url=endpoint)
    client.retrieve_container("cntr_1")
    req = rec.requests[0]
    assert str(req.url) == "https://res.openai.azure.com/openai/v1/containers/cntr_1"
    assert req.headers["api-key"] == KEY
    assert "authorization" not in req.headers
    assert "api-version" not in str(req.url)


def test_gateway_provider_in_create_body_and_query_elsewhere() -> None:
    def handler(r: httpx.Request) -> httpx.Response:
        if r.method == "POST":
            return httpx.Response(200, json=container(
                "cntr_1", "a", extra_fields={"provider": "azure", "raw_request": {"secret": "dsv-SECRET-1"}}))
        return httpx.Response(200, json=container("cntr_1", "a", extra_fields={"latency": 3}))

    client, rec = make(handler, dialect="gateway", gateway_provider="azure")
    c = client.create_container(CreateContainerRequest(name="a"))
    # Tolerated, and dropped: Bifrost's extra_fields.raw_request echoes the create body (domain secrets).
    assert c.id == "cntr_1" and "extra_fields" not in (c.model_extra or {})
    assert "dsv-SECRET-1" not in repr(c) + c.model_dump_json()
    assert json.loads(rec.bodies[0]) == {"name": "a", "provider": "azure"}
    assert "provider" not in rec.requests[0].url.params
    client.retrieve_container("cntr_1")
    assert rec.requests[1].url.params["provider"] == "azure"
    assert rec.requests[1].headers["custom-llm-provider"] == "azure"


def test_gateway_lists_without_has_more_follow_bifrost_cursor_and_filter_names() -> None:
    pages = {
        None: {"object": "list", "data": [container("c1", "x"), container("c2", "want")], "has_more": True,
               "last_id": "c2", "after": "bifrost-cursor-1", "extra_fields": {}},
        "bifrost-cursor-1": {"object": "list", "data": [container("c3", "want", status="expired"),
                                                        container("c4", "y")], "extra_fields": {}},
    }

    def handler(r: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=pages[r.url.params.get("after")])

    client, rec = make(handler, dialect="gateway")
    assert [c.id for c in client.list_containers()] == ["c1", "c2", "c3", "c4"]
    assert [r.url.params.get("after") for r in rec.requests] == [None, "bifrost-cursor-1"]
    assert all(r.url.params["provider"] == "openai" for r in rec.requests)
    # The gateway would drop ?name=, so the client does not rely on it and filters itself.
    assert [c.id for c in client.list_containers(name="want")] == ["c2", "c3"]
    assert "name" not in rec.requests[-1].url.params
    found = client.find_container_by_name("want")
    assert found is not None and found.id == "c2"  # the usable one wins over the expired one


def test_openai_list_sends_name_and_still_filters() -> None:
    client, rec = make(lambda r: httpx.Response(200, json={
        "object": "list", "data": [container("c1", "a"), container("c2", "b")], "has_more": False,
        "first_id": "c1", "last_id": "c2"}))
    assert [c.id for c in client.list_containers(name="b")] == ["c2"]
    assert rec.requests[0].url.params["name"] == "b"


def test_gateway_copies_a_file_id_by_streaming_its_content() -> None:
    def handler(r: httpx.Request) -> httpx.Response:
        path = r.url.path
        if path == "/v1/files/file-1":
            return httpx.Response(200, json={"id": "file-1", "object": "file", "bytes": 5, "created_at": 1,
                                             "filename": "data.csv", "purpose": "user_data"})
        if path == "/v1/files/file-1/content":
            return httpx.Response(200, content=b"a,b\n1")
        if path == "/v1/containers/cntr_1/files" and r.method == "POST":
            assert r.headers["content-type"].startswith("multipart/form-data")
            return httpx.Response(200, json=cfile("cfile_1", "cntr_1", "/mnt/data/ab-data.csv", 5))
        return httpx.Response(500)

    client, rec = make(handler, dialect="gateway")
    f = client.add_file_by_id("cntr_1", "file-1")
    assert f.id == "cfile_1"
    upload = rec.bodies[-1]
    assert b'filename="data.csv"' in upload and b"a,b\n1" in upload
    assert not any(r.headers.get("content-type") == "application/json" for r in rec.requests)


def test_malformed_bodies_name_what_was_wrong() -> None:
    client, _ = make(lambda r: httpx.Response(200, text="<html>oops</html>", headers={"content-type": "text/html"}))
    with pytest.raises(MalformedResponse, match=r"GET /containers/c1: response is not JSON .*text/html"):
        client.retrieve_container("c1")
    client, _ = make(lambda r: httpx.Response(200, json={"object": "container", "name": "a", "status": "running"}))
    with pytest.raises(MalformedResponse, match=r"not a valid Container: id: Field required; created_at: Field"):
        client.retrieve_container("c1")
    client, _ = make(lambda r: httpx.Response(200, json={"object": "list", "data": [{"id": 3}]}))
    with pytest.raises(MalformedResponse, match=r"data\.0\.id: Input should be a valid string"):
        list(client.list_containers())
    client, _ = make(lambda r: httpx.Response(200, json=[1, 2]))
    with pytest.raises(MalformedResponse, match="valid Container"):
        client.retrieve_container("c1")


def test_a_list_that_never_advances_is_malformed_not_an_endless_loop() -> None:
    client, rec = make(lambda r: httpx.Response(200, json={
        "object": "list", "data": [container("c1", "a")], "has_more": True, "last_id": "c1"}))
    with pytest.raises(MalformedResponse, match="did not advance"):
        list(client.list_containers())
    assert len(rec.requests) == 2


def test_expired_retrieve_is_returned_and_expired_error_is_raised() -> None:
    client, _ = make(lambda r: httpx.Response(200, json=container("c1", "a", status="expired")))
    got = client.retrieve_container("c1")
    assert got.expired and not got.usable
    client, _ = make(lambda r: httpx.Response(404, json={"error": {"message": "Container has expired.",
                                                                 "type": "invalid_request_error"}}))
    with pytest.raises(ContainerExpired):
        client.retrieve_container("c1")
    client, _ = make(lambda r: httpx.Response(200, json=container("c1", "a", status="paused")))
    assert not client.retrieve_container("c1").usable


def test_bifrost_envelope_through_the_client() -> None:
    client, _ = make(lambda r: httpx.Response(404, json={
        "is_bifrost_error": False, "status_code": 404, "error": {"message": "Container with id 'c9' not found."},
        "extra_fields": {"provider": "openai"}}), dialect="gateway")
    with pytest.raises(NotFound, match="c9"):
        client.retrieve_container("c9")


def test_ids_are_one_path_segment() -> None:
    client, rec = make(lambda r: httpx.Response(200, json=container("x", "a")))
    client.retrieve_container("litellm:abc/def==")
    assert rec.requests[0].url.raw_path == b"/v1/containers/litellm%3Aabc%2Fdef%3D%3D"


def test_key_never_in_repr_logs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def echo_key(r: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"message": f"Incorrect API key provided: {KEY}",
                                                   "type": "invalid_request_error", "code": "invalid_api_key"}})

    client, _ = make(echo_key, api_key=KEY)
    assert KEY not in repr(client) and "SUPERSECRET" not in repr(client)
    with pytest.raises(AuthError) as info:
        client.retrieve_container("c1")
    assert "SUPERSECRET" not in str(info.value) and "SUPERSECRET" not in repr(info.value)

    def drop(r: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot connect (auth {r.headers.get('authorization')})")

    client, _ = make(drop, api_key=KEY)
    with pytest.raises(TransportError) as terr:
        client.retrieve_container("c1")
    assert "SUPERSECRET" not in str(terr.value)
    assert "SUPERSECRET" not in caplog.text
    settings = Settings(api_key=KEY, backend="openai")
    from_settings = ContainersClient.from_settings(settings, transport=httpx.MockTransport(echo_key))
    assert "SUPERSECRET" not in repr(from_settings) and "SUPERSECRET" not in repr(settings)


def test_download_into_sink_hashes_on_the_way() -> None:
    import hashlib

    data = bytes(range(256)) * 10_000
    client, rec = make(lambda r: httpx.Response(200, content=data))
    sink = io.BytesIO()
    d = client.download_file("c1", "cfile_1", sink)
    assert d.bytes == len(data) and d.sha256 == hashlib.sha256(data).hexdigest()
    assert sink.getvalue() == data
    assert rec.requests[0].url.path == "/v1/containers/c1/files/cfile_1/content"

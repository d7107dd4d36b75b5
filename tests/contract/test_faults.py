"""Fault injection: seeded determinism, 5xx, 429 with Retry-After, drops before/after effect, per endpoint."""

from __future__ import annotations

import httpx
import openai
import pytest

from hearth.localapi import LocalAPIServer
from hearth.localapi.faults import ENDPOINT_NAMES, FaultInjector, endpoint_name
from settings.config import Settings
from settings.faults import FaultConfig
from tests.contract.conftest import make_api
from tests.fixtures.localapi import LocalAPI


def _statuses(api: LocalAPI, n: int, path: str = "/containers") -> list[int]:
    with httpx.Client(base_url=api.base_url) as h:
        return [h.get(path).status_code for _ in range(n)]


def test_seeded_faults_are_deterministic(local_api: LocalAPI) -> None:
    config = {"seed": 42, "error_rate": 0.3, "rate_limit_rate": 0.2}
    local_api.set_faults(config)
    first = _statuses(local_api, 40)
    assert {200, 429} <= set(first) and set(first) & {500, 503}
    local_api.set_faults(config)  # same seed again: same fates again...
    with httpx.Client(base_url=local_api.base_url) as h:
        second = []
        for _ in range(40):
            h.get("/files")  # ...even with traffic to another endpoint interleaved
            second.append(h.get("/containers").status_code)
    assert second == first
    local_api.set_faults({**config, "seed": 43})
    assert _statuses(local_api, 40) != first


def test_429_with_retry_after(local_api: LocalAPI) -> None:
    local_api.set_faults({"rate_limit_rate": 1.0, "retry_after_seconds": 7})
    for base in (local_api.base_url, local_api.gateway_base_url):
        r = httpx.get(f"{base}/containers")
        assert r.status_code == 429 and r.headers["retry-after"] == "7"
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.RateLimitError):
        make_api(local_api, "openai").sdk.containers.list()
    local_api.set_faults({"rate_limit_rate": 1.0, "retry_after_seconds": 0})
    assert "retry-after" not in httpx.get(f"{local_api.base_url}/containers").headers


def test_5xx(local_api: LocalAPI) -> None:
    local_api.set_faults({"seed": 1, "error_rate": 1.0})
    seen = set(_statuses(local_api, 20))
    assert seen == {500, 503}
    r = httpx.post(f"{local_api.base_url}/containers", json={"name": "x"})
    assert r.json()["error"]["type"] == "server_error"
    local_api.set_faults(None)
    assert httpx.get(f"{local_api.base_url}/containers").json()["data"] == []  # nothing took effect


def _created(local_api: LocalAPI) -> list[str]:
    return [c["name"] for c in httpx.get(f"{local_api.base_url}/containers").json()["data"]]


def test_drop_before_processing(local_api: LocalAPI) -> None:
    local_api.set_faults({"endpoints": {"containers.create": {"drop_rate": 1.0, "drop_after_processing": False}}})
    with pytest.raises(httpx.TransportError):
        httpx.post(f"{local_api.base_url}/containers", json={"name": "lost"})
    local_api.set_faults(None)
    assert _created(local_api) == []


def test_drop_after_processing(local_api: LocalAPI) -> None:
    local_api.set_faults({"endpoints": {"containers.create": {"drop_rate": 1.0, "drop_after_processing": True}}})
    with pytest.raises(httpx.TransportError):
        httpx.post(f"{local_api.base_url}/containers", json={"name": "made-anyway"})
    with pytest.raises(openai.APIConnectionError):
        make_api(local_api, "openai").sdk.containers.create(name="sdk-too")
    local_api.set_faults(None)
    assert sorted(_created(local_api)) == ["made-anyway", "sdk-too"]
    # The server is still healthy after the drops.
    assert httpx.get(f"{local_api.base_url}/containers").status_code == 200


def test_drop_of_a_download(local_api: LocalAPI) -> None:
    c = httpx.post(f"{local_api.base_url}/containers", json={"name": "x"}).json()
    f = httpx.post(f"{local_api.base_url}/containers/{c['id']}/files", files={"file": ("a", b"a" * 100_000)}).json()
    local_api.set_faults({"endpoints": {"files.content": {"drop_rate": 1.0}}})
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{local_api.base_url}/containers/{c['id']}/files/{f['id']}/content")


def test_per_endpoint_and_dev_routes_never_faulted(local_api: LocalAPI) -> None:
    local_api.set_faults({"endpoints": {"containers.create": {"error_rate": 1.0}}})
    assert httpx.post(f"{local_api.base_url}/containers", json={"name": "x"}).status_code in (500, 503)
    assert httpx.get(f"{local_api.base_url}/containers").status_code == 200
    local_api.set_faults({"error_rate": 1.0, "drop_rate": 1.0})
    assert httpx.get(f"{local_api.root_url}/_dev/clock").status_code == 200
    assert httpx.get(f"{local_api.root_url}/_dev/faults").json()["drop_rate"] == 1.0
    local_api.set_faults(None)
    assert httpx.get(f"{local_api.root_url}/_dev/faults").json()["error_rate"] == 0.0


def test_dropped_create_fields_make_the_container_with_the_api_defaults_as_a_gateway_would(
    local_api: LocalAPI,
) -> None:
    local_api.set_faults({"drop_create_fields": ["memory_limit", "network_policy"]})
    client = openai.OpenAI(base_url=local_api.base_url, api_key="unused", max_retries=0)
    made = client.containers.create(name="narrow", memory_limit="4g", network_policy={"type": "disabled"},
                                    expires_after={"anchor": "last_active_at", "minutes": 7})
    assert made.memory_limit == "1g" and made.network_policy is None  # as if never asked
    assert made.expires_after is not None and made.expires_after.minutes == 7  # the rest is kept
    assert client.containers.retrieve(made.id).memory_limit == "1g"
    # A body that is not a JSON object reaches the route as sent, and is answered as usual.
    assert httpx.post(f"{local_api.base_url}/containers", content=b"not json",
                      headers={"content-type": "application/json"}).status_code == 400
    local_api.set_faults(None)
    kept = client.containers.create(name="wide", memory_limit="4g")
    assert kept.memory_limit == "4g"


def test_bad_fault_config_is_400(local_api: LocalAPI) -> None:
    r = httpx.put(f"{local_api.root_url}/_dev/faults", json={"error_rate": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "error_rate"
    r = httpx.put(f"{local_api.root_url}/_dev/faults", json={"endpoints": {"x": {"drop_rate": "lots"}}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "endpoints.x.drop_rate"


def test_faults_from_settings(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HEARTH_FAULTS", '{"rate_limit_rate": 1.0, "retry_after_seconds": 3}')
    settings = Settings()
    with LocalAPIServer(tmp_path / "s", faults=settings.faults) as server:
        r = httpx.get(f"{server.base_url}/containers")
        assert r.status_code == 429 and r.headers["retry-after"] == "3"


def test_latency_and_jitter_drawn_within_bounds_and_seeded() -> None:
    config = FaultConfig(seed=7, latency_ms=100, jitter_ms=50)
    a, b = FaultInjector(config), FaultInjector(config)
    delays = [a.decide("containers.list").delay for _ in range(50)]
    assert all(0.1 <= d <= 0.15 for d in delays) and len(set(delays)) > 1
    assert delays == [b.decide("containers.list").delay for _ in range(50)]
    assert FaultInjector().decide("containers.list").action == "pass"  # off by default


def test_endpoint_names() -> None:
    assert endpoint_name("POST", "/v1/containers") == "containers.create"
    assert endpoint_name("GET", "/openai/v1/containers/cntr_1/files/cfile_2/content") == "files.content"
    assert endpoint_name("DELETE", "/v1/files/file-1") == "uploads.delete"
    assert endpoint_name("GET", "/_dev/clock") is None
    assert len(ENDPOINT_NAMES) == 14

"""The fixture contract other tests rely on: fresh server, dev helpers over HTTP, restart keeps state."""

from __future__ import annotations

import httpx

from tests.fixtures.localapi import LocalAPI


def test_fixture_serves_both_prefixes_and_dev_helpers(local_api: LocalAPI) -> None:
    assert local_api.base_url.endswith("/v1") and local_api.gateway_base_url.endswith("/openai/v1")
    assert local_api.api_key is None
    created = httpx.post(f"{local_api.base_url}/containers", json={"name": "fx"}).json()
    before = local_api.now()
    after = local_api.advance_clock(120)
    assert after - before >= 120
    written = local_api.write_assistant_file(created["id"], "/mnt/data/out/report.csv", b"a,b\n")
    assert written["source"] == "assistant" and written["path"] == "/mnt/data/out/report.csv"
    assert written["bytes"] == 4
    local_api.restart()
    again = httpx.get(f"{local_api.base_url}/containers/{created['id']}/files/{written['id']}").json()
    assert again["path"] == "/mnt/data/out/report.csv"
    assert local_api.now() - after >= 0  # the advanced clock survived the restart


def test_fixture_with_keys_requires_a_key(local_api_with_keys: LocalAPI) -> None:
    api = local_api_with_keys
    assert api.api_key == "sk-test-a"
    assert httpx.get(f"{api.base_url}/containers").status_code == 401
    assert httpx.get(f"{api.base_url}/containers", headers=api.headers()).status_code == 200
    api.set_faults({"seed": 1, "error_rate": 1.0})
    assert httpx.get(f"{api.base_url}/containers", headers=api.headers()).status_code in (500, 503)
    api.set_faults(None)
    assert httpx.get(f"{api.base_url}/containers", headers=api.headers()).status_code == 200

"""The ``/_dev`` controls (clock, faults) are guarded by the API keys when keys are configured.

Without a valid key a dev request is a 401 in the OpenAI envelope and changes nothing; without keys
configured the dev routes stay open, as every other route does.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from openai import DefaultHttpxClient, OpenAI

from tests.fixtures.localapi import TEST_KEYS, LocalAPI

DEV_CALLS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("GET", "/_dev/clock", {}),
    ("POST", "/_dev/clock", {"advance_seconds": 3600}),
    ("GET", "/_dev/faults", {}),
    ("PUT", "/_dev/faults", {"error_rate": 1.0}),
    ("GET", "/_dev/switches", {}),
    ("PUT", "/_dev/switches", {"file_ids": "reject"}),
    ("GET", "/_dev/requests", {}),
    ("DELETE", "/_dev/requests", {}),
)


def _sdk(local: LocalAPI, key: str) -> OpenAI:
    # The SDK's generic verbs reach the dev routes when its base is the server's root.
    return OpenAI(base_url=local.root_url, api_key=key, max_retries=0, timeout=30,
                  http_client=DefaultHttpxClient(verify=False))


@pytest.mark.parametrize(("method", "path", "body"), DEV_CALLS)
def test_dev_routes_without_a_valid_key_are_401_and_change_nothing(
    local_api_with_keys: LocalAPI, method: str, path: str, body: dict[str, Any]
) -> None:
    local = local_api_with_keys
    url = f"{local.root_url}{path}"
    missing = httpx.request(method, url, json=body or None, timeout=30)
    assert missing.status_code == 401, missing.text
    assert missing.json()["error"]["message"].startswith("You didn't provide an API key.")
    assert missing.json()["error"]["type"] == "invalid_request_error"
    wrong = httpx.request(method, url, json=body or None, headers={"Authorization": "Bearer sk-wrong-9876"}, timeout=30)
    assert wrong.status_code == 401, wrong.text
    assert wrong.json()["error"] == {
        "message": "Incorrect API key provided: ****9876. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
    with _sdk(local, "sk-nope") as sdk, pytest.raises(openai.AuthenticationError):
        if method == "GET":
            sdk.get(path, cast_to=httpx.Response)
        else:
            getattr(sdk, method.lower())(path, cast_to=httpx.Response, body=body)
    # Nothing changed: the clock was not moved, and no fault was switched on (the API still answers).
    assert local.http.get(f"{local.root_url}/_dev/clock").json()["offset"] == 0.0
    assert local.http.get(f"{local.root_url}/_dev/faults").json()["error_rate"] == 0.0
    assert local.http.get(f"{local.base_url}/containers").status_code == 200


@pytest.mark.parametrize("key", TEST_KEYS)
def test_dev_routes_with_any_configured_key_work(local_api_with_keys: LocalAPI, key: str) -> None:
    local = local_api_with_keys
    headers = {"Authorization": f"Bearer {key}"}
    before = httpx.get(f"{local.root_url}/_dev/clock", headers=headers, timeout=30).json()["now"]
    moved = httpx.post(f"{local.root_url}/_dev/clock", json={"advance_seconds": 60}, headers=headers, timeout=30)
    assert moved.status_code == 200 and moved.json()["now"] >= before + 60
    with _sdk(local, key) as sdk:
        faults = sdk.get("/_dev/faults", cast_to=httpx.Response)
    assert faults.status_code == 200 and faults.json()["error_rate"] == 0.0
    # Azure's header is a key too.
    put = httpx.put(f"{local.root_url}/_dev/faults", json={"error_rate": 1.0}, headers={"api-key": key}, timeout=30)
    assert put.status_code == 200 and put.json()["error_rate"] == 1.0


def test_dev_routes_stay_open_without_keys(local_api: LocalAPI) -> None:
    before = httpx.get(f"{local_api.root_url}/_dev/clock", timeout=30).json()["now"]
    moved = httpx.post(f"{local_api.root_url}/_dev/clock", json={"advance_seconds": 60}, timeout=30)
    assert moved.status_code == 200 and moved.json()["now"] >= before + 60
    put = httpx.put(f"{local_api.root_url}/_dev/faults", json={"rate_limit_rate": 1.0}, timeout=30)
    assert put.status_code == 200 and put.json()["rate_limit_rate"] == 1.0
    # Any or no Authorization header is fine when the server has no keys.
    assert httpx.get(f"{local_api.root_url}/_dev/faults", headers={"Authorization": "Bearer x"}).status_code == 200

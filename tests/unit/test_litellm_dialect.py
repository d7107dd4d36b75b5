"""The LiteLLM dialect and its error shapes, on httpx.MockTransport (the real proxy is in
tests/integration/test_litellm.py; these pin the wire decisions without its 90 s start).

Bodies and headers below are the ones litellm[proxy] 1.108.7 answered in front of the local API.
"""

from __future__ import annotations

import json
import random

import httpx
import pytest

from hearth.api.client import ContainersClient
from hearth.api.dialects import LiteLLMDialect, make_dialect
from hearth.api.errormap import error_from_response, parse_retry_after
from hearth.api.models import CreateContainerRequest
from hearth.api.retry import RetryPolicy
from hearth.clock import ManualClock
from hearth.errors import AuthError, ConfigError, RateLimited, ServerError
from settings.config import Backend, Settings

NOW = 1_700_000_000.0
CONTAINER = {"id": "cntr_1", "object": "container", "name": "a", "created_at": 1, "status": "running",
             "last_active_at": 1, "expires_after": {"anchor": "last_active_at", "minutes": 20}}


@pytest.mark.parametrize("given", ["http://gw:4000", "http://gw:4000/", "http://gw:4000/v1",
                                   "http://gw:4000/openai", "http://gw:4000/openai/v1/"])
def test_any_documented_base_reaches_the_chosen_route_never_v1_v1(given: str) -> None:
    assert LiteLLMDialect(routes="containers").base_url(given) == "http://gw:4000/v1"
    assert LiteLLMDialect(routes="passthrough").base_url(given) == "http://gw:4000/openai"


def test_the_containers_route_forwards_three_create_fields_and_no_name_filter() -> None:
    narrow = make_dialect("litellm", gateway_routes="containers")
    assert narrow.create_fields == frozenset({"name", "expires_after", "file_ids"})
    assert not narrow.forwards_name_filter and not narrow.supports_file_id_copy
    assert narrow.extra_headers() == {"custom-llm-provider": "openai"}
    wide = make_dialect("litellm", gateway_routes="passthrough")
    assert wide.create_fields is None and wide.forwards_name_filter and wide.supports_file_id_copy
    assert wide.extra_headers() == {}  # relayed to OpenAI as is
    with pytest.raises(ConfigError, match="HEARTH_GATEWAY_ROUTES"):
        make_dialect("litellm", gateway_routes="v2")


def test_settings_choose_the_backend_and_routes() -> None:
    s = Settings(backend=Backend.litellm, api_base="http://gw:4000/openai/v1", gateway_routes="passthrough")
    client = ContainersClient.from_settings(s)
    try:
        assert client.base_url == "http://gw:4000/openai" and client.create_fields is None
    finally:
        client.close()


def test_create_sends_no_bifrost_provider_field_and_list_filters_by_name_client_side() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return httpx.Response(200, json=CONTAINER)
        other = {**CONTAINER, "id": "cntr_2", "name": "b"}
        return httpx.Response(200, json={"object": "list", "data": [CONTAINER, other], "has_more": False})

    client = ContainersClient("http://gw:4000", dialect="litellm", api_key="sk-proxy",
                              transport=httpx.MockTransport(handler), clock=ManualClock())
    client.create_container(CreateContainerRequest(name="a"))
    assert "provider" not in json.loads(seen[0].read()) and seen[0].headers["custom-llm-provider"] == "openai"
    assert [c.id for c in client.list_containers(name="b")] == ["cntr_2"]
    assert "name" not in seen[1].url.params  # the route drops it; asking would only mislead


def test_retry_after_from_gateway_renamed_headers() -> None:
    assert parse_retry_after({"llm_provider-retry-after": "7"}, NOW) == 7.0
    assert parse_retry_after({"llm_provider-retry-after-ms": "2500"}, NOW) == 2.5
    assert parse_retry_after({"retry-after-ms": "300", "llm_provider-retry-after": "9"}, NOW) == 0.3
    assert parse_retry_after(httpx.Headers({"LLM_Provider-Retry-After": "4"}), NOW) == 4.0
    body = json.dumps({"error": {"message": "litellm.RateLimitError: RateLimitError: OpenAIException - Rate limit",
                                 "type": "throttling_error", "param": None, "code": "429"}}).encode()
    err = error_from_response(429, {"llm_provider-retry-after": "7"}, body, what="GET /containers", now=NOW)
    assert isinstance(err, RateLimited) and err.retry_after == 7.0


def litellm_error(message: str, type_: str | None, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}}).encode()


@pytest.mark.parametrize(("status", "body"), [
    (400, litellm_error("No connected db.", "no_db_connection", "400")),  # a key that is not the master key
    (401, litellm_error("Authentication Error, Invalid proxy server token passed.", "token_not_found_in_db", "401")),
    (500, litellm_error("Required 'OPENAI_API_KEY' in environment to make pass-through calls to OpenAI.", None,
                        "500")),
    (500, litellm_error("litellm.AuthenticationError: AuthenticationError: OpenAIException - The api_key client "
                        "option must be set", None, "500")),
])
def test_key_answers_are_auth_errors_whatever_their_status(status: int, body: bytes) -> None:
    err = error_from_response(status, {"content-type": "application/json"}, body, what="GET /containers", now=NOW)
    assert isinstance(err, AuthError) and not err.temporary, err


def test_a_bare_500_to_a_keyless_request_is_the_missing_key_only_where_the_dialect_says_so() -> None:
    headers = {"content-type": "text/plain; charset=utf-8"}
    plain = error_from_response(500, headers, b"Internal Server Error", what="GET /containers", now=NOW)
    assert isinstance(plain, ServerError) and plain.temporary
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(500, headers=headers, content=b"Internal Server Error")

    keyless = ContainersClient("http://gw:4000", dialect="litellm", transport=httpx.MockTransport(handler),
                               clock=ManualClock(), rng=random.Random(0), retry=RetryPolicy(max_retries=3))
    with pytest.raises(AuthError, match="HEARTH_API_KEY"):
        keyless.retrieve_container("cntr_1")
    assert len(calls) == 1  # the first answer, not retried
    keyed = ContainersClient("http://gw:4000", dialect="litellm", api_key="sk-proxy",
                             transport=httpx.MockTransport(handler), clock=ManualClock(), rng=random.Random(0),
                             retry=RetryPolicy(max_retries=2, base=0.01, cap=0.01))
    with pytest.raises(ServerError):
        keyed.retrieve_container("cntr_1")  # with a key a bare 500 is the proxy's own trouble: retried
    assert len(calls) == 1 + 3

"""The one HTTP-error mapping: every backend's envelope lands on the right exception class."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from hearth.api.errormap import error_from_response, parse_retry_after, redact
from hearth.errors import (
    APIError,
    AuthError,
    BadRequest,
    ContainerExpired,
    NotFound,
    RateLimited,
    ServerError,
)

NOW = 1_700_000_000.0


def openai_body(message: str, *, type_: str | None = "invalid_request_error", param: str | None = None,
                code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


def bifrost_body(message: str, status: int) -> bytes:
    return json.dumps({
        "is_bifrost_error": False, "status_code": status,
        "error": {"type": "invalid_request_error", "message": message},
        "extra_fields": {"provider": "openai", "request_type": "container_retrieve"},
    }).encode()


def litellm_body(message: str, status: int) -> bytes:
    return json.dumps({"error": {"message": message, "type": None, "param": None, "code": str(status)}}).encode()


def m(status: int, body: bytes, headers: dict[str, str] | None = None) -> APIError:
    return error_from_response(status, headers or {"content-type": "application/json"}, body, what="GET /x", now=NOW)


@pytest.mark.parametrize(
    ("status", "body", "cls", "temporary"),
    [
        (404, openai_body("Container with id 'cntr_1' not found."), NotFound, False),
        (404, bifrost_body("Container with id 'cntr_1' not found.", 404), NotFound, False),
        (404, litellm_body("litellm.NotFoundError: NotFoundError: OpenAIException - not found", 404), NotFound, False),
        (404, openai_body("Container is expired."), ContainerExpired, False),
        (400, openai_body("Container is expired."), ContainerExpired, False),
        (404, openai_body("Container has expired."), ContainerExpired, False),
        (400, openai_body("Container is not running."), ContainerExpired, False),
        (404, litellm_body("litellm.NotFoundError: OpenAIException - Container is expired.", 404), ContainerExpired,
         False),
        (400, openai_body("bad anchor", param="expires_after.anchor"), BadRequest, False),
        (422, b'{"detail": "unprocessable"}', BadRequest, False),
        (401, openai_body("Incorrect API key provided", code="invalid_api_key"), AuthError, False),
        (403, litellm_body("litellm.AuthenticationError: nope", 403), AuthError, False),
        (429, openai_body("slow down", type_="rate_limit_error"), RateLimited, True),
        (500, openai_body("boom", type_="server_error"), ServerError, True),
        (503, b"<html>Service Unavailable</html>", ServerError, True),
        (502, b"", ServerError, True),
        (408, b"", APIError, True),
        (418, openai_body("teapot"), APIError, False),
    ],
)
def test_status_and_envelope_decide_the_class(status: int, body: bytes, cls: type[APIError], temporary: bool) -> None:
    err = m(status, body)
    assert type(err) is cls
    assert err.temporary is temporary
    assert err.status == status
    assert str(err).startswith(f"GET /x: {status}")


def test_bad_request_carries_param_and_code() -> None:
    err = m(400, openai_body("invalid limit", param="limit", code="integer_above_max_value"))
    assert isinstance(err, BadRequest)
    assert (err.param, err.code) == ("limit", "integer_above_max_value")


def test_litellm_numeric_code_is_a_status_not_an_error_code_and_fixes_a_generic_500() -> None:
    err = m(500, litellm_body("litellm.NotFoundError: Container with id 'cntr_9' not found.", 404))
    assert isinstance(err, NotFound)
    assert err.status == 404 and err.code is None
    assert "(404)" in str(err)


def test_bifrost_status_code_fixes_a_generic_500_but_not_a_specific_status() -> None:
    assert isinstance(m(500, bifrost_body("throttled", 429)), RateLimited)
    assert isinstance(m(502, bifrost_body("upstream", 404)), ServerError)


def test_litellm_literal_none_strings_are_nulls() -> None:
    body = json.dumps({"error": {"message": "x", "type": "None", "param": "None", "code": "None"}}).encode()
    err = m(400, body)
    assert (err.param, err.code) == (None, None)


def test_non_json_body_is_quoted_briefly() -> None:
    err = m(502, b"<html>" + b"x" * 5000 + b"</html>", {"content-type": "text/html"})
    assert "non-JSON error body (text/html)" in str(err)
    assert len(str(err)) < 400


def test_retry_after_seconds_ms_and_http_date() -> None:
    assert parse_retry_after({"retry-after": "7"}, NOW) == 7.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}, NOW) == 1.5
    when = format_datetime(datetime.fromtimestamp(NOW + 30, tz=UTC), usegmt=True)
    assert parse_retry_after({"retry-after": when}, NOW) == pytest.approx(30.0)
    assert parse_retry_after({"retry-after": "soon"}, NOW) is None
    assert parse_retry_after({}, NOW) is None
    err = m(429, openai_body("slow"), {"retry-after": "3", "content-type": "application/json"})
    assert isinstance(err, RateLimited) and err.retry_after == 3.0


def test_keys_are_redacted_from_messages() -> None:
    key = "sk-proj-THISisSECRETkey1234567890"
    body = openai_body(f"Incorrect API key provided: {key}. You can find your API key at ...")
    err = error_from_response(401, {}, body, what="GET /containers", now=NOW, secrets=[key])
    assert key not in str(err) and "THISisSECRET" not in str(err)
    masked = openai_body("Incorrect API key provided: sk-abc12***********************xyz9.")
    assert "abc12" not in str(m(401, masked))
    custom = "gw-key-0123456789"
    assert redact(f"key {custom} rejected", [custom]) == "key *** rejected"

"""Review B12: a transport failure's traceback carries no API key (the unredacted cause is not chained)."""

from __future__ import annotations

import traceback

import httpx
import pytest

from hearth.api.client import ContainersClient
from hearth.api.retry import RetryPolicy
from hearth.errors import TransportError

KEY = "sk-review-b12-secret"


def test_transport_error_traceback_has_no_key() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused while sending {request.headers['authorization']}", request=request)

    client = ContainersClient("http://127.0.0.1:9/v1", api_key=KEY, dialect="local",
                              transport=httpx.MockTransport(handler), retry=RetryPolicy.never())
    with client, pytest.raises(TransportError) as info:
        client.retrieve_container("cntr_1")
    text = "".join(traceback.format_exception(info.value))
    assert "ConnectError" in str(info.value)
    assert KEY not in text

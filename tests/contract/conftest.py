"""Contract-test helpers: the official ``openai`` SDK (and raw httpx) pointed at the local API,
once through ``/v1`` (OpenAI format) and once through ``/openai/v1`` (gateway format)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from openai import DefaultHttpxClient, OpenAI

from tests.fixtures.localapi import LocalAPI

FLAVOURS = ("openai", "gateway")


@dataclass
class Api:
    """One flavour of the API: its base URL, an SDK client, a raw client, and the gateway extras."""

    local: LocalAPI
    flavour: str
    base_url: str
    sdk: OpenAI
    http: httpx.Client

    @property
    def gateway(self) -> bool:
        return self.flavour == "gateway"

    def create_extra(self) -> dict[str, Any]:
        """What a gateway client adds to a create body (``provider``); nothing for OpenAI."""
        return {"provider": "openai"} if self.gateway else {}

    def query_extra(self) -> dict[str, Any]:
        return {"provider": "openai"} if self.gateway else {}

    def create_container(self, name: str = "c", **kw: Any) -> Any:
        return self.sdk.containers.create(name=name, extra_body=self.create_extra() or None, **kw)

    def strip(self, body: dict[str, Any]) -> dict[str, Any]:
        """A response body without the gateway's additions, to compare with the OpenAI format."""
        return {k: v for k, v in body.items() if k not in ("extra_fields", "metadata")}


def make_api(local: LocalAPI, flavour: str, api_key: str | None = None) -> Api:
    base = local.gateway_base_url if flavour == "gateway" else local.base_url
    key = api_key or local.api_key or "sk-local-unused"
    query = {"provider": "openai"} if flavour == "gateway" else None
    # verify=False: plain http on loopback, and loading the CA bundle costs ~0.1 s per client.
    sdk = OpenAI(
        base_url=base, api_key=key, max_retries=0, timeout=30, default_query=query,
        http_client=DefaultHttpxClient(verify=False),
    )
    http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30, verify=False)
    return Api(local=local, flavour=flavour, base_url=base, sdk=sdk, http=http)


@pytest.fixture(params=FLAVOURS)
def api(request: pytest.FixtureRequest, local_api: LocalAPI) -> Iterator[Api]:
    made = make_api(local_api, request.param)
    yield made
    made.http.close()
    made.sdk.close()


@pytest.fixture
def v1(local_api: LocalAPI) -> Iterator[Api]:
    made = make_api(local_api, "openai")
    yield made
    made.http.close()
    made.sdk.close()

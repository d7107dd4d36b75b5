"""Hearth through a real LiteLLM proxy (litellm[proxy] 1.108.7) in front of the local API.

The client contract on both LiteLLM route families (GATEWAYS.md §2.6): every create field through
the ``/openai`` pass-through; the ``/v1/containers`` routes drop ``memory_limit``, ``network_policy``
and ``skills``, so a pool that needs one is refused before any create; uploads, listings, content
sha256, error mapping, a 429 whose ``Retry-After`` the proxy renames ``llm_provider-retry-after``,
a missing or wrong key answered as an auth error at once. Then a short fill → lease → harvest with a
real Celery worker whose every API call goes through the proxy.

The proxy (tests/fixtures/litellm.py) takes long to start, so one proxy and one local API serve the
module; names are unique per test. Without ``HEARTH_LITELLM_BIN`` every test here skips and says why.
"""

from __future__ import annotations

import hashlib
import io
import random
import uuid
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest
from celery import Celery

from hearth.api.client import ContainersClient
from hearth.api.models import CreateContainerRequest
from hearth.api.retry import RetryPolicy
from hearth.clock import ManualClock
from hearth.errors import AuthError, ConfigError, NotFound, RateLimited
from hearth.operations import Operations
from hearth.planner import tick
from hearth.pool.model import State, make_name
from hearth.runtime import Runtime
from tests.fixtures.celery import WorkerProcess
from tests.fixtures.litellm import LiteLLMProxy
from tests.fixtures.localapi import LocalAPI
from tests.fixtures.pools import PoolEnv
from tests.helpers import until

ROUTES = ("containers", "passthrough")


@pytest.fixture
def local_api(litellm_upstream: LocalAPI) -> Iterator[LocalAPI]:
    """The local API behind the proxy stands in for the per-test one (pools_env points at it)."""
    litellm_upstream.set_faults(None)
    yield litellm_upstream
    litellm_upstream.set_faults(None)


@pytest.fixture
def pools_extra_env(litellm_proxy: LiteLLMProxy) -> dict[str, str]:
    """Every process of a test talks to the proxy's /v1 container routes with the proxy's key."""
    return {"HEARTH_BACKEND": "litellm", "HEARTH_API_BASE": litellm_proxy.root_url,
            "HEARTH_API_KEY": litellm_proxy.master_key, "HEARTH_GATEWAY_ROUTES": "containers"}


def unique(prefix: str = "llm") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Counting(httpx.BaseTransport):
    """A real HTTP transport that counts the requests it sends (to tell a retry from a first answer)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.sent = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def client_for(proxy: LiteLLMProxy, routes: str, *, key: str | None = "master", **kw: object) -> ContainersClient:
    api_key = proxy.master_key if key == "master" else key
    # The documented Bifrost-style base on purpose: the dialect must still reach the right route.
    return ContainersClient(f"{proxy.root_url}/openai/v1", dialect="litellm", gateway_routes=routes,
                            api_key=api_key, **kw)  # type: ignore[arg-type]


def upstream_sdk(api: LocalAPI) -> openai.OpenAI:
    """The official SDK straight at the local API: what the proxy really made, without the proxy."""
    return openai.OpenAI(base_url=api.base_url, api_key="unused", max_retries=0)


def test_every_create_field_reaches_the_api_through_the_passthrough(
    litellm_proxy: LiteLLMProxy, local_api: LocalAPI
) -> None:
    name = unique()
    request = CreateContainerRequest.model_validate({
        "name": name, "memory_limit": "4g", "expires_after": {"anchor": "last_active_at", "minutes": 7},
        "network_policy": {"type": "allowlist", "allowed_domains": ["api.example.com"]},
    })
    with client_for(litellm_proxy, "passthrough") as client:
        made = client.create_container(request)
        assert made.memory_limit == "4g" and made.network_policy is not None
        found = client.find_container_by_name(name)
        assert found is not None and found.id == made.id
    upstream = upstream_sdk(local_api).containers.retrieve(made.id)
    assert upstream.memory_limit == "4g" and upstream.expires_after.minutes == 7
    assert upstream.network_policy is not None and upstream.network_policy.type == "allowlist"


@pytest.mark.parametrize(("routes", "forwarded"), [("passthrough", True), ("containers", False)])
def test_skills_reach_the_api_only_through_the_passthrough(
    litellm_proxy: LiteLLMProxy, local_api: LocalAPI, routes: str, forwarded: bool
) -> None:
    # The local API refuses this skill reference (a bad version) with a 400 naming it: an answer
    # that shows whether the field arrived. Raw HTTP, since Hearth's own model would refuse it first.
    base = litellm_proxy.passthrough_base if routes == "passthrough" else litellm_proxy.containers_base
    body = {"name": unique(), "skills": [{"type": "skill_reference", "skill_id": "skill_x", "version": "0"}]}
    r = httpx.post(f"{base}/containers", json=body, timeout=60,
                   headers={"Authorization": f"Bearer {litellm_proxy.master_key}"})
    if forwarded:
        assert r.status_code == 400 and "skills" in r.text, r.text
    else:
        assert r.status_code == 200 and r.json()["name"] == body["name"], r.text  # dropped silently


def test_the_containers_routes_drop_memory_limit_and_a_pool_needing_it_is_refused_before_any_create(
    litellm_proxy: LiteLLMProxy, local_api: LocalAPI, pools_env: PoolEnv, hearth_runtime: Runtime,
) -> None:
    # What the route does (so the refusal is not for a belief): a 4g create comes back 1g upstream.
    with client_for(litellm_proxy, "containers") as client:
        made = client.create_container(CreateContainerRequest.model_validate({"name": unique(), "memory_limit": "4g"}))
    assert upstream_sdk(local_api).containers.retrieve(made.id).memory_limit == "1g"

    pools_env.write_pools("""
version: 1
pools:
  big:
    min_ready: 1
    max_total: 1
    container: {memory_limit: 4g, expires_after_minutes: 10}
""")
    rt = hearth_runtime
    assert rt.client.dialect == "litellm /v1/containers"
    name = make_name(rt.settings.name_prefix, "big")
    rt.store.write_intent("big", name)
    before = {c.id for c in upstream_sdk(local_api).containers.list(limit=100)}
    with pytest.raises(ConfigError) as raised:
        Operations(rt).provision(name)
    message = str(raised.value)
    assert "memory_limit (asked 4g)" in message and "HEARTH_GATEWAY_ROUTES=passthrough" in message, message
    assert {c.id for c in upstream_sdk(local_api).containers.list(limit=100)} == before  # nothing created
    assert rt.store.breaker_state("big").permanent


@pytest.mark.parametrize("routes", ROUTES)
def test_uploads_listings_and_content_sha256_through_the_proxy(
    litellm_proxy: LiteLLMProxy, local_api: LocalAPI, routes: str
) -> None:
    payload = random.Random(7).randbytes(300_000)
    with client_for(litellm_proxy, routes) as client:
        made = client.create_container(CreateContainerRequest(name=unique()))
        uploaded = client.upload_file(made.id, io.BytesIO(payload), filename="data.bin")
        assert uploaded.bytes in (None, len(payload))
        listed = list(client.list_files(made.id))
        assert uploaded.id in {f.id for f in listed}
        sink = io.BytesIO()
        got = client.download_file(made.id, uploaded.id, sink)
        assert got.sha256 == hashlib.sha256(payload).hexdigest() and sink.getvalue() == payload
        assert made.id in {c.id for c in client.list_containers()}
        # The name filter: forwarded by the pass-through, applied here for the /v1 routes.
        assert [c.id for c in client.list_containers(name=made.name)] == [made.id]
        client.delete_container(made.id)
        with pytest.raises(NotFound):
            client.retrieve_container(made.id)


@pytest.mark.parametrize("routes", ROUTES)
def test_a_429_waits_as_long_as_the_upstream_retry_after_says(
    litellm_proxy: LiteLLMProxy, local_api: LocalAPI, routes: str
) -> None:
    clock = ManualClock()
    with client_for(litellm_proxy, routes, clock=clock, rng=random.Random(0),
                    retry=RetryPolicy(max_retries=1, budget=60, base=0.01, cap=0.05)) as client:
        made = client.create_container(CreateContainerRequest(name=unique()))
        local_api.set_faults({"endpoints": {"containers.retrieve": {"rate_limit_rate": 1.0, "retry_after_seconds": 7}}})
        started = clock.now()
        with pytest.raises(RateLimited) as raised:
            client.retrieve_container(made.id)
    # The /v1 routes carry it as llm_provider-retry-after, the pass-through as Retry-After.
    assert raised.value.retry_after == 7.0
    assert clock.now() - started == 7.0  # one retry, after the 7 s asked (the jitter would give <= 0.05)


@pytest.mark.parametrize("routes", ROUTES)
def test_a_missing_or_wrong_key_is_an_auth_error_on_the_first_answer(
    litellm_proxy: LiteLLMProxy, local_api: LocalAPI, routes: str
) -> None:
    for key in (None, "sk-not-the-proxy-key"):
        transport = Counting()
        client = client_for(litellm_proxy, routes, key=key, transport=transport, clock=ManualClock(),
                            retry=RetryPolicy(max_retries=4, base=0.01, cap=0.01))
        with client, pytest.raises(AuthError) as raised:
            list(client.list_containers())
        assert transport.sent == 1, f"key {key!r}: retried {transport.sent - 1} times"
        assert "HEARTH_API_KEY" in str(raised.value)
        assert key is None or key not in str(raised.value)


def test_an_unknown_container_is_not_found_on_both_routes(litellm_proxy: LiteLLMProxy, local_api: LocalAPI) -> None:
    for routes in ROUTES:
        with client_for(litellm_proxy, routes) as client, pytest.raises(NotFound, match="not found"):
            client.retrieve_container("cntr_does_not_exist")


POOLS = """
version: 1
pools:
  gw:
    min_ready: 1
    max_total: 2
    container: {expires_after_minutes: 10}
    keepalive: {margin_seconds: 60}
    lease: {ttl_seconds: 3600, min_remaining_on_claim_seconds: 60, wait_seconds: 30}
"""


def test_fill_lease_and_harvest_through_the_proxy_with_a_real_worker(
    pools_env: PoolEnv, hearth_runtime: Runtime, local_api: LocalAPI, litellm_proxy: LiteLLMProxy,
    start_worker: Callable[..., WorkerProcess], celery_app: Celery,
) -> None:
    pools_env.write_pools(POOLS)
    rt = hearth_runtime
    assert rt.client.base_url == litellm_proxy.containers_base
    start_worker(pools_env.env)
    send = lambda name, args: celery_app.send_task(name, args=args)  # noqa: E731
    until(lambda: len(rt.store.records("gw", State.READY)) == 1, step=lambda: tick(rt, send), timeout=90,
          what="the pool filled through the proxy")

    lease = celery_app.send_task("hearth.lease", args=["gw"]).get(timeout=60)
    assert lease["container_id"].startswith("cntr_")
    # The container exists upstream, made through the proxy.
    assert upstream_sdk(local_api).containers.retrieve(lease["container_id"]).status == "running"
    local_api.write_assistant_file(lease["container_id"], "/mnt/data/out/result.csv", b"a,b\n1,2\n")

    released = celery_app.send_task("hearth.release", args=[lease["container_id"], lease["lease_id"]]).get(timeout=60)
    assert released["state"] == "HARVESTING"
    until(lambda: any(p.is_file() for p in pools_env.harvest_dir.rglob("result.csv")), timeout=90,
          what="the harvest through the proxy")
    (saved,) = [p for p in pools_env.harvest_dir.rglob("result.csv") if p.is_file()]
    assert saved.read_bytes() == b"a,b\n1,2\n"
    until(lambda: lease["container_id"] not in {c.id for c in upstream_sdk(local_api).containers.list(limit=100)},
          timeout=60, what="the leased container retired")

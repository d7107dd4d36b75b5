"""Permanent create errors stop and speak; a container unlike its pool's spec is never handed out.

On the real Redis, the local API over a socket and (where a worker's environment matters) a real
Celery worker process:

* a pool whose ``domain_secrets`` names a variable the worker lacks: the first failed create opens
  the pool's breaker with the reason, ``hearth status``/``plan`` say it, no create reaches the API
  and no record is written over many ticks; with the variable set (worker restarted with it), the
  planner lifts the pause and the pool fills;
* a backend that drops ``memory_limit`` on create (the local API's ``drop_create_fields`` fault, as
  LiteLLM's ``/v1`` routes do): the 1g container made for a 4g pool is deleted, never leased, the
  breaker pauses the pool with the reason, and after the cool-down a probe fills it right;
* a dialect whose ``create_fields`` lacks ``memory_limit``: refused before any create, with a message
  naming the pool, the field and the fix; a spec that no longer needs the field lifts the pause;
* a 400 for the pool's own body: paused until the spec changes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator

import httpx
import pytest
from celery import Celery

from hearth.api.client import ContainersClient
from hearth.api.dialects import Dialect
from hearth.api.retry import RetryPolicy
from hearth.clock import OffsetClock
from hearth.errors import AuthError, BadRequest, ConfigError, PoolEmpty
from hearth.operations import Operations
from hearth.planner import Planner, tick
from hearth.pool.model import State, make_name
from hearth.pool.reconcile import Provision
from hearth.pool.store import BreakerState
from hearth.runtime import Runtime
from tests.e2e.helpers import clean_env, hearth
from tests.fixtures.celery import WorkerProcess
from tests.fixtures.localapi import LocalAPI
from tests.fixtures.pools import PoolEnv
from tests.helpers import advance_both, celery_enqueue, count_requests, inline_enqueue, remote_names, sdk, until

SECRET_VAR = "SPEC_CHECK_TOKEN"  # no HEARTH_ prefix: the worker fixture passes this process's env through
SECRET_POOLS = f"""
version: 1
pools:
  gamma:
    min_ready: 2
    max_total: 3
    container:
      expires_after_minutes: 10
      network_policy:
        type: allowlist
        allowed_domains: [api.example.com]
        domain_secrets:
          - {{domain: api.example.com, name: TOKEN, value_env: {SECRET_VAR}}}
    keepalive: {{margin_seconds: 60}}
"""

BIG_POOLS = """
version: 1
pools:
  delta:
    min_ready: {min_ready}
    max_total: 3
    container: {{memory_limit: {memory}, expires_after_minutes: 10}}
    keepalive: {{margin_seconds: 60}}
"""

# What LiteLLM's /v1 container routes forward on create (GATEWAYS.md §2.6).
NARROW = Dialect(name="narrow-gateway", create_fields=frozenset({"name", "expires_after", "file_ids"}))


def write_pools(pools_env: PoolEnv, text: str) -> None:
    """Write the pools file so that every Runtime's mtime check sees the edit, however coarse the clock."""
    path = pools_env.write_pools(text)
    st = path.stat()
    os.utime(path, (st.st_atime, st.st_mtime + 2))


def status_json(pools_env: PoolEnv) -> dict[str, object]:
    done = hearth(["status", "--json"], clean_env(**pools_env.env), cwd=pools_env.root)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert isinstance(data, dict)
    return data


def no_intents(rt: Runtime, pool: str) -> bool:
    return not rt.store.records(pool, (State.CREATING, State.SEEDING))


@pytest.fixture
def side_runtime(hearth_runtime: Runtime, hearth_clock: OffsetClock) -> Iterator[Callable[[ContainersClient], Runtime]]:
    """Another Runtime on the same settings, Redis and clock, with a client the test builds."""
    made: list[ContainersClient] = []

    def build(client: ContainersClient) -> Runtime:
        made.append(client)
        return Runtime(hearth_runtime.settings, redis_client=hearth_runtime.redis, client=client, clock=hearth_clock)

    yield build
    for client in made:
        client.close()


def test_a_missing_secret_variable_pauses_the_pool_with_its_reason_until_the_variable_is_set(
    pools_env: PoolEnv, hearth_runtime: Runtime, local_api: LocalAPI, start_worker: Callable[..., WorkerProcess],
    celery_app: Celery, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rt = hearth_runtime
    monkeypatch.delenv(SECRET_VAR, raising=False)
    write_pools(pools_env, SECRET_POOLS)
    requests = count_requests(local_api, monkeypatch)
    worker = start_worker(pools_env.env)
    send = celery_enqueue(celery_app)

    until(lambda: rt.store.breaker_state("gamma").permanent, step=lambda: tick(rt, send), timeout=40,
          what="breaker open for good")
    breaker = rt.store.breaker_state("gamma")
    assert breaker.state is BreakerState.OPEN and breaker.env == (SECRET_VAR,)
    assert breaker.reason is not None and SECRET_VAR in breaker.reason and "not set" in breaker.reason
    assert breaker.failures <= 2  # the first tick's two intents; nothing after them
    until(lambda: no_intents(rt, "gamma"), step=lambda: tick(rt, send), timeout=30, what="intents settled")

    # Paused: tick after tick, no intent is written and no create reaches the API.
    for _ in range(6):
        tick(rt, send)
        assert no_intents(rt, "gamma")
    until(lambda: not rt.store.records("gamma"), step=lambda: tick(rt, send), timeout=30, what="failed forgotten")
    assert requests["containers.create"] == 0
    assert rt.store.breaker_state("gamma").failures == breaker.failures

    pool = status_json(pools_env)["pools"]["gamma"]  # type: ignore[index]
    assert pool["breaker"] == "open" and pool["breaker_permanent"] is True, pool
    assert SECRET_VAR in pool["breaker_reason"] and pool["breaker_retry"] is None, pool
    human = hearth(["status"], clean_env(**pools_env.env), cwd=pools_env.root)
    assert human.returncode == 0 and SECRET_VAR in human.stdout and "until the pools file" in human.stdout, human
    plan = hearth(["plan", "--json"], clean_env(**pools_env.env), cwd=pools_env.root)
    (planned,) = [p for p in json.loads(plan.stdout) if p["pool"] == "gamma"]
    assert SECRET_VAR in planned["breaker_reason"] and not planned["actions"], planned

    # The variable appears (the worker restarted with it, the heartbeat's environment has it).
    worker.stop()
    monkeypatch.setenv(SECRET_VAR, "tok-value-for-the-test")
    start_worker(pools_env.with_(**{SECRET_VAR: "tok-value-for-the-test"}))
    (retry,) = Planner(rt).plan()
    assert retry.breaker_retry == f"{SECRET_VAR} now set"
    assert [a.count for a in retry.actions if isinstance(a, Provision)] == [1]  # one probe first
    until(lambda: len(rt.store.records("gamma", State.READY)) == 2, step=lambda: tick(rt, send), timeout=60,
          what="pool full")
    assert rt.store.breaker_state("gamma").state is BreakerState.CLOSED
    stored = b" ".join(v for pair in rt.redis.hgetall(rt.store.pool_key("gamma", "breaker")).items() for v in pair)
    assert b"tok-value-for-the-test" not in stored
    assert requests["containers.create"] >= 2


def test_a_container_made_without_its_memory_limit_is_retired_never_leased_and_pauses_the_pool(
    pools_env: PoolEnv, hearth_runtime: Runtime, hearth_clock: OffsetClock, local_api: LocalAPI,
    start_worker: Callable[..., WorkerProcess], celery_app: Celery, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rt = hearth_runtime
    write_pools(pools_env, BIG_POOLS.format(min_ready=1, memory="4g"))
    local_api.set_faults({"drop_create_fields": ["memory_limit"]})  # as LiteLLM's /v1 create does
    requests = count_requests(local_api, monkeypatch)
    worker = start_worker(pools_env.env)
    send = celery_enqueue(celery_app)
    client = sdk(local_api)

    until(lambda: rt.store.breaker_state("delta").is_open, step=lambda: tick(rt, send), timeout=40,
          what="breaker open")
    breaker = rt.store.breaker_state("delta")
    assert not breaker.permanent and breaker.open_until is not None  # the usual pause: a cool-down
    assert breaker.reason is not None and "memory_limit (asked 4g, got 1g)" in breaker.reason, breaker
    assert "/openai" in breaker.reason
    until(lambda: not rt.store.records("delta"), timeout=30, what="the rejected container retired")
    assert remote_names(client, "hearth-delta-") == {}  # deleted on the server
    with pytest.raises(PoolEmpty):
        rt.leases.lease("delta", ttl=60)

    creates = requests["containers.create"]
    assert creates >= 1
    for _ in range(6):  # paused while the cool-down lasts
        tick(rt, send)
        assert no_intents(rt, "delta")
    assert requests["containers.create"] == creates
    pool = status_json(pools_env)["pools"]["delta"]  # type: ignore[index]
    assert pool["breaker"] == "open" and "memory_limit" in pool["breaker_reason"] and pool["ready"] == 0, pool

    # The route is fixed; after the cool-down one probe creates a right container, then the pool fills.
    # (The workers run on the system clock, so the probe runs here, on the moved clock.)
    worker.stop()
    local_api.set_faults(None)
    advance_both(local_api, hearth_clock, rt.settings.breaker_cooldown + 1)
    until(lambda: len(rt.store.records("delta", State.READY)) == 1, step=lambda: tick(rt, inline_enqueue(rt)),
          timeout=30, what="pool full")
    assert rt.store.breaker_state("delta").state is BreakerState.CLOSED
    (ready,) = rt.store.records("delta", State.READY)
    assert ready.container_id is not None
    assert client.containers.retrieve(ready.container_id).memory_limit == "4g"


def test_a_dialect_that_drops_a_needed_field_is_refused_before_any_create_until_the_spec_changes(
    pools_env: PoolEnv, hearth_runtime: Runtime, side_runtime: Callable[[ContainersClient], Runtime],
    local_api: LocalAPI, monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_pools(pools_env, BIG_POOLS.format(min_ready=2, memory="4g"))
    rt = side_runtime(ContainersClient(local_api.base_url, dialect=NARROW))
    requests = count_requests(local_api, monkeypatch)
    name = make_name(rt.settings.name_prefix, "delta")
    rt.store.write_intent("delta", name)

    with pytest.raises(ConfigError) as raised:
        Operations(rt).provision(name)
    message = str(raised.value)
    assert message.startswith("pool delta: ") and "memory_limit (asked 4g)" in message, message
    assert "/openai" in message and "narrow-gateway" in message, message
    assert requests["containers.create"] == 0
    record = rt.store.get(name)
    assert record is not None and record.state is State.FAILED and "memory_limit" in (record.error or "")
    breaker = rt.store.breaker_state("delta")
    assert breaker.permanent and breaker.reason == message

    step = lambda: tick(rt, inline_enqueue(rt))  # noqa: E731
    for _ in range(4):
        step()
        assert no_intents(rt, "delta")
    assert requests["containers.create"] == 0

    write_pools(pools_env, BIG_POOLS.format(min_ready=2, memory="1g"))  # needs nothing the route drops
    (plan,) = Planner(rt).plan()
    assert plan.breaker_retry == "the pool's spec changed"
    until(lambda: len(rt.store.records("delta", State.READY)) == 2, step=step, timeout=30, what="pool full")
    assert rt.store.breaker_state("delta").state is BreakerState.CLOSED


REFUSED_BODY = {"error": {"message": "Invalid 'skills[0].skill_id': no such skill.", "type": "invalid_request_error",
                          "param": "skills[0].skill_id", "code": None}}
NO_KEY_BODY = {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error", "param": None,
                         "code": "invalid_api_key"}}


class RefuseCreates(httpx.BaseTransport):
    """The real transport, except that every container create is answered ``status`` with ``body``
    (the local API refuses neither a valid body nor, without keys, any key)."""

    def __init__(self, status: int = 400, body: dict[str, object] | None = None) -> None:
        self.inner = httpx.HTTPTransport()
        self.status, self.body = status, body or REFUSED_BODY

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.rstrip("/").endswith("/containers"):
            request.read()
            return httpx.Response(self.status, json=self.body)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_a_400_for_the_pools_own_body_pauses_it_until_the_spec_changes(
    pools_env: PoolEnv, hearth_runtime: Runtime, side_runtime: Callable[[ContainersClient], Runtime],
    local_api: LocalAPI,
) -> None:
    write_pools(pools_env, BIG_POOLS.format(min_ready=1, memory="4g"))
    rt = side_runtime(ContainersClient(local_api.base_url, transport=RefuseCreates(),
                                       retry=RetryPolicy(max_retries=0)))
    name = make_name(rt.settings.name_prefix, "delta")
    rt.store.write_intent("delta", name)

    with pytest.raises(BadRequest):
        Operations(rt).provision(name)
    breaker = rt.store.breaker_state("delta")
    assert breaker.permanent and breaker.failures == 1
    assert breaker.reason is not None and "400" in breaker.reason and "skills[0].skill_id" in breaker.reason
    (plan,) = Planner(rt).plan()
    assert plan.breaker == "open" and not [a for a in plan.actions if isinstance(a, Provision)]
    write_pools(pools_env, BIG_POOLS.format(min_ready=1, memory="16g"))
    (plan,) = Planner(rt).plan()
    assert plan.breaker_retry == "the pool's spec changed"
    assert [a.count for a in plan.actions if isinstance(a, Provision)] == [1]


def test_a_refused_key_pauses_the_pool_at_once_for_a_cool_down_since_the_planner_cannot_see_it_change(
    pools_env: PoolEnv, hearth_runtime: Runtime, side_runtime: Callable[[ContainersClient], Runtime],
    local_api: LocalAPI, hearth_clock: OffsetClock,
) -> None:
    write_pools(pools_env, BIG_POOLS.format(min_ready=1, memory="4g"))
    rt = side_runtime(ContainersClient(local_api.base_url, transport=RefuseCreates(401, NO_KEY_BODY),
                                       retry=RetryPolicy(max_retries=0)))
    name = make_name(rt.settings.name_prefix, "delta")
    rt.store.write_intent("delta", name)

    with pytest.raises(AuthError):
        Operations(rt).provision(name)
    breaker = rt.store.breaker_state("delta")
    assert breaker.state is BreakerState.OPEN and not breaker.permanent and breaker.failures == 1  # no threshold
    assert breaker.reason is not None and "401" in breaker.reason
    hearth_clock.advance(rt.settings.breaker_cooldown + 1)
    (plan,) = Planner(rt).plan()
    assert plan.breaker == "half-open" and [a.count for a in plan.actions if isinstance(a, Provision)] == [1]

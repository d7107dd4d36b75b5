"""Failure paths of the operations and the planner that once looped forever or stopped everything.

B3: a delete answered "Container is expired." is a finished delete (retire and delete_orphan end).
B4: a harvest that can never succeed is retried a bounded number of times, then the container goes.
B5: one pool's missing input does not stop the plan of the others; a broken edit of the pools file
keeps the last good one in use and says why.
B7: a seeding failure that cannot heal marks the record FAILED and counts toward the breaker.

Real redis-server and the local API over a socket throughout; ``httpx.MockTransport`` only for the
expired-delete answer, and a thin wrapper over the real transport only to refuse container-file
uploads with a 400, since the local server produces neither on cue.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from hearth.api.client import ContainersClient
from hearth.api.dialects import Dialect
from hearth.api.retry import RetryPolicy
from hearth.clock import OffsetClock
from hearth.errors import HearthError
from hearth.operations import MAX_HARVEST_ATTEMPTS, Operations
from hearth.planner import Planner, tick
from hearth.pool.model import State, make_name
from hearth.pool.reconcile import Provision, Refresh
from hearth.runtime import Runtime
from tests.fixtures.localapi import LocalAPI
from tests.fixtures.pools import PoolEnv
from tests.helpers import advance_both, inline_enqueue, sdk

EXPIRED_BODY = {
    "error": {"message": "Container is expired.", "type": "invalid_request_error", "param": None, "code": None}
}

ONE_POOL = """
version: 1
pools:
  delta:
    min_ready: 0
    max_total: 2
    container: {{expires_after_minutes: 10}}
    keepalive: {{margin_seconds: 60}}
    lease: {{ttl_seconds: 600, min_remaining_on_claim_seconds: 0}}
    outputs: {{source: assistant, on_release: true{target}}}
    inputs:
      - path: inputs/notes.txt
"""

TWO_POOLS = """
version: 1
pools:
  alpha:
    min_ready: 1
    max_total: 2
    container: {expires_after_minutes: 10}
    keepalive: {margin_seconds: 60}
    inputs:
      - path: inputs/alpha.txt
  beta:
    min_ready: 1
    max_total: 2
    container: {expires_after_minutes: 10}
    keepalive: {margin_seconds: 60}
    inputs:
      - path: inputs/beta.txt
"""


def one_pool(pools_env: PoolEnv, target: str | None = None) -> None:
    pools_env.write_input("inputs/notes.txt", b"seed notes\n")
    pools_env.write_pools(ONE_POOL.format(target=f", target: {json.dumps(target)}" if target else ""))


def provision_one(rt: Runtime, pool: str) -> str:
    """Write an intent and run its provision here: a READY record with a live container."""
    spec = rt.pool(pool)
    _, digest = rt.inputs(spec)
    name = make_name(rt.settings.name_prefix, pool)
    rt.store.write_intent(pool, name, inputs_digest=digest, expires_minutes=spec.container.expires_after_minutes)
    Operations(rt).provision(name)
    record = rt.store.get(name)
    assert record is not None and record.state is State.READY and record.container_id is not None
    return name


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


# --- B3: a delete answered "Container is expired." ---------------------------------------------------


def expired_deletes(status: int, deletes: list[str]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            deletes.append(request.url.path)
            return httpx.Response(status, json=EXPIRED_BODY)
        return httpx.Response(500, json={"error": {"message": "unexpected call in this test", "type": "server_error"}})

    return httpx.MockTransport(handle)


@pytest.mark.parametrize("status", [404, 400])
def test_retire_of_a_deleting_record_whose_delete_says_expired_ends_gone(
    pools_env: PoolEnv, hearth_runtime: Runtime, side_runtime: Callable[[ContainersClient], Runtime], status: int
) -> None:
    one_pool(pools_env)
    deletes: list[str] = []
    client = ContainersClient("http://backend.invalid/v1", transport=expired_deletes(status, deletes),
                              retry=RetryPolicy(max_retries=0))
    rt = side_runtime(client)
    name = make_name(rt.settings.name_prefix, "delta")
    rt.store.write_intent("delta", name)
    rt.store.transition(name, State.CREATING, State.DELETING, container_id="cntr_expired_1")

    outcome = Operations(rt).retire(name)

    assert deletes == ["/v1/containers/cntr_expired_1"]
    assert outcome.state == State.GONE.value
    assert rt.store.get(name) is None
    assert rt.store.by_container_id("cntr_expired_1") is None


def test_delete_orphan_whose_delete_says_expired_is_done(
    pools_env: PoolEnv, hearth_runtime: Runtime, side_runtime: Callable[[ContainersClient], Runtime]
) -> None:
    one_pool(pools_env)
    deletes: list[str] = []
    client = ContainersClient("http://backend.invalid/v1", transport=expired_deletes(404, deletes),
                              retry=RetryPolicy(max_retries=0))
    rt = side_runtime(client)
    name = make_name(rt.settings.name_prefix, "delta")

    outcome = Operations(rt).delete_orphan("cntr_orphan_1", name)

    assert deletes == ["/v1/containers/cntr_orphan_1"]
    assert outcome.state == State.GONE.value and outcome.detail == "cntr_orphan_1"


# --- B4: a harvest that can never succeed ------------------------------------------------------------


def test_a_harvest_that_always_fails_is_retried_then_given_up_and_the_container_deleted(
    pools_env: PoolEnv, hearth_runtime: Runtime, local_api: LocalAPI
) -> None:
    rt = hearth_runtime
    # A target whose parent is a regular file: no directory can be made there, even as root.
    blocker = pools_env.root / "blocker"
    blocker.write_text("not a directory\n")
    one_pool(pools_env, target="file://" + str(blocker / "out" / "{container_id}"))
    name = provision_one(rt, "delta")
    lease = rt.leases.try_lease("delta", ttl=600)
    assert lease is not None and lease.name == name
    local_api.write_assistant_file(lease.container_id, "/mnt/data/result.csv", b"a,b\n1,2\n")
    released = rt.leases.release(lease.container_id, lease.lease_id, token=lease.token)
    assert released.state is State.HARVESTING
    client = sdk(local_api)
    ops = Operations(rt)

    for attempt in range(1, MAX_HARVEST_ATTEMPTS + 1):
        with pytest.raises(HearthError) as raised:
            ops.retire(name)
        assert raised.value.temporary, raised.value
        record = rt.store.get(name)
        assert record is not None and record.state is State.HARVESTING
        assert record.harvest_attempts == attempt
        assert record.error is not None and record.error.startswith("harvest: StorageError")
        # The files are still there to retry: the container is kept.
        assert client.containers.retrieve(lease.container_id).status == "running"

    outcome = ops.retire(name)

    assert outcome.state == State.GONE.value
    assert rt.store.get(name) is None
    with pytest.raises(openai.NotFoundError):
        client.containers.retrieve(lease.container_id)
    assert not (blocker.parent / "out").exists()


# --- B5: one broken pool, and a broken pools file ----------------------------------------------------


def test_a_pool_whose_input_vanished_does_not_stop_the_other_pools_plan(
    pools_env: PoolEnv, hearth_runtime: Runtime, hearth_clock: OffsetClock, local_api: LocalAPI
) -> None:
    rt = hearth_runtime
    pools_env.write_input("inputs/alpha.txt", b"alpha\n")
    beta_input = pools_env.write_input("inputs/beta.txt", b"beta\n")
    pools_env.write_pools(TWO_POOLS)
    assert sorted(rt.pools().pools) == ["alpha", "beta"]
    rt.inputs(rt.pool("beta"))  # loaded (and cached) while it existed
    name = provision_one(rt, "alpha")
    before = rt.store.get(name)
    assert before is not None and before.deadline is not None
    beta_input.unlink()
    # Inside alpha's keepalive margin (60 s), not yet expired on the server.
    advance_both(local_api, hearth_clock, before.deadline - hearth_clock.now() - 45)

    plans = {p.pool: p for p in Planner(rt).plan()}

    assert [a.name for a in plans["alpha"].actions if isinstance(a, Refresh)] == [name]
    assert plans["alpha"].error is None
    assert plans["beta"].error is not None and plans["beta"].error.startswith("inputs:")
    assert "beta.txt" in plans["beta"].error
    assert not [a for a in plans["beta"].actions if isinstance(a, Provision)]

    # The whole tick goes through: alpha is kept alive, beta gets no container it cannot seed.
    tick(rt, inline_enqueue(rt))
    after = rt.store.get(name)
    assert after is not None and after.state is State.READY
    assert after.deadline is not None and after.deadline > before.deadline
    assert rt.store.records("beta") == []


def test_an_invalid_edit_of_the_pools_file_keeps_the_last_good_one(
    pools_env: PoolEnv, hearth_runtime: Runtime
) -> None:
    rt = hearth_runtime
    pools_env.write_input("inputs/alpha.txt", b"alpha\n")
    pools_env.write_input("inputs/beta.txt", b"beta\n")
    path = pools_env.write_pools(TWO_POOLS)
    good = rt.pools()
    assert sorted(good.pools) == ["alpha", "beta"] and rt.pools_error is None

    path.write_text(TWO_POOLS.replace("  beta:\n", "  beta: [unclosed\n"))
    bump_mtime(path)

    assert rt.pools() is good
    assert rt.pool("alpha").max_total == 2
    assert rt.pools_error is not None and "YAML" in rt.pools_error
    assert sorted(p.pool for p in Planner(rt).plan()) == ["alpha", "beta"]

    # Fixed again: the new file is used and the error clears.
    path.write_text(TWO_POOLS.replace("max_total: 2", "max_total: 3", 1))
    bump_mtime(path, 20)
    assert rt.pool("alpha").max_total == 3 and rt.pools_error is None


def test_hearth_status_shows_pools_error_after_an_invalid_edit(pools_env: PoolEnv, hearth_runtime: Runtime) -> None:
    pools_env.write_input("inputs/alpha.txt", b"alpha\n")
    pools_env.write_input("inputs/beta.txt", b"beta\n")
    path = pools_env.write_pools(TWO_POOLS)
    # A running worker or heartbeat publishes the file it runs on (read-only commands never write).
    hearth_runtime.publish_pools = True
    hearth_runtime.pools()
    first = hearth_status(pools_env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["pools_error"] is None

    path.write_text(TWO_POOLS.replace("  beta:\n", "  beta: [unclosed\n"))
    bump_mtime(path)
    second = hearth_status(pools_env)

    assert second.returncode == 0, second.stderr
    data = json.loads(second.stdout)
    assert data["pools_error"]
    assert sorted(data["pools"]) == ["alpha", "beta"]


def bump_mtime(path: Path, seconds: float = 10) -> None:
    """Make the edit visible to an mtime check even when two writes land within one clock tick."""
    st = path.stat()
    os.utime(path, (st.st_atime, st.st_mtime + seconds))


def hearth_status(pools_env: PoolEnv) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEARTH_", "OPENAI_", "SENTRY_"))}
    env.update(pools_env.env)
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "status", "--json"],
        env=env, capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
    )


# --- B7: a seeding failure that cannot heal ----------------------------------------------------------


class RefuseUploads(httpx.BaseTransport):
    """The real transport, except that container-file uploads are refused for good (400)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.refused = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and "/containers/" in path and path.endswith("/files"):
            request.read()
            self.refused += 1
            return httpx.Response(400, json={"error": {
                "message": "Invalid file: this file type is not supported.", "type": "invalid_request_error",
                "param": "file", "code": "unsupported_file",
            }})
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_a_permanent_seeding_failure_fails_the_record_and_counts_toward_the_breaker(
    pools_env: PoolEnv, hearth_runtime: Runtime, side_runtime: Callable[[ContainersClient], Runtime],
    local_api: LocalAPI,
) -> None:
    one_pool(pools_env)
    transport = RefuseUploads()
    # A backend that cannot copy file_ids: the inputs are streamed into the container (not staged).
    no_copy = Dialect(name="no-copy", copies_create_file_ids=False)
    rt = side_runtime(ContainersClient(local_api.base_url, transport=transport, retry=RetryPolicy(max_retries=0),
                                       dialect=no_copy))
    before = rt.store.breaker_state("delta").failures
    spec = rt.pool("delta")
    name = make_name(rt.settings.name_prefix, "delta")
    rt.store.write_intent("delta", name, inputs_digest=rt.inputs(spec)[1])

    with pytest.raises(HearthError) as raised:
        Operations(rt).provision(name)

    assert not raised.value.temporary
    assert transport.refused >= 1
    record = rt.store.get(name)
    assert record is not None and record.state is State.FAILED
    assert record.error is not None and "seeding failed" in record.error and "400" in record.error
    assert record.container_id is not None  # created, so the retire deletes it
    breaker = rt.store.breaker_state("delta")
    assert breaker.failures == before + 1
    assert breaker.reason is not None and breaker.reason.startswith("seeding:")

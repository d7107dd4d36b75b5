"""The pool commands as an operator runs them: ``hearth plan|gc|drain|status|lease`` in their own
processes, against a real redis-server and the local API, with the openai SDK as the independent view.

``plan`` and ``gc --dry-run`` change nothing; ``gc`` deletes an unowned prefixed container;
``drain`` scales a pool's idle containers to zero in the plan and ``--undo`` restores it; ``status
--json`` hides the Redis password; leasing from an unknown pool is a usage error (exit 2).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from hearth.planner import tick
from hearth.pool.model import State
from hearth.runtime import Runtime
from tests.e2e.helpers import clean_env, hearth
from tests.fixtures.localapi import LocalAPI
from tests.fixtures.pools import PoolEnv
from tests.helpers import inline_enqueue, remote_names, sdk, until

POOLS = """
version: 1
pools:
  alpha:
    min_ready: 2
    max_total: 3
    container: {expires_after_minutes: 10}
    keepalive: {margin_seconds: 60}
"""


@pytest.fixture
def pools_extra_env() -> dict[str, str]:
    return {"HEARTH_ORPHAN_GRACE": "0"}


@pytest.fixture
def env(pools_env: PoolEnv) -> dict[str, str]:
    pools_env.write_pools(POOLS)
    return clean_env(**pools_env.env)


def run_json(args: list[str], env: dict[str, str], pools_env: PoolEnv) -> Any:
    done = hearth([*args, "--json"], env, cwd=pools_env.root)
    assert done.returncode == 0, f"hearth {' '.join(args)}: exit {done.returncode}\n{done.stderr}"
    return json.loads(done.stdout)


def keys(client: redis.Redis) -> dict[Any, Any]:
    """Every key and its type: a cheap fingerprint of what Hearth wrote."""
    return {k: client.type(k) for k in client.keys("*")}


def pool_plan(plans: list[dict[str, Any]], name: str = "alpha") -> dict[str, Any]:
    (found,) = [p for p in plans if p["pool"] == name]
    return found


def test_plan_lists_provisions_for_an_empty_pool_and_changes_nothing(
    env: dict[str, str], pools_env: PoolEnv, redis_client: redis.Redis, local_api: LocalAPI
) -> None:
    before = keys(redis_client)
    plan = pool_plan(run_json(["plan"], env, pools_env))
    assert plan["desired"] == 2
    assert [(a["kind"], a["count"]) for a in plan["actions"]] == [("provision", 2)]
    assert keys(redis_client) == before  # no intents, no records, no pool registered
    assert not redis_client.keys("hearth:pool:*")
    assert remote_names(sdk(local_api), "hearth-") == {}


def test_gc_dry_run_lists_an_orphan_and_gc_deletes_it(
    env: dict[str, str], pools_env: PoolEnv, local_api: LocalAPI
) -> None:
    client = sdk(local_api)
    orphan = client.containers.create(name="hearth-alpha-orphan7")
    other = client.containers.create(name="someone-elses")  # not Hearth's prefix: never touched

    dry = run_json(["gc", "--dry-run"], env, pools_env)
    assert dry["dry_run"] is True and dry["deleted"] == []
    assert [(o["container_id"], o["name"]) for o in dry["orphans"]] == [(orphan.id, "hearth-alpha-orphan7")]
    assert client.containers.retrieve(orphan.id).status == "running"

    done = run_json(["gc"], env, pools_env)
    assert [o["container_id"] for o in done["orphans"]] == [orphan.id]
    assert len(done["deleted"]) == 1
    live = {c.id for c in client.containers.list(limit=100)}
    assert orphan.id not in live and other.id in live


@pytest.fixture
def filled(env: dict[str, str], hearth_runtime: Runtime) -> Iterator[list[str]]:
    rt = hearth_runtime
    until(lambda: len(rt.store.records("alpha", State.READY)) == 2, step=lambda: tick(rt, inline_enqueue(rt)),
          timeout=30, what="pool full")
    yield sorted(r.name for r in rt.store.records("alpha", State.READY))


def test_drain_plans_retiring_the_ready_containers_and_undo_restores(
    env: dict[str, str], pools_env: PoolEnv, filled: list[str], local_api: LocalAPI
) -> None:
    done = hearth(["drain", "alpha"], env, cwd=pools_env.root)
    assert done.returncode == 0, done.stderr
    plan = pool_plan(run_json(["plan"], env, pools_env))
    assert plan["desired"] == 0 and plan["draining"] is True
    retires = sorted(a["name"] for a in plan["actions"] if a["kind"] == "retire")
    assert retires == filled
    assert not [a for a in plan["actions"] if a["kind"] == "provision"]
    assert len(remote_names(sdk(local_api), "hearth-alpha-")) == 2  # planning deleted nothing

    done = hearth(["drain", "alpha", "--undo"], env, cwd=pools_env.root)
    assert done.returncode == 0, done.stderr
    plan = pool_plan(run_json(["plan"], env, pools_env))
    assert plan["desired"] == 2 and plan["draining"] is False
    assert [a for a in plan["actions"] if a["kind"] in ("retire", "provision")] == []


@pytest.fixture
def password_url(redis_url: str, redis_client: redis.Redis) -> Iterator[str]:
    """The test Redis through an ACL user with a password (the default user stays open)."""
    redis_client.acl_setuser("hearthcli", enabled=True, passwords=["+s3cret-pw"], keys=["*"], channels=["*"],
                             commands=["+@all"])
    parts = urlsplit(redis_url)
    yield urlunsplit(parts._replace(netloc=f"hearthcli:s3cret-pw@{parts.hostname}:{parts.port}"))
    redis_client.acl_deluser("hearthcli")


def test_status_json_reports_pools_and_hides_the_redis_password(
    env: dict[str, str], pools_env: PoolEnv, filled: list[str], password_url: str, local_api: LocalAPI
) -> None:
    done = hearth(["status", "--json"], {**env, "HEARTH_REDIS_URL": password_url}, cwd=pools_env.root)
    assert done.returncode == 0, done.stderr
    assert "s3cret-pw" not in done.stdout + done.stderr
    data = json.loads(done.stdout)
    assert data["api_base"] == local_api.base_url
    assert data["redis_url"] == password_url.replace("s3cret-pw", "***")
    pool = data["pools"]["alpha"]
    assert {k: pool[k] for k in ("desired", "ready", "leased", "provisioning")} == {
        "desired": 2, "ready": 2, "leased": 0, "provisioning": 0,
    }


def test_lease_from_an_unknown_pool_is_a_usage_error(env: dict[str, str], pools_env: PoolEnv) -> None:
    done = hearth(["lease", "nosuchpool", "--json", "--wait", "0"], env, cwd=pools_env.root)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "nosuchpool" in done.stderr

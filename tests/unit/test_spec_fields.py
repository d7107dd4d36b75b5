"""The pure parts of "never hand out a container unlike its spec" and "permanent errors stop and speak":
which create fields a pool relies on, which a dialect would drop, how a created container differs
from its spec, which secret variables are missing, the spec digest, and the fault that drops fields."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from hearth.api.dialects import Dialect, GatewayDialect, make_dialect
from hearth.api.models import Container
from hearth.operations import (
    asked_create_fields,
    dropped_create_fields,
    missing_secret_vars,
    spec_hash,
    spec_mismatch,
)
from hearth.pool.store import BreakerState, BreakerStatus
from settings.faults import FaultConfig
from settings.pools import ContainerOptions, PoolSpec

ALLOWLIST: dict[str, Any] = {
    "type": "allowlist", "allowed_domains": ["api.example.com"],
    "domain_secrets": [{"domain": "api.example.com", "name": "TOKEN", "value_env": "EXAMPLE_TOKEN"}],
}


def container(**fields: Any) -> Container:
    return Container.model_validate({"id": "cntr_1", "name": "hearth-p-1", "created_at": 1, "status": "running",
                                     **fields})


def test_a_pool_on_the_api_defaults_relies_on_no_optional_create_field() -> None:
    assert asked_create_fields(ContainerOptions(), []) == {}
    assert asked_create_fields(ContainerOptions(network_policy={"type": "disabled"}), []) == {}


def test_the_fields_a_pool_relies_on_describe_what_is_asked_without_secret_values() -> None:
    options = ContainerOptions(memory_limit="4g", expires_after_minutes=30, network_policy=ALLOWLIST,
                               skills=[{"type": "skill_reference", "skill_id": "openai-spreadsheets"}])
    asked = asked_create_fields(options, ["file-1", "file-2"])
    assert asked == {"memory_limit": "4g", "expires_after": "30 minutes", "network_policy": "allowlist",
                     "skills": "1 skill(s)", "file_ids": "2 file id(s)"}


def test_a_dialect_that_forwards_only_some_fields_drops_the_others_the_pool_needs() -> None:
    asked = {"memory_limit": "4g", "file_ids": "1 file id(s)", "network_policy": "allowlist"}
    assert dropped_create_fields(asked, None) == []
    assert dropped_create_fields(asked, frozenset({"name", "expires_after", "file_ids"})) == [
        "memory_limit", "network_policy"]
    assert dropped_create_fields({}, frozenset()) == []


def test_every_built_in_dialect_forwards_every_create_field_unless_it_says_otherwise() -> None:
    for name in ("openai", "azure", "gateway", "local"):
        assert make_dialect(name).create_fields is None
    narrow = GatewayDialect(create_fields=frozenset({"name", "expires_after", "file_ids"}))
    assert narrow.create_fields is not None and "memory_limit" not in narrow.create_fields
    assert Dialect().create_fields is None


def test_a_container_is_checked_only_against_what_the_backend_echoes() -> None:
    options = ContainerOptions(memory_limit="4g", network_policy=ALLOWLIST)
    assert spec_mismatch(options, container(memory_limit="4g", network_policy={"type": "allowlist"})) == []
    assert spec_mismatch(options, container()) == []  # nothing echoed: nothing to compare
    assert spec_mismatch(options, container(memory_limit="1g", network_policy={"type": "disabled"})) == [
        "memory_limit (asked 4g, got 1g)", "network_policy (asked allowlist, got disabled)"]
    # The default pool asks 1g and no policy: a 1g container with any echoed policy is what it asked.
    assert spec_mismatch(ContainerOptions(), container(memory_limit="1g", network_policy={"type": "disabled"})) == []


def test_missing_secret_variables_are_named_and_empty_counts_as_missing() -> None:
    options = ContainerOptions(network_policy=ALLOWLIST)
    assert missing_secret_vars(options, {}) == ["EXAMPLE_TOKEN"]
    assert missing_secret_vars(options, {"EXAMPLE_TOKEN": ""}) == ["EXAMPLE_TOKEN"]
    assert missing_secret_vars(options, {"EXAMPLE_TOKEN": "v"}) == []
    assert missing_secret_vars(ContainerOptions(), {}) == []


def test_the_spec_digest_changes_with_the_spec_and_never_holds_a_secret_value() -> None:
    base = PoolSpec(name="p", container=ContainerOptions(network_policy=ALLOWLIST))
    assert spec_hash(base) == spec_hash(PoolSpec(name="p", container=ContainerOptions(network_policy=ALLOWLIST)))
    assert spec_hash(base) != spec_hash(PoolSpec(name="p", container=ContainerOptions(memory_limit="4g")))
    assert len(spec_hash(base)) == 16


def test_a_permanent_breaker_describes_what_ends_it() -> None:
    status = BreakerStatus(pool="p", state=BreakerState.OPEN, failures=1, reason="EXAMPLE_TOKEN is not set",
                           permanent=True)
    assert status.describe() == ("open until the pools file or the environment changes: "
                                 "EXAMPLE_TOKEN is not set")
    timed = BreakerStatus(pool="p", state=BreakerState.OPEN, failures=1, reason="x", open_until=10.0)
    assert timed.describe() == "open after 1 create failures until 10: x"


def test_the_dropped_create_fields_fault_names_only_create_fields_and_turns_faults_on() -> None:
    assert not FaultConfig().active
    config = FaultConfig.model_validate({"drop_create_fields": ["memory_limit", "network_policy"]})
    assert config.active and config.drop_create_fields == ["memory_limit", "network_policy"]
    with pytest.raises(ValidationError, match="unknown create field"):
        FaultConfig.model_validate({"drop_create_fields": ["memory"]})

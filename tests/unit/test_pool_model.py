"""The record model, the state machine table and container names."""

from __future__ import annotations

import itertools
import random

import pytest
from pydantic import ValidationError

from hearth.pool import ContainerRecord, State, can_transition, make_name, parse_name
from hearth.pool.model import LIVE_STATES, TRANSITIONS


def test_the_state_machine_has_the_documented_paths() -> None:
    happy = [State.CREATING, State.SEEDING, State.READY, State.LEASED, State.HARVESTING, State.DELETING, State.GONE]
    for a, b in itertools.pairwise(happy):
        assert can_transition(a, b), (a, b)
    assert can_transition(State.LEASED, State.READY)  # reuse
    assert can_transition(State.HARVESTING, State.READY)  # reuse after a harvest
    for live in LIVE_STATES:
        assert can_transition(live, State.EXPIRED) and can_transition(live, State.FAILED)
    assert TRANSITIONS[State.GONE] == frozenset()
    assert not can_transition(State.GONE, State.READY)
    assert not can_transition(State.EXPIRED, State.READY)  # an expired container never comes back
    assert not can_transition(State.SEEDING, State.LEASED)  # only READY can be leased
    assert set(TRANSITIONS) == set(State)


def test_names_round_trip_and_refuse_what_is_not_ours() -> None:
    rng = random.Random(7)
    name = make_name("hearth", "data-science", rng=rng)
    assert name == make_name("hearth", "data-science", rng=random.Random(7))
    parts = parse_name(name, "hearth")
    assert parts is not None and parts.pool == "data-science" and parts.prefix == "hearth"
    assert len(parts.unique) == 10 and "-" not in parts.unique
    assert parse_name("my-hearth-x-abc", "my-hearth") is not None
    assert parse_name("other-py-abc", "hearth") is None
    assert parse_name("hearth-py", "hearth") is None
    assert parse_name("hearth-py-ABC", "hearth") is None
    assert make_name("hearth", "py") != make_name("hearth", "py")  # secrets by default
    with pytest.raises(ValueError):
        make_name("hearth", "bad pool")
    with pytest.raises(ValueError):
        make_name("hearth", "py", "has-dash")


def test_record_rounds_times_and_keeps_errors_short() -> None:
    rec = ContainerRecord(
        name="n", pool="p", created_at=1.23456789, updated_at=2.0, deadline=1_700_000_000.98765, error="e" * 5000
    )
    assert rec.created_at == 1.235 and rec.deadline == 1_700_000_000.988
    assert rec.error is not None and len(rec.error) == 300
    assert ContainerRecord.from_json(rec.to_json()) == rec
    assert rec.remaining(1_700_000_000.0) == pytest.approx(0.988)
    with pytest.raises(ValidationError):
        ContainerRecord(name="", pool="p", created_at=0, updated_at=0)


def test_lease_lapse_respects_the_grace() -> None:
    rec = ContainerRecord(name="n", pool="p", created_at=0, updated_at=0, state=State.LEASED, lease_expires_at=100)
    assert not rec.lease_lapsed(100)
    assert rec.lease_lapsed(100.5)
    assert not rec.lease_lapsed(100.5, grace=1)
    assert not rec.model_copy(update={"state": State.READY}).lease_lapsed(1000)

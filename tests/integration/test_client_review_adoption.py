"""Review B2/B3: recovery after an ambiguous failure adopts only what this call could have made."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from typing import Any

import pytest

from hearth.api.client import ContainersClient
from hearth.api.models import CreateContainerRequest
from hearth.api.retry import RetryPolicy
from tests.fixtures.localapi import LocalAPI
from tests.helpers import RecordingClock


@pytest.fixture
def clock() -> RecordingClock:
    return RecordingClock()


@pytest.fixture(params=["local", "gateway"])
def client(request: pytest.FixtureRequest, local_api: LocalAPI, clock: RecordingClock) -> Iterator[ContainersClient]:
    base = local_api.gateway_base_url if request.param == "gateway" else local_api.base_url
    with ContainersClient(base, dialect=request.param, clock=clock, rng=random.Random(7),
                          retry=RetryPolicy(max_retries=20, budget=10_000, base=0.5, cap=2), timeout=30) as c:
        yield c


def drop_first(endpoint: str) -> dict[str, Any]:
    """Faults that drop (before it takes effect) the first request to ``endpoint`` and pass the next ones.

    The seed is found from the injector's documented determinism (each endpoint draws five values per
    request from ``Random(f"{seed}:{name}")``); the tests also check that a retry really happened.
    """
    for seed in range(10_000):
        rng = random.Random(f"{seed}:{endpoint}")
        draws = [rng.random() for _ in range(15)]
        if draws[1] < 0.5 <= min(draws[6], draws[11]):
            return {"seed": seed, "endpoints": {endpoint: {"drop_rate": 0.5, "drop_after_processing": False}}}
    raise AssertionError("no such seed")


def test_create_recovery_never_adopts_an_expired_namesake(
    client: ContainersClient, local_api: LocalAPI, clock: RecordingClock
) -> None:
    old = client.create_container(CreateContainerRequest(name="hearth-reborn"))
    local_api.advance_clock(21 * 60)
    assert client.retrieve_container(old.id).expired
    local_api.set_faults(drop_first("containers.create"))
    made = client.create_container(CreateContainerRequest(name="hearth-reborn"))
    local_api.set_faults(None)
    assert clock.sleeps  # the first create was dropped, so recovery ran
    assert made.id != old.id
    assert made.usable


def test_upload_recovery_never_adopts_an_older_file_of_the_same_name_and_size(
    client: ContainersClient, local_api: LocalAPI, clock: RecordingClock
) -> None:
    c = client.create_container(CreateContainerRequest(name="hearth-b3"))
    first = client.upload_file(c.id, io.BytesIO(b"AAAA"), filename="data.txt")
    local_api.set_faults(drop_first("files.create"))
    second = client.upload_file(c.id, io.BytesIO(b"BBBB"), filename="data.txt")
    local_api.set_faults(None)
    assert clock.sleeps
    assert second.id != first.id
    sink = io.BytesIO()
    client.download_file(c.id, second.id, sink)
    assert sink.getvalue() == b"BBBB"


def test_input_file_recovery_never_adopts_an_older_upload(
    client: ContainersClient, local_api: LocalAPI, clock: RecordingClock
) -> None:
    first = client.upload_input_file(io.BytesIO(b"AAAA"), filename="in.txt")
    local_api.set_faults(drop_first("uploads.create"))
    second = client.upload_input_file(io.BytesIO(b"BBBB"), filename="in.txt")
    local_api.set_faults(None)
    assert clock.sleeps
    assert second.id != first.id
    sink = io.BytesIO()
    client.download_input_file(second.id, sink)
    assert sink.getvalue() == b"BBBB"


def test_copy_by_id_recovery_never_adopts_an_older_copy(
    client: ContainersClient, local_api: LocalAPI, clock: RecordingClock
) -> None:
    c = client.create_container(CreateContainerRequest(name="hearth-b3-copy"))
    a = client.upload_input_file(io.BytesIO(b"AAAA"), filename="same.txt")
    b = client.upload_input_file(io.BytesIO(b"BBBB"), filename="same.txt")
    client.add_file_by_id(c.id, a.id)
    local_api.set_faults(drop_first("files.create"))
    copied = client.add_file_by_id(c.id, b.id)
    local_api.set_faults(None)
    assert clock.sleeps
    sink = io.BytesIO()
    client.download_file(c.id, copied.id, sink)
    assert sink.getvalue() == b"BBBB"

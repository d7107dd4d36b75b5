"""The client against the local API's fault injection, over a real socket.

Sleeps go to a recording ManualClock, so the pace is checked from what the client chose to wait,
never from wall time. Faults are seeded, so every run meets the same fate.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from hearth.api.client import ContainersClient
from hearth.api.models import CreateContainerRequest
from hearth.api.retry import RetryPolicy
from hearth.errors import RateLimited, TransportError
from tests.fixtures.localapi import LocalAPI
from tests.helpers import RecordingClock


@pytest.fixture
def clock() -> RecordingClock:
    return RecordingClock()


@pytest.fixture(params=["local", "gateway"])
def client(request: pytest.FixtureRequest, local_api: LocalAPI, clock: RecordingClock) -> Iterator[ContainersClient]:
    base = local_api.gateway_base_url if request.param == "gateway" else local_api.base_url
    with ContainersClient(base, dialect=request.param, clock=clock, rng=random.Random(7),
                          retry=RetryPolicy(max_retries=40, budget=10_000, base=0.5, cap=8), timeout=30) as c:
        yield c


def faults(seed: int = 11, **endpoints: dict[str, Any]) -> dict[str, Any]:
    return {"seed": seed, "endpoints": {name.replace("__", "."): f for name, f in endpoints.items()}}


def names_in(api: LocalAPI, name: str) -> list[str]:
    r = httpx.get(f"{api.base_url}/containers", params={"name": name, "limit": 100}, timeout=30)
    r.raise_for_status()
    return [c["id"] for c in r.json()["data"]]


def test_a_429_storm_is_ridden_out_at_the_retry_after_pace(
    client: ContainersClient, local_api: LocalAPI, clock: RecordingClock
) -> None:
    made = client.create_container(CreateContainerRequest(name="storm"))
    local_api.set_faults(faults(containers__retrieve={"rate_limit_rate": 0.7, "retry_after_seconds": 3}))
    for _ in range(10):
        assert client.retrieve_container(made.id).id == made.id
    assert len(clock.sleeps) >= 5  # the storm really happened
    assert set(clock.sleeps) == {3.0}  # every wait is exactly what the server asked for


def test_a_429_storm_without_retry_after_backs_off_with_jitter(
    client: ContainersClient, local_api: LocalAPI, clock: RecordingClock
) -> None:
    local_api.set_faults(faults(containers__list={"rate_limit_rate": 0.8, "retry_after_seconds": 0}))
    for _ in range(5):
        list(client.list_containers())
    assert len(clock.sleeps) >= 5
    assert all(0 <= s <= 8 for s in clock.sleeps) and len(set(clock.sleeps)) == len(clock.sleeps)


def test_an_endless_429_gives_up_within_the_budget(local_api: LocalAPI, clock: RecordingClock) -> None:
    local_api.set_faults(faults(containers__list={"rate_limit_rate": 1.0, "retry_after_seconds": 5}))
    with ContainersClient(local_api.base_url, dialect="local", clock=clock,
                          retry=RetryPolicy(max_retries=100, budget=22), timeout=30) as c, pytest.raises(RateLimited):
        list(c.list_containers())
    assert clock.sleeps == [5.0] * 4


def test_5xx_bursts_recover(client: ContainersClient, local_api: LocalAPI, clock: RecordingClock) -> None:
    made = client.create_container(CreateContainerRequest(name="bursty"))
    f = client.upload_file(made.id, io.BytesIO(b"abc"), filename="a.txt")
    local_api.set_faults(faults(containers__retrieve={"error_rate": 0.6}, files__retrieve={"error_rate": 0.6}))
    for _ in range(10):
        assert client.retrieve_container(made.id).usable
        assert client.retrieve_file(made.id, f.id).bytes == 3
    assert len(clock.sleeps) >= 5


def test_dropped_connections_are_retried(client: ContainersClient, local_api: LocalAPI, clock: RecordingClock) -> None:
    made = client.create_container(CreateContainerRequest(name="droppy"))
    data = random.Random(3).randbytes(2 << 20)
    f = client.upload_file(made.id, io.BytesIO(data), filename="d.bin")
    local_api.set_faults(faults(
        containers__retrieve={"drop_rate": 0.5, "drop_after_processing": False},
        files__content={"drop_rate": 0.5},
        containers__list={"drop_rate": 0.5},
    ))
    for _ in range(6):
        assert client.retrieve_container(made.id).id == made.id
        sink = io.BytesIO()
        assert client.download_file(made.id, f.id, sink).sha256 == hashlib.sha256(data).hexdigest()
        assert sink.getvalue() == data  # a retried download rewinds the sink: no duplicated bytes
        assert [c.id for c in client.list_containers(name="droppy")] == [made.id]
    assert len(clock.sleeps) >= 5


def test_a_create_whose_response_was_lost_yields_one_container(
    client: ContainersClient, local_api: LocalAPI
) -> None:
    # Every create takes effect and then loses its answer: only adoption by name can succeed, and
    # a blind retry would leave several containers behind.
    local_api.set_faults(faults(containers__create={"drop_rate": 1.0, "drop_after_processing": True}))
    got = client.create_container(CreateContainerRequest(name="hearth-once"))
    local_api.set_faults(None)
    assert names_in(local_api, "hearth-once") == [got.id]
    assert got.usable


def test_a_create_dropped_before_it_took_effect_is_retried(
    client: ContainersClient, local_api: LocalAPI, clock: RecordingClock
) -> None:
    local_api.set_faults(faults(seed=5, containers__create={"drop_rate": 0.7, "drop_after_processing": False}))
    made = [client.create_container(CreateContainerRequest(name=f"hearth-b{i}")).id for i in range(4)]
    local_api.set_faults(None)
    assert clock.sleeps  # some creates were dropped and retried
    for i, cid in enumerate(made):
        assert names_in(local_api, f"hearth-b{i}") == [cid]


def test_a_create_that_never_gets_through_fails_temporarily_and_makes_nothing(
    local_api: LocalAPI, clock: RecordingClock
) -> None:
    local_api.set_faults(faults(containers__create={"drop_rate": 1.0, "drop_after_processing": False}))
    with ContainersClient(local_api.base_url, dialect="local", clock=clock,
                          retry=RetryPolicy(max_retries=3), timeout=30) as c, pytest.raises(TransportError) as info:
        c.create_container(CreateContainerRequest(name="hearth-never"))
    assert info.value.temporary
    local_api.set_faults(None)
    assert names_in(local_api, "hearth-never") == []


def test_an_upload_whose_response_was_lost_yields_one_file(client: ContainersClient, local_api: LocalAPI) -> None:
    made = client.create_container(CreateContainerRequest(name="hearth-up"))
    local_api.set_faults(faults(files__create={"drop_rate": 1.0}, uploads__create={"drop_rate": 1.0}))
    f = client.upload_file(made.id, io.BytesIO(b"payload"), filename="p.txt")
    fo = client.upload_input_file(io.BytesIO(b"input"), filename="i.txt")
    local_api.set_faults(None)
    assert [x.id for x in client.list_files(made.id)] == [f.id]
    assert [x.id for x in client.list_input_files() if x.filename == "i.txt"] == [fo.id]


def test_a_delete_whose_response_was_lost_is_done(
    client: ContainersClient, local_api: LocalAPI, clock: RecordingClock
) -> None:
    made = [client.create_container(CreateContainerRequest(name=f"hearth-del{i}")).id for i in range(6)]
    local_api.set_faults(faults(seed=3, containers__delete={"drop_rate": 0.5}))
    for cid in made:
        client.delete_container(cid)  # a retry's 404 after a lost answer means the lost try did it
    local_api.set_faults(None)
    assert clock.sleeps  # some answers were lost
    assert [c.id for c in client.list_containers()] == []

"""Every endpoint, in every dialect, against the local API over a real socket.

The gateway dialect runs against ``/openai/v1`` and Azure against the server root (the client
adds ``/openai/v1``). The official ``openai`` SDK, an independent client, checks what ours did.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from hearth.api.client import ContainersClient
from hearth.api.models import CreateContainerRequest, ExpiresAfter
from hearth.api.retry import RetryPolicy
from hearth.clock import ManualClock
from hearth.errors import AuthError, BadRequest, ContainerExpired, NotFound
from settings.config import Settings
from tests.fixtures.localapi import LocalAPI

DIALECTS = ["local", "openai", "gateway", "azure"]


def make_client(api: LocalAPI, dialect: str, api_key: str | None = None) -> ContainersClient:
    base = {"gateway": api.gateway_base_url, "azure": api.root_url}.get(dialect, api.base_url)
    return ContainersClient(base, api_key=api_key, dialect=dialect, clock=ManualClock(), rng=random.Random(0),
                            retry=RetryPolicy(max_retries=2, base=0.01, cap=0.05), timeout=30)


@pytest.fixture(params=DIALECTS)
def client(request: pytest.FixtureRequest, local_api: LocalAPI) -> Iterator[ContainersClient]:
    with make_client(local_api, request.param) as c:
        yield c


def test_containers_lifecycle(client: ContainersClient) -> None:
    made = [
        client.create_container(CreateContainerRequest(name=f"hearth-t-{i}", memory_limit="4g",
                                                       expires_after=ExpiresAfter(anchor="last_active_at", minutes=5)))
        for i in range(5)
    ]
    assert all(c.usable and c.memory_limit == "4g" and c.expires_after and c.expires_after.minutes == 5 for c in made)
    # Pages of 2 are followed to the end, in both orders.
    listed = [c.id for c in client.list_containers(page_size=2)]
    assert listed == [c.id for c in reversed(made)]
    assert [c.id for c in client.list_containers(order="asc", page_size=2)] == [c.id for c in made]
    assert [c.id for c in client.list_containers(name="hearth-t-3", page_size=2)] == [made[3].id]
    found = client.find_container_by_name("hearth-t-2")
    assert found is not None and found.id == made[2].id
    assert client.find_container_by_name("nope") is None
    assert client.retrieve_container(made[0].id).name == "hearth-t-0"
    client.delete_container(made[0].id)
    with pytest.raises(NotFound):
        client.retrieve_container(made[0].id)
    with pytest.raises(NotFound):
        client.delete_container(made[0].id)


def test_container_files(client: ContainersClient, tmp_path: Path) -> None:
    c = client.create_container(CreateContainerRequest(name="hearth-files"))
    data = random.Random(1).randbytes(3 * (1 << 20) + 17)  # several upload chunks
    src = tmp_path / "input.bin"
    src.write_bytes(data)
    by_path = client.upload_file(c.id, src)
    assert by_path.bytes == len(data) and by_path.path.endswith("-input.bin") and by_path.source == "user"
    by_stream = client.upload_file(c.id, io.BytesIO(b"col\n1\n"), filename="t.csv")
    assert by_stream.path.endswith("-t.csv") and by_stream.bytes == 6
    assert [f.id for f in client.list_files(c.id, page_size=1)] == [by_path.id, by_stream.id]
    assert client.retrieve_file(c.id, by_stream.id).path == by_stream.path
    sink = io.BytesIO()
    got = client.download_file(c.id, by_path.id, sink)
    assert got.bytes == len(data) and got.sha256 == hashlib.sha256(data).hexdigest()
    assert sink.getvalue() == data
    client.delete_file(c.id, by_stream.id)
    assert [f.id for f in client.list_files(c.id)] == [by_path.id]
    with pytest.raises(NotFound):
        client.retrieve_file(c.id, by_stream.id)


def test_files_api_and_copy_by_id(client: ContainersClient) -> None:
    payload = b"a,b\n1,2\n"
    fo = client.upload_input_file(io.BytesIO(payload), filename="data.csv")
    assert fo.id.startswith("file-") and fo.bytes == len(payload) and fo.purpose == "user_data"
    assert client.retrieve_input_file(fo.id).filename == "data.csv"
    assert fo.id in [f.id for f in client.list_input_files(purpose="user_data")]
    assert fo.id not in [f.id for f in client.list_input_files(purpose="assistants")]
    sink = io.BytesIO()
    assert client.download_input_file(fo.id, sink).sha256 == hashlib.sha256(payload).hexdigest()
    c = client.create_container(CreateContainerRequest(name="hearth-copy"))
    copied = client.add_file_by_id(c.id, fo.id)
    assert copied.bytes == len(payload) and copied.path.endswith("data.csv")
    out = io.BytesIO()
    client.download_file(c.id, copied.id, out)
    assert out.getvalue() == payload
    created = client.create_container(CreateContainerRequest(name="hearth-ids", file_ids=[fo.id]))
    assert [f.bytes for f in client.list_files(created.id)] == [len(payload)]
    client.delete_input_file(fo.id)
    with pytest.raises(NotFound):
        client.retrieve_input_file(fo.id)


def test_expiry_is_reported_both_ways(client: ContainersClient, local_api: LocalAPI) -> None:
    c = client.create_container(CreateContainerRequest(name="hearth-exp",
                                                       expires_after=ExpiresAfter(anchor="last_active_at", minutes=1)))
    local_api.advance_clock(120)
    got = client.retrieve_container(c.id)
    assert got.expired and not got.usable
    with pytest.raises(ContainerExpired):
        client.upload_file(c.id, io.BytesIO(b"x"), filename="x.txt")
    with pytest.raises(ContainerExpired):
        list(client.list_files(c.id))


def test_bad_request_names_the_param(client: ContainersClient) -> None:
    with pytest.raises(BadRequest) as info:
        list(client.list_containers(page_size=1000))
    assert info.value.param == "limit"


def test_keys_against_a_server_that_checks_them(local_api_with_keys: LocalAPI) -> None:
    for dialect in ("openai", "azure", "gateway"):
        with make_client(local_api_with_keys, dialect, api_key="sk-test-a") as good:
            assert good.create_container(CreateContainerRequest(name=f"k-{dialect}")).usable
        with make_client(local_api_with_keys, dialect, api_key="sk-wrong-SECRETSECRET") as bad:
            with pytest.raises(AuthError) as info:
                list(bad.list_containers())
            assert "SECRETSECRET" not in str(info.value)
    with make_client(local_api_with_keys, "local") as none, pytest.raises(AuthError):
        none.retrieve_container("cntr_x")


def test_from_settings_talks_to_the_configured_backend(local_api: LocalAPI) -> None:
    settings = Settings(backend="gateway", api_base=local_api.gateway_base_url, api_key="sk-any")
    with ContainersClient.from_settings(settings) as client:
        assert client.dialect == "gateway"
        assert client.create_container(CreateContainerRequest(name="from-settings")).name == "from-settings"


def test_the_official_sdk_sees_what_our_client_did(local_api: LocalAPI) -> None:
    sdk = openai.OpenAI(base_url=local_api.base_url, api_key="unused", max_retries=0)
    with make_client(local_api, "local") as client:
        c = client.create_container(CreateContainerRequest(name="hearth-sdk"))
        f = client.upload_file(c.id, io.BytesIO(b"hello sdk"), filename="hello.txt")
        assert sdk.containers.retrieve(c.id).name == "hearth-sdk"
        assert sdk.containers.files.content.retrieve(f.id, container_id=c.id).read() == b"hello sdk"
        made_by_sdk = sdk.containers.create(name="by-sdk")
        assert client.retrieve_container(made_by_sdk.id).name == "by-sdk"
    sdk.close()

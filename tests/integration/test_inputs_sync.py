"""Input sync against the real local API with the real client: uploads, file ids, URLs, idempotence."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hearth.api.client import ContainersClient
from hearth.api.models import CreateContainerRequest
from hearth.api.retry import RetryPolicy
from hearth.clock import ManualClock
from hearth.errors import InputsIncomplete
from hearth.files.inputs import inputs_digest, resolve_inputs, split_file_ids, sync_inputs
from tests.fixtures.localapi import LocalAPI
from tests.fixtures.s3 import S3Server


@dataclass
class Spec:
    path: str | None = None
    url: str | None = None
    file_id: str | None = None
    as_: str | None = None


@pytest.fixture
def client(local_api: LocalAPI) -> Iterator[ContainersClient]:
    with ContainersClient(local_api.base_url, dialect="openai", clock=ManualClock(), rng=random.Random(0),
                          retry=RetryPolicy(max_retries=2, base=0.01, cap=0.05), timeout=30) as c:
        yield c


def content(client: ContainersClient, cid: str, file_id: str) -> bytes:
    buf = io.BytesIO()
    client.download_file(cid, file_id, buf)
    return buf.getvalue()


def test_inputs_synced_verified_and_idempotent(
    client: ContainersClient, tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_bytes(b"a" * 3000)
    (data / "b.csv").write_bytes(random.Random(1).randbytes(3 * 2**20 + 1))
    (tmp_path / "notes.txt").write_text("read me")
    boto = s3_server.boto()
    boto.put_object(Bucket=s3_bucket, Key="inputs/model.json", Body=b'{"w": [1, 2, 3]}')
    fo = client.upload_input_file(io.BytesIO(b"from the files api"), filename="lookup.txt")  # type: ignore[arg-type]
    options = s3_server.storage_options()

    specs = [
        Spec(path="data/*.csv"),
        Spec(path="notes.txt", as_="README.txt"),
        Spec(url=f"s3://{s3_bucket}/inputs/model.json", as_="weights.json"),
        Spec(file_id=fo.id),
    ]
    items = resolve_inputs(specs, tmp_path, storage_options=options)
    assert [(i.kind, i.dest_name) for i in items] == [
        ("local", "a.csv"), ("local", "b.csv"), ("local", "README.txt"), ("url", "weights.json"), ("file_id", None),
    ]
    cid = client.create_container(CreateContainerRequest(name="hearth-inputs")).id
    synced = sync_inputs(client, cid, items, storage_options=options)
    assert [f.path.rsplit("/", 1)[-1].split("-", 1)[-1] for f in synced] == [
        "a.csv", "b.csv", "README.txt", "weights.json", "lookup.txt",
    ]
    assert content(client, cid, synced[1].id) == (data / "b.csv").read_bytes()
    assert content(client, cid, synced[3].id) == b'{"w": [1, 2, 3]}'
    assert content(client, cid, synced[4].id) == b"from the files api"
    assert all(f.source == "user" for f in synced)

    # A second sync (a retried provisioning task) sends nothing and finds the same files.
    before = [f.id for f in client.list_files(cid)]
    again = sync_inputs(client, cid, items, storage_options=options)
    assert [f.id for f in again] == [f.id for f in synced]
    assert [f.id for f in client.list_files(cid)] == before

    # An input that changed size is sent again, and the digest says the inputs changed.
    (data / "a.csv").write_bytes(b"a" * 3001)
    changed = resolve_inputs(specs, tmp_path, storage_options=options)
    assert inputs_digest(changed) != inputs_digest(items)
    third = sync_inputs(client, cid, changed, storage_options=options)
    assert third[0].id != synced[0].id and third[0].bytes == 3001
    assert len(list(client.list_files(cid))) == len(before) + 1


def test_file_ids_given_at_create_are_verified_not_added(client: ContainersClient, tmp_path: Path) -> None:
    fo = client.upload_input_file(io.BytesIO(b"shared"), filename="shared.txt")  # type: ignore[arg-type]
    (tmp_path / "x.txt").write_text("x")
    items = resolve_inputs([Spec(file_id=fo.id), Spec(path="x.txt")], tmp_path)
    ids, rest = split_file_ids(items)
    assert [i.dest_name for i in rest] == ["x.txt"]
    cid = client.create_container(CreateContainerRequest(name="hearth-ids", file_ids=ids)).id
    files = sync_inputs(client, cid, items, file_ids_at_create=True)
    assert files[0].path == "/mnt/data/shared.txt" and files[1].path.endswith("-x.txt")
    assert len(list(client.list_files(cid))) == 2

    bare = client.create_container(CreateContainerRequest(name="hearth-no-ids")).id
    with pytest.raises(InputsIncomplete) as info:
        sync_inputs(client, bare, items, file_ids_at_create=True)  # the create "dropped" the file id
    assert info.value.temporary and fo.id in str(info.value)

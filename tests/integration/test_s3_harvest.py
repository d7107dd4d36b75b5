"""Harvest to ``s3://`` through s3fs against a real S3-compatible server (moto in server mode).

Objects are read back with boto3, an independent client, and multipart uploads are inspected to
show that an aborted write leaves neither an object nor a dangling upload.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator

import pytest

from hearth.api.client import ContainersClient
from hearth.api.models import CreateContainerRequest
from hearth.api.retry import RetryPolicy
from hearth.clock import ManualClock
from hearth.files.harvest import Harvester
from hearth.files.storage import OBJECT_BLOCK_SIZE, StorageTarget
from tests.fixtures.localapi import LocalAPI
from tests.fixtures.s3 import S3Server

LEAP_DAY = 1_709_208_000.0  # 2024-02-29 12:00 UTC


class Boom(Exception):
    pass


@pytest.fixture
def client(local_api: LocalAPI) -> Iterator[ContainersClient]:
    with ContainersClient(local_api.base_url, dialect="openai", clock=ManualClock(), rng=random.Random(0),
                          retry=RetryPolicy(max_retries=2, base=0.01, cap=0.05), timeout=30) as c:
        yield c


def _objects(s3: S3Server, bucket: str, prefix: str = "") -> dict[str, bytes]:
    boto = s3.boto()
    out = {}
    for obj in boto.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        out[obj["Key"]] = boto.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def test_harvest_to_s3_byte_for_byte(
    local_api: LocalAPI, client: ContainersClient, s3_server: S3Server, s3_bucket: str
) -> None:
    cid = client.create_container(CreateContainerRequest(name="hearth-s3")).id
    rng = random.Random(3)
    written = {
        "/mnt/data/small.txt": b"hello s3",
        "/mnt/data/nested/dir/big.bin": rng.randbytes(OBJECT_BLOCK_SIZE * 2 + 12345),  # a multipart upload
        "/mnt/data/empty": b"",
    }
    for path, data in written.items():
        local_api.write_assistant_file(cid, path, data)
    target = StorageTarget.from_url(
        f"s3://{s3_bucket}/harvest/{{pool}}/{{date}}/{{container_id}}", clock=ManualClock(LEAP_DAY),
        storage_options=s3_server.storage_options(), pool="p1", container_id=cid,
    )
    assert not target.atomic_rename  # object stores: complete-on-close, no rename
    report = Harvester(client, ManualClock()).harvest(cid, target)
    assert report.complete and report.files == 3

    prefix = f"harvest/p1/2024-02-29/{cid}/"
    objects = _objects(s3_server, s3_bucket, prefix)
    assert {k.removeprefix(prefix): v for k, v in objects.items() if not k.endswith("manifest.json")} == {
        p.removeprefix("/mnt/data/"): d for p, d in written.items()
    }
    doc = json.loads(objects[prefix + "manifest.json"])
    assert {f["storage_key"]: f["sha256"] for f in doc["files"]} == {
        p.removeprefix("/mnt/data/"): hashlib.sha256(d).hexdigest() for p, d in written.items()
    }
    again = Harvester(client, ManualClock()).harvest(cid, target)
    assert again.files == 0 and again.already == 3


@pytest.mark.parametrize("size", [1000, OBJECT_BLOCK_SIZE + 1000], ids=["single-put", "multipart"])
def test_an_aborted_s3_write_leaves_no_object_and_no_upload(s3_server: S3Server, s3_bucket: str, size: int) -> None:
    target = StorageTarget.from_url(f"s3://{s3_bucket}/t", storage_options=s3_server.storage_options())
    with pytest.raises(Boom), target.open_atomic("k.bin") as w:
        w.write(b"x" * size)
        if size > OBJECT_BLOCK_SIZE:
            uploads = s3_server.boto().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
            assert [u["Key"] for u in uploads] == ["t/k.bin"]  # parts are on the server already
        raise Boom
    assert _objects(s3_server, s3_bucket) == {}
    assert s3_server.boto().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    with target.open_atomic("k.bin") as w:
        w.write(b"y" * size)
        assert _objects(s3_server, s3_bucket) == {}  # not visible before commit
        w.commit()
    assert _objects(s3_server, s3_bucket) == {"t/k.bin": b"y" * size}


def test_a_download_failing_mid_way_never_reaches_the_s3_key(
    local_api: LocalAPI, client: ContainersClient, s3_server: S3Server, s3_bucket: str
) -> None:
    cid = client.create_container(CreateContainerRequest(name="hearth-s3-fail")).id
    data = random.Random(9).randbytes(OBJECT_BLOCK_SIZE + 2**20)
    local_api.write_assistant_file(cid, "/mnt/data/a.bin", data)
    options = s3_server.storage_options()

    class FailingTarget(StorageTarget):
        def open_atomic(self, key: str):  # type: ignore[no-untyped-def]
            w = super().open_atomic(key)
            real = w.write

            def write(chunk: bytes) -> int:
                if w.bytes_written >= OBJECT_BLOCK_SIZE:
                    raise Boom("disk on fire")
                return real(chunk)

            w.write = write  # type: ignore[method-assign]
            return w

    failing = FailingTarget.from_url(f"s3://{s3_bucket}/out", storage_options=options, container_id=cid)
    with pytest.raises(Boom):
        Harvester(client, ManualClock()).harvest(cid, failing)
    assert _objects(s3_server, s3_bucket) == {}
    assert s3_server.boto().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    target = StorageTarget.from_url(f"s3://{s3_bucket}/out", storage_options=options, container_id=cid)
    assert Harvester(client, ManualClock()).harvest(cid, target).complete
    assert _objects(s3_server, s3_bucket, f"out/{cid}/a.bin") == {f"out/{cid}/a.bin": data}

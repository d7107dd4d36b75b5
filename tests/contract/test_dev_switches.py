"""The local API's dev switches (``file_ids`` copy on/off/refused, a lower Files-API size limit) and its
request counter, seen through the official SDK over a real socket."""

from __future__ import annotations

import io

import httpx
import openai
import pytest

from tests.fixtures.localapi import LocalAPI
from tests.helpers import sdk


def test_file_ids_copy_can_be_ignored_or_refused_and_requests_are_counted(local_api: LocalAPI) -> None:
    client = sdk(local_api)
    staged = client.files.create(file=("d.csv", io.BytesIO(b"1,2\n")), purpose="user_data")
    local_api.request_counts(reset=True)

    copied = client.containers.create(name="copy", file_ids=[staged.id])
    assert [f.path for f in client.containers.files.list(copied.id)] == ["/mnt/data/d.csv"]

    local_api.set_switches(file_ids="ignore")
    ignored = client.containers.create(name="ignore", file_ids=[staged.id])
    assert list(client.containers.files.list(ignored.id)) == []

    local_api.set_switches(file_ids="reject")
    with pytest.raises(openai.BadRequestError) as refused:
        client.containers.create(name="reject", file_ids=[staged.id])
    assert refused.value.param == "file_ids"
    client.containers.create(name="no-ids")  # without file_ids a create still works

    assert local_api.request_counts() == {"containers.create": 4, "files.list": 2}
    assert local_api.request_counts(reset=True)["containers.create"] == 4
    assert local_api.request_counts() == {}


def test_the_files_api_limit_can_be_lowered(local_api: LocalAPI) -> None:
    client = sdk(local_api)
    local_api.set_switches(files_max_bytes=10)
    with pytest.raises(openai.BadRequestError) as big:
        client.files.create(file=("big.csv", io.BytesIO(b"x" * 11)), purpose="user_data")
    assert "too large" in str(big.value)
    assert client.files.create(file=("ok.csv", io.BytesIO(b"x" * 10)), purpose="user_data").bytes == 10
    bad = httpx.put(f"{local_api.root_url}/_dev/switches", json={"file_ids": "sometimes"}, timeout=30)
    assert bad.status_code == 400
    assert local_api.set_switches() == {"file_ids": "copy", "files_max_bytes": 10}


def test_uploaded_bytes_are_counted_for_both_upload_endpoints(local_api: LocalAPI) -> None:
    client = sdk(local_api)
    http = local_api.http
    local_api.request_counts(reset=True)
    client.files.create(file=("a.bin", io.BytesIO(b"x" * 1000)), purpose="user_data")
    container = client.containers.create(name="bytes")
    client.containers.files.create(container.id, file=("b.bin", io.BytesIO(b"y" * 234)))
    body = http.get(f"{local_api.root_url}/_dev/requests").json()
    assert body["upload_bytes"] == 1234
    http.delete(f"{local_api.root_url}/_dev/requests")
    assert http.get(f"{local_api.root_url}/_dev/requests").json()["upload_bytes"] == 0

"""Review B1: one data dir belongs to one local API server at a time.

A second server used to open the store (wiping ``tmp/``) before it even tried to bind, so a second
server that failed to start still destroyed the first one's in-flight uploads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hearth.clock import ManualClock
from hearth.errors import HearthError
from hearth.localapi import DataDirInUse, LocalAPIServer
from hearth.localapi.store import Store

BOUNDARY = "hearthreviewb1"
PAYLOAD = b"x" * (256 * 1024)


def _slow_upload_body(release: threading.Event) -> Iterator[bytes]:
    head = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    yield head + PAYLOAD[: len(PAYLOAD) // 2]
    release.wait(30)  # the upload stays in flight until the test lets it go
    yield PAYLOAD[len(PAYLOAD) // 2 :] + f"\r\n--{BOUNDARY}--\r\n".encode()


@pytest.fixture
def first(tmp_path: Path) -> Iterator[LocalAPIServer]:
    with LocalAPIServer(tmp_path / "api") as server:
        yield server


def _start_inflight_upload(server: LocalAPIServer) -> tuple[threading.Thread, threading.Event, dict[str, object]]:
    with httpx.Client(timeout=30) as http:
        cid = http.post(f"{server.base_url}/containers", json={"name": "b1"}).json()["id"]
    release = threading.Event()
    result: dict[str, object] = {}

    def run() -> None:
        with httpx.Client(timeout=30) as http:
            r = http.post(
                f"{server.base_url}/containers/{cid}/files",
                content=_slow_upload_body(release),
                headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
            )
            result["status"] = r.status_code
            if r.status_code == 200:
                result["body"] = http.get(f"{server.base_url}/containers/{cid}/files/{r.json()['id']}/content").content

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    tmp = server.data_dir / "tmp"
    waited = threading.Event()
    for _ in range(1000):  # until the server has begun writing the upload's temp file
        if any(tmp.iterdir()):
            break
        waited.wait(0.01)
    assert any(tmp.iterdir()), "the upload never reached the server's temp dir"
    return thread, release, result


@pytest.mark.parametrize("same_port", [False, True], ids=["other-port", "same-port"])
def test_second_server_on_same_dir_fails_clearly_and_spares_inflight_upload(
    first: LocalAPIServer, same_port: bool
) -> None:
    thread, release, result = _start_inflight_upload(first)
    second = LocalAPIServer(first.data_dir, port=first.port if same_port else 0)
    with pytest.raises(HearthError) as info:
        second.start()
    if not same_port:
        assert isinstance(info.value, DataDirInUse)
        assert "in use by pid" in str(info.value)
    release.set()
    thread.join(30)
    assert result.get("status") == 200
    assert result.get("body") == PAYLOAD


def test_lock_is_released_on_close_and_names_holder(tmp_path: Path) -> None:
    store = Store(tmp_path, ManualClock())
    with pytest.raises(DataDirInUse, match=r"in use by pid \d+"):
        Store(tmp_path, ManualClock())
    store.close()
    Store(tmp_path, ManualClock()).close()  # free again


def test_failed_start_releases_port_and_dir(tmp_path: Path) -> None:
    holder = Store(tmp_path, ManualClock())
    server = LocalAPIServer(tmp_path, port=0)
    with pytest.raises(DataDirInUse):
        server.start()
    holder.close()
    with LocalAPIServer(tmp_path, port=0) as again:  # nothing of the failed try is left holding the dir
        assert httpx.get(f"{again.base_url}/containers", timeout=10).status_code == 200

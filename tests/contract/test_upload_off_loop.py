"""An upload's disk writes run off the event loop: a write that blocks stalls no other request.

No timing here: the server's blob writer (its ``blob_writer`` seam) is made to block its second write
on an event. While it blocks, the upload cannot finish, yet a small request over the socket must be
answered; were the write on the event loop, nothing else could be answered until it returned, and the
small request would fail at its bound. Then the write is released and the upload must arrive byte
for byte. The client also holds back the second half of its body until the server's write blocks, so
the bytes reach the disk as they arrive (streaming), not after the whole body was read into memory.
"""

from __future__ import annotations

import hashlib
import io
import random
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import pytest
from openai import DefaultHttpxClient, OpenAI

from hearth.localapi import LocalAPIServer
from tests.helpers import until

CHUNK = 64 << 10
TOTAL = 8 << 20
HOLD_BACK_AT = 4 << 20  # the client sends no more than this until the server's 2nd write blocks
BOUND = 60.0  # only a bound for failure: every wait below ends on an event long before it


class Gate:
    """Blocks the ``block_at``-th raw write of the first upload until :attr:`release` is set."""

    def __init__(self, block_at: int = 2) -> None:
        self.block_at = block_at
        self.blocked = threading.Event()
        self.release = threading.Event()
        self.armed = True

    def writer(self, path: Path) -> BinaryIO:
        raw = _GatedRaw(path, self if self.armed else None)
        self.armed = False
        return io.BufferedWriter(raw)


class _GatedRaw(io.FileIO):
    def __init__(self, path: Path, gate: Gate | None) -> None:
        super().__init__(path, "xb")
        self._gate = gate
        self._writes = 0

    def write(self, data: Any) -> int:
        self._writes += 1
        if self._gate is not None and self._writes == self._gate.block_at:
            self._gate.blocked.set()
            # Longer than any client's bound: a blocked loop must fail the small request, not
            # be let go first (the test sets release in any case; this only spares a stuck thread).
            self._gate.release.wait(3 * BOUND)
        return super().write(data)


def _content(seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for _ in range(TOTAL // CHUNK):
        yield rng.randbytes(CHUNK)


def _multipart_body(boundary: str, fields: dict[str, str], filename: str, data: Iterator[bytes]) -> Iterator[bytes]:
    for name, value in fields.items():
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    yield from data
    yield f"\r\n--{boundary}--\r\n".encode()


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[LocalAPIServer, Gate]]:
    gate = Gate()
    server = LocalAPIServer(tmp_path / "localapi", dev=True, blob_writer=gate.writer).start()
    try:
        yield server, gate
    finally:
        gate.release.set()  # never leave the server's thread waiting, whatever failed
        server.stop()


@pytest.mark.parametrize("route", ["container_file", "files_api"])
def test_a_blocked_upload_write_stalls_no_other_request(gated: tuple[LocalAPIServer, Gate], route: str) -> None:
    server, gate = gated
    sdk = OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=BOUND,
                 http_client=DefaultHttpxClient(verify=False))
    container = sdk.containers.create(name="busy")
    if route == "container_file":
        url, fields = f"{server.base_url}/containers/{container.id}/files", {}
    else:
        url, fields = f"{server.base_url}/files", {"purpose": "user_data"}

    digest = hashlib.sha256()
    held_back: dict[str, bool] = {}

    def client_data() -> Iterator[bytes]:
        sent = 0
        for chunk in _content(13):
            if sent == HOLD_BACK_AT:
                held_back["server wrote before the body ended"] = gate.blocked.wait(BOUND)
            digest.update(chunk)
            sent += len(chunk)
            yield chunk

    result: dict[str, Any] = {}

    def upload() -> None:
        boundary = "hearth-test-boundary-7f3a"
        try:
            result["response"] = httpx.post(
                url,
                content=_multipart_body(boundary, fields, "big.bin", client_data()),
                headers={"content-type": f"multipart/form-data; boundary={boundary}"},
                timeout=BOUND,
            )
        except BaseException as exc:  # reported by the main thread
            result["error"] = exc

    uploader = threading.Thread(target=upload, name="test-upload")
    uploader.start()
    try:
        assert gate.blocked.wait(BOUND), f"the server never reached its 2nd write: {result}"
        # The write blocks now, in the server. The event loop must still answer others.
        listed = [c.id for c in sdk.containers.list()]
        assert listed == [container.id]
        assert sdk.containers.retrieve(container.id).status == "running"
        assert "response" not in result  # the upload itself cannot have finished
        tmp = list((server.data_dir / "tmp").iterdir())
        assert len(tmp) == 1 and 0 < tmp[0].stat().st_size < TOTAL  # on disk as it arrives
    finally:
        gate.release.set()
        uploader.join(BOUND)
    assert not uploader.is_alive()
    assert held_back == {"server wrote before the body ended": True}
    assert "error" not in result, result.get("error")
    response = result["response"]
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["bytes"] == TOTAL
    if route == "container_file":
        stored = sdk.containers.files.content.retrieve(body["id"], container_id=container.id).read()
    else:
        stored = sdk.files.content(body["id"]).read()
    assert len(stored) == TOTAL and hashlib.sha256(stored).hexdigest() == digest.hexdigest()
    assert list((server.data_dir / "tmp").iterdir()) == []  # moved into place, nothing left behind
    sdk.close()


def test_a_client_gone_mid_upload_leaves_no_temp_file(gated: tuple[LocalAPIServer, Gate]) -> None:
    server, gate = gated
    boundary = "hearth-test-boundary-gone"
    head = _multipart_body(boundary, {"purpose": "user_data"}, "gone.bin", _content(7))
    sent = bytearray()
    for piece in head:
        sent += piece
        if len(sent) >= HOLD_BACK_AT:
            break
    request = (
        f"POST /v1/files HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {TOTAL * 2}\r\n\r\n"
    ).encode()
    sock = socket.create_connection((server.host, server.port), timeout=BOUND)
    try:
        sock.sendall(request + bytes(sent))
        assert gate.blocked.wait(BOUND)
        assert len(list((server.data_dir / "tmp").iterdir())) == 1
    finally:
        sock.close()  # gone, with the body half sent
        gate.release.set()
    # The server notices the disconnect on its next read, then removes the temp file, in a thread.
    until(lambda: not list((server.data_dir / "tmp").iterdir()), timeout=BOUND, pause=0.05,
          what="the temp file removed")
    with httpx.Client(base_url=server.base_url, timeout=BOUND) as http:
        assert http.get("/files").json()["data"] == []

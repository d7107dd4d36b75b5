"""The streamed multipart body is valid multipart, sized exactly, replayable, and never one big read."""

from __future__ import annotations

import hashlib
import io
from email.parser import BytesParser
from email.policy import default
from pathlib import Path

import httpx
import pytest

from hearth.api.transfer import CHUNK, MultipartUpload, RewindableSink, UploadSource, copy_to_sink


def parse(body: bytes, content_type: str) -> dict[str, tuple[str, bytes]]:
    """Field name -> (Content-Disposition, data), read by the stdlib's MIME parser, not by our code."""
    msg = BytesParser(policy=default).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    assert msg.is_multipart() and not msg.defects
    parts = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        assert isinstance(name, str) and isinstance(payload, bytes)
        parts[name] = (str(part["content-disposition"]), payload)
    return parts


def test_body_parses_and_content_length_is_exact(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000 + b"tail"  # > 2 chunks
    path = tmp_path / 'we"ird name.csv'
    path.write_bytes(data)
    up = MultipartUpload(UploadSource(path), fields=[("purpose", "user_data")])
    chunks = list(up)
    assert max(len(c) for c in chunks) <= CHUNK  # streamed, never the whole file in one piece
    body = b"".join(chunks)
    assert len(body) == up.content_length
    parts = parse(body, up.headers()["Content-Type"])
    assert parts["purpose"][1] == b"user_data"
    headers, got = parts["file"]
    assert got == data
    assert 'filename="we%22ird name.csv"' in headers


def test_httpx_sends_content_length_not_chunked(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"x" * 1000)
    up = MultipartUpload(UploadSource(path))
    seen: dict[str, str] = {}

    def handler(r: httpx.Request) -> httpx.Response:
        seen.update(r.headers)
        seen["len"] = str(len(r.read()))
        return httpx.Response(200)

    with httpx.Client(transport=httpx.MockTransport(handler)) as c:
        c.post("http://x/", content=iter(up), headers=up.headers())
    assert seen["content-length"] == str(up.content_length) == seen["len"]
    assert "transfer-encoding" not in seen


def test_seekable_stream_is_replayed_from_where_it_started() -> None:
    stream = io.BytesIO(b"HEADERpayload")
    stream.seek(6)
    src = UploadSource(stream, "p.txt")
    assert src.size == 7 and src.replayable
    assert b"".join(src.chunks()) == b"payload"
    assert b"".join(src.chunks()) == b"payload"


class OneShot(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self._data.read(n)


def test_unseekable_stream_is_sent_once_with_unknown_size() -> None:
    src = UploadSource(OneShot(b"abc"), "s.bin")  # type: ignore[arg-type]
    assert src.size is None and not src.replayable
    up = MultipartUpload(src)
    assert up.content_length is None and "Content-Length" not in up.headers()
    assert parse(b"".join(up), up.headers()["Content-Type"])["file"][1] == b"abc"
    with pytest.raises(RuntimeError):
        list(src.chunks())


def test_a_file_that_grows_during_upload_fails_instead_of_corrupting(tmp_path: Path) -> None:
    path = tmp_path / "g.bin"
    path.write_bytes(b"1234")
    up = MultipartUpload(UploadSource(path))
    path.write_bytes(b"123456789")
    with pytest.raises(OSError, match="changed size"):
        list(up)


def test_sink_rewinds_for_a_retry() -> None:
    buf = io.BytesIO(b"keep")
    buf.seek(4)
    sink = RewindableSink(buf)
    copy_to_sink([b"partial"], sink)
    sink.rewind()
    d = copy_to_sink([b"full", b"body"], sink)
    assert buf.getvalue() == b"keepfullbody"
    assert d.bytes == 8 and d.sha256 == hashlib.sha256(b"fullbody").hexdigest()

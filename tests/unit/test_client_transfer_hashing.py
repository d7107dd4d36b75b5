"""copy_to_sink hashes exactly what it wrote, whichever way the pieces arrive and however the sink takes them.

The download path hands pieces over to a helper thread in batches (issue 3's throughput fix); these
tests pin the batching's edges: inline for small bodies, the last partial batch after the thread has
started, a raw sink that takes fewer bytes than offered, and no helper thread left behind on failure.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Iterator

import pytest

from hearth.api.transfer import CHUNK, RewindableSink, copy_to_sink


def sha_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sha256"]


@pytest.mark.parametrize(
    "sizes",
    [
        [],  # empty body
        [5, 0, 7],  # small: hashed inline, empty pieces skipped
        [CHUNK],  # exactly one batch
        [1 << 16] * 40 + [123],  # socket-sized pieces over 2.5 batches, a partial batch last
        [CHUNK + 1, 1, CHUNK - 1, 3 * CHUNK, 17],  # batches that do not line up with pieces
    ],
)
def test_digest_and_bytes_match_what_was_written(sizes: list[int]) -> None:
    pieces = [os.urandom(n) for n in sizes]
    buf = io.BytesIO()
    seen: list[int] = []
    d = copy_to_sink(pieces, RewindableSink(buf), on_chunk=seen.append)
    body = b"".join(pieces)
    assert buf.getvalue() == body
    assert d.bytes == len(body) and d.sha256 == hashlib.sha256(body).hexdigest()
    assert sum(seen) == len(body) and 0 not in seen
    assert not sha_threads()  # the helper thread, if any, has finished


class Trickle(io.RawIOBase):
    """A raw sink that accepts at most 1000 bytes per write, as a raw file or pipe may."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | memoryview) -> int:  # type: ignore[override]
        part = bytes(b[:1000])
        self.data += part
        return len(part)


def test_short_writes_are_completed() -> None:
    body = os.urandom(CHUNK * 2 + 4321)
    raw = Trickle()
    d = copy_to_sink([body[i : i + 70000] for i in range(0, len(body), 70000)], RewindableSink(raw))  # type: ignore[arg-type]
    assert bytes(raw.data) == body
    assert d.bytes == len(body) and d.sha256 == hashlib.sha256(body).hexdigest()


def test_a_failing_stream_leaves_no_hashing_thread() -> None:
    def broken() -> Iterator[bytes]:
        for _ in range(5):
            yield os.urandom(CHUNK)
        raise ConnectionError("dropped")

    sink = RewindableSink(io.BytesIO())
    with pytest.raises(ConnectionError):
        copy_to_sink(broken(), sink)
    assert sink.written == 5 * CHUNK  # the retry knows it must rewind
    assert not sha_threads()


def test_a_sink_that_stops_accepting_fails_loudly() -> None:
    class Full(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b: bytes | memoryview) -> int:  # type: ignore[override]
            return 0

    with pytest.raises(OSError, match="accepted 0 of"):
        copy_to_sink([b"abc"], RewindableSink(Full()))  # type: ignore[arg-type]

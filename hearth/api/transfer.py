"""Streaming file bodies: multipart uploads built chunk by chunk, downloads hashed on the way.

Container inputs and harvested outputs can be gigabytes; a worker must never hold one in memory.
``MultipartUpload`` yields the multipart/form-data body (preamble, the file in 1 MiB chunks,
epilogue) with an exact ``Content-Length`` when the size is known, so neither httpx nor the server
needs chunked encoding. It can replay itself for a retry when its source can be rewound.
``copy_to_sink`` writes a response body into a sink and computes its sha256 as it goes.
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20


@dataclass(frozen=True)
class Download:
    """What a download wrote: its size in bytes and the sha256 (hex) of exactly those bytes."""

    bytes: int
    sha256: str


def _quote(value: str) -> str:
    # As browsers and httpx do (HTML5 form encoding): '"', CR and LF percent-encoded, the rest as is.
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class UploadSource:
    """A file to upload: a path (reopened for every try) or a binary stream (rewound when seekable)."""

    def __init__(self, source: Path | str | BinaryIO, filename: str | None = None) -> None:
        self._path: Path | None = None
        self._stream: BinaryIO | None = None
        self._start = 0
        if isinstance(source, str | os.PathLike):
            self._path = Path(source)
            self.size: int | None = self._path.stat().st_size
            self.filename = filename or self._path.name
        else:
            self._stream = source
            self.filename = filename or Path(str(getattr(source, "name", "") or "upload.bin")).name
            self.size = None
            try:
                if source.seekable():
                    self._start = source.tell()
                    end = source.seek(0, io.SEEK_END)
                    source.seek(self._start)
                    self.size = end - self._start
            except (OSError, ValueError, AttributeError):
                self.size = None
        self._used = False

    @property
    def replayable(self) -> bool:
        """Whether a second try can send the same bytes again."""
        return self._path is not None or self.size is not None

    def chunks(self) -> Iterator[bytes]:
        """The file's bytes, from the start, in chunks of ``CHUNK``."""
        if self._path is not None:
            with self._path.open("rb") as fh:
                yield from iter(lambda: fh.read(CHUNK), b"")
            return
        assert self._stream is not None
        if self._used:
            if not self.replayable:
                raise RuntimeError("a non-seekable upload stream cannot be sent twice")
            self._stream.seek(self._start)
        self._used = True
        yield from iter(lambda: self._stream.read(CHUNK), b"")  # type: ignore[union-attr]


class MultipartUpload:
    """A ``multipart/form-data`` body: form fields first, then one file part, streamed."""

    def __init__(
        self,
        source: UploadSource,
        *,
        field: str = "file",
        fields: Iterable[tuple[str, str]] = (),
        content_type: str = "application/octet-stream",
        on_chunk: Callable[[int], None] | None = None,
    ) -> None:
        self.source = source
        self.boundary = uuid.uuid4().hex
        head = b"".join(
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quote(k)}"\r\n\r\n'.encode()
            + v.encode() + b"\r\n"
            for k, v in fields
        )
        head += (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quote(field)}"; '
            f'filename="{_quote(source.filename)}"\r\nContent-Type: {content_type}\r\n\r\n'
        ).encode()
        self._head = head
        self._tail = f"\r\n--{self.boundary}--\r\n".encode()
        self._on_chunk = on_chunk

    @property
    def content_length(self) -> int | None:
        if self.source.size is None:
            return None
        return len(self._head) + self.source.size + len(self._tail)

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": f"multipart/form-data; boundary={self.boundary}"}
        if self.content_length is not None:
            h["Content-Length"] = str(self.content_length)
        return h

    def __iter__(self) -> Iterator[bytes]:
        yield self._head
        sent = 0
        for chunk in self.source.chunks():
            sent += len(chunk)
            if self.source.size is not None and sent > self.source.size:
                # The file grew while being sent; a longer body than announced corrupts the request.
                raise OSError(f"{self.source.filename}: file changed size during upload")
            if self._on_chunk is not None:
                self._on_chunk(len(chunk))
            yield chunk
        if self.source.size is not None and sent != self.source.size:
            raise OSError(f"{self.source.filename}: file changed size during upload")
        yield self._tail


class RewindableSink:
    """A download sink that a retry can rewind to where the download started, if it is seekable."""

    def __init__(self, sink: BinaryIO) -> None:
        self.sink = sink
        self._start: int | None
        try:
            self._start = sink.tell() if sink.seekable() else None
        except (OSError, ValueError, AttributeError):
            self._start = None
        self.written = 0

    @property
    def rewindable(self) -> bool:
        return self.written == 0 or self._start is not None

    def write(self, chunk: bytes) -> None:
        """Write all of ``chunk``: a raw (unbuffered) sink may take fewer bytes than offered."""
        n = self.sink.write(chunk)
        if n is not None and n < len(chunk):
            view = memoryview(chunk)
            while n < len(chunk):
                more = self.sink.write(view[n:])
                if not more:
                    raise OSError(f"sink accepted {n} of {len(chunk)} bytes")
                n += more
        self.written += len(chunk)

    def rewind(self) -> None:
        if self.written == 0:
            return
        if self._start is None:
            raise RuntimeError("a non-seekable sink cannot be rewound")
        self.sink.seek(self._start)
        self.sink.truncate()
        self.written = 0


class _Hasher:
    """sha256 of a download, moved to a helper thread once the download proves big.

    sha256 (about 4 ms per MiB on a CPU without SHA extensions) costs more than receiving the
    bytes does, so on a fast link it sets the pace. hashlib releases the GIL, so a helper thread
    lets hashing overlap the socket reads when a core is free. The thread is started only after
    the first ``batch`` bytes: most downloads are small and are hashed inline, with no thread.
    Pieces are handed over in lists of about ``batch`` bytes, so the queue is touched once per
    MiB rather than once per 64 KiB socket read; the queue holds at most ``depth`` lists, so
    memory stays bounded (about ``depth`` x ``batch``) however slow hashing is.
    """

    def __init__(self, *, batch: int = CHUNK, depth: int = 8) -> None:
        self.digest = hashlib.sha256()
        self._batch = batch
        self._depth = depth
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._q: queue.Queue[list[bytes] | None] | None = None
        self._t: threading.Thread | None = None

    def _run(self) -> None:
        assert self._q is not None
        update = self.digest.update
        while (pieces := self._q.get()) is not None:
            for piece in pieces:
                update(piece)

    def update(self, chunk: bytes) -> None:
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        if self._pending_bytes >= self._batch:
            if self._q is None:
                self._q = queue.Queue(maxsize=self._depth)
                self._t = threading.Thread(target=self._run, name="sha256", daemon=True)
                self._t.start()
            self._q.put(self._pending)
            self._pending = []
            self._pending_bytes = 0

    def hexdigest(self) -> str:
        if self._q is None:
            for piece in self._pending:
                self.digest.update(piece)
        elif self._pending:
            self._q.put(self._pending)
        self._pending = []
        self.close()
        return self.digest.hexdigest()

    def close(self) -> None:
        if self._t is not None and self._t.is_alive():
            assert self._q is not None
            self._q.put(None)
            self._t.join()


def copy_to_sink(
    chunks: Iterable[bytes], sink: RewindableSink, on_chunk: Callable[[int], None] | None = None
) -> Download:
    """Write ``chunks`` into ``sink``, hashing exactly what was written.

    ``chunks`` are best taken as the transport delivers them (``response.iter_bytes()`` without a
    chunk size): re-chunking them into fixed sizes copies every byte once more for nothing.
    """
    digest = _Hasher()
    total = 0
    try:
        for chunk in chunks:
            if not chunk:
                continue
            sink.write(chunk)
            digest.update(chunk)
            total += len(chunk)
            if on_chunk is not None:
                on_chunk(len(chunk))
        return Download(bytes=total, sha256=digest.hexdigest())
    finally:
        digest.close()

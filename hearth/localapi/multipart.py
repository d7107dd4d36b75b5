"""Streaming multipart/form-data parsing straight into the store's temp dir.

Why not ``request.form()``: Starlette spools each file to a temp file elsewhere and the store would then
copy it again; here the one ``file`` part is written as it arrives into a path the store then renames
into place, so a 1 GiB upload costs one write and bounded memory (python-multipart's parser is
incremental; uvicorn applies back-pressure on the socket).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from hearth.errors import BadRequest

MAX_FIELD_BYTES = 1 << 20
MAX_PARTS = 100


@dataclass
class Upload:
    """What a multipart request carried: small text fields, and the ``file`` part on disk (if any)."""

    fields: dict[str, str] = field(default_factory=dict)
    tmp: Path | None = None
    filename: str | None = None
    size: int = 0

    def discard(self) -> None:
        if self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                self.tmp.unlink()
            self.tmp = None


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def boundary_of(content_type: str) -> bytes:
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("Invalid multipart/form-data body: missing boundary in the Content-Type header.", status=400)
    return boundary


async def parse_multipart(
    content_type: str,
    stream: AsyncIterator[bytes],
    new_tmp: Callable[[], Path],
    *,
    file_field: str = "file",
    max_file_bytes: int | None = None,
) -> Upload:
    """Parse the body; the first part named ``file_field`` with a filename goes to ``new_tmp()``."""
    boundary = boundary_of(content_type)
    upload = Upload()
    state: dict[str, object] = {}
    headers: list[tuple[bytes, bytes]] = []
    header_name = bytearray()
    header_value = bytearray()
    field_buf = bytearray()
    out: IO[bytes] | None = None
    parts = 0
    # What the current part is: "file" (ours), "skip" (another file part), or "field".
    current: dict[str, str | None] = {"kind": None, "name": None}

    def on_part_begin() -> None:
        nonlocal parts
        parts += 1
        if parts > MAX_PARTS:
            raise BadRequest(f"Invalid multipart/form-data body: more than {MAX_PARTS} parts.", status=400)
        headers.clear()
        field_buf.clear()
        current["kind"] = current["name"] = None

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers.append((bytes(header_name).lower(), bytes(header_value)))
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        nonlocal out
        disposition = next((v for k, v in headers if k == b"content-disposition"), b"")
        _, options = parse_options_header(disposition)
        name = _decode(options[b"name"]) if b"name" in options else None
        if name is None:
            raise BadRequest("Invalid multipart/form-data body: a part has no name.", status=400)
        current["name"] = name
        if b"filename" in options:
            if name == file_field and upload.tmp is None:
                upload.filename = _decode(options[b"filename"])
                upload.tmp = new_tmp()
                out = upload.tmp.open("wb")
                current["kind"] = "file"
            else:
                current["kind"] = "skip"
        else:
            current["kind"] = "field"

    def on_part_data(data: bytes, start: int, end: int) -> None:
        kind = current["kind"]
        if kind == "file":
            assert out is not None
            upload.size += end - start
            if max_file_bytes is not None and upload.size > max_file_bytes:
                raise BadRequest(
                    f"File is too large: the maximum size is {max_file_bytes} bytes.", status=400, param=file_field
                )
            out.write(data[start:end])
        elif kind == "field":
            if len(field_buf) + (end - start) > MAX_FIELD_BYTES:
                raise BadRequest(
                    f"Invalid '{current['name']}': field larger than {MAX_FIELD_BYTES} bytes.",
                    status=400,
                    param=current["name"],
                )
            field_buf.extend(data[start:end])

    def on_part_end() -> None:
        nonlocal out
        if current["kind"] == "file" and out is not None:
            out.close()
            out = None
            state["file_done"] = True
        elif current["kind"] == "field" and current["name"] is not None:
            upload.fields.setdefault(current["name"], _decode(bytes(field_buf)))

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        async for chunk in stream:
            parser.write(chunk)
        parser.finalize()
        if upload.tmp is not None and not state.get("file_done"):
            raise BadRequest("Invalid multipart/form-data body: the file part is incomplete.", status=400)
    except (FormParserError, ValueError):
        upload.discard()
        raise BadRequest("Invalid multipart/form-data body.", status=400) from None
    except BaseException:
        upload.discard()
        raise
    finally:
        if out is not None:
            out.close()
    return upload

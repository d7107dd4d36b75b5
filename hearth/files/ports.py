"""The few Containers-client calls harvest and input sync need, as a Protocol.

``hearth.api.client.ContainersClient`` satisfies it; unit tests pass a small in-memory stand-in so
the pure logic (filters, resume, manifests) runs without a server. Integration tests always use the
real client against the real local API.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from hearth.api.models import Container, ContainerFile, FileObject


class DownloadResult(Protocol):
    """What the client reports about a download: bytes written to the sink and their sha256 (hex)."""

    @property
    def bytes(self) -> int: ...

    @property
    def sha256(self) -> str: ...


class FilesClient(Protocol):
    def list_files(self, container_id: str, *, order: str = ..., page_size: int = ...) -> Iterator[ContainerFile]: ...

    def download_file(self, container_id: str, file_id: str, sink: BinaryIO) -> DownloadResult: ...

    def upload_file(
        self, container_id: str, source: Path | BinaryIO, *, filename: str | None = ...
    ) -> ContainerFile: ...

    def add_file_by_id(self, container_id: str, file_id: str) -> ContainerFile: ...

    def retrieve_container(self, container_id: str) -> Container: ...

    def retrieve_input_file(self, file_id: str) -> FileObject: ...

"""The input-sync plan: which files every container of a pool gets, and putting them in, once.

``resolve_inputs`` turns a pool's input specs (local paths and globs, fsspec URLs, Files-API ids)
into concrete ``InputItem``s with their destination names, sizes and sha256 (hashed in chunks, never
loaded whole). ``inputs_digest`` summarises them so the pool can tell when a container's inputs are
stale (a changed byte, a renamed destination, another file id all change it).

``sync_inputs`` makes a container hold those items: Files-API ids server-side (or at create time,
see ``split_file_ids``), everything else streamed as multipart uploads. It is idempotent, since a
provisioning task may run twice: what is already there (same name, same size) is not sent again.
It ends by verifying every item is present with the right size.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol
from urllib.parse import urlsplit

import fsspec

from hearth.api.models import ContainerFile
from hearth.errors import ConfigError, HearthError, InputsIncomplete, StorageError, UnsafePath
from hearth.files.paths import check_segment
from hearth.files.ports import FilesClient

InputKind = Literal["local", "url", "file_id"]
HASH_CHUNK = 1 << 20
READ_BLOCK_SIZE = 8 << 20  # fsspec read-ahead per open URL (s3fs would otherwise buffer 50 MiB)
# An upload's ``<hex>-`` prefix, or the ``<file_id>-`` of a server-side copy (SEMANTICS §2.5).
_UPLOAD_PREFIX = re.compile(r"^(?:[0-9a-fA-F]+|file-[A-Za-z0-9_]+)-")


class InputSpecLike(Protocol):
    """What ``settings.pools.InputSpec`` offers: exactly one of path, url, file_id; ``as_`` renames."""

    @property
    def path(self) -> str | None: ...

    @property
    def url(self) -> str | None: ...

    @property
    def file_id(self) -> str | None: ...

    @property
    def as_(self) -> str | None: ...


@dataclass(frozen=True)
class InputItem:
    """One file a container must hold. ``dest_name`` is None only for a file id (it keeps its name)."""

    kind: InputKind
    source: str  # absolute local path, URL, or file id
    dest_name: str | None
    size: int | None = None
    sha256: str | None = None


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _dest_name(name: str, where: str) -> str:
    if not name or name.strip() != name or "/" in name:
        raise ConfigError(f"destination name {name!r} must be a plain file name", where=where)
    try:
        check_segment(name)
    except UnsafePath as exc:
        raise ConfigError(f"destination name {name!r}: {exc}", where=where) from None
    return name


def _hash_stream(fh: BinaryIO) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    for chunk in iter(lambda: fh.read(HASH_CHUNK), b""):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def _open_url(url: str, options: Mapping[str, Any]) -> BinaryIO:
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs.open(path, "rb", block_size=READ_BLOCK_SIZE)


def open_input_url(url: str, options: Mapping[str, Any]) -> BinaryIO:
    """A URL input opened for reading, streamed (what staging uploads from)."""
    return _open_url(url, options)


def _local_items(spec: InputSpecLike, raw: str, base_dir: Path, where: str) -> list[InputItem]:
    pattern = os.path.normpath(os.path.join(base_dir, os.path.expanduser(raw)))
    if _is_glob(pattern):
        matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        if not matches:
            raise ConfigError(f"{raw!r} matches no file", where=where)
    elif os.path.isdir(pattern):
        raise ConfigError(f"{raw!r} is a directory: use a glob such as {raw}/*", where=where)
    elif not os.path.isfile(pattern):
        raise ConfigError(f"{raw!r} does not exist", where=where)
    else:
        matches = [pattern]
    if spec.as_ is not None and len(matches) > 1:
        raise ConfigError(f"`as` names one file but {raw!r} matches {len(matches)}", where=where)
    items = []
    for m in matches:
        try:
            with open(m, "rb") as fh:
                size, sha = _hash_stream(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read {m!r}: {exc.strerror}", where=where) from None
        items.append(InputItem("local", m, _dest_name(spec.as_ or os.path.basename(m), where), size, sha))
    return items


def _url_items(spec: InputSpecLike, url: str, where: str, options: Mapping[str, Any]) -> list[InputItem]:
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
        if _is_glob(path):
            found = sorted(fs.glob(path))
            if not found:
                raise ConfigError(f"{url!r} matches nothing", where=where)
            proto = url.split("://", 1)[0] if "://" in url else None
            urls = [fs.unstrip_protocol(p) if proto else p for p in found]
        else:
            urls = [url]
        if spec.as_ is not None and len(urls) > 1:
            raise ConfigError(f"`as` names one file but {url!r} matches {len(urls)}", where=where)
        items = []
        for u in urls:
            with _open_url(u, options) as fh:
                size, sha = _hash_stream(fh)
            name = spec.as_ or posixpath.basename(urlsplit(u).path.rstrip("/"))
            items.append(InputItem("url", u, _dest_name(name, where), size, sha))
        return items
    except HearthError:
        raise
    except FileNotFoundError:
        raise ConfigError(f"{url!r} does not exist", where=where) from None
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"{url!r}: {exc}", where=where) from None
    except Exception as exc:  # a store that is down now may be up on the next try
        raise StorageError(f"{where}: reading {url!r} failed: {type(exc).__name__}: {str(exc)[:200]}") from exc


def resolve_inputs(
    specs: Iterable[InputSpecLike],
    base_dir: Path | str,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> list[InputItem]:
    """Expand globs (sorted), hash local and URL files, name each destination; ``ConfigError`` on bad input."""
    base = Path(base_dir)
    options = dict(storage_options or {})
    items: list[InputItem] = []
    for i, spec in enumerate(specs):
        where = f"inputs[{i}]"
        given = [k for k in ("path", "url", "file_id") if getattr(spec, k, None) is not None]
        if len(given) != 1:
            raise ConfigError(f"give exactly one of path, url, file_id (got {', '.join(given) or 'none'})", where=where)
        if spec.path is not None:
            items.extend(_local_items(spec, spec.path, base, where))
        elif spec.url is not None:
            items.extend(_url_items(spec, spec.url, where, options))
        else:
            assert spec.file_id is not None
            if spec.as_ is not None:
                raise ConfigError("a Files-API copy keeps the file's own name: `as` cannot rename it", where=where)
            items.append(InputItem("file_id", spec.file_id, None))
    seen: dict[str, str] = {}
    for item in items:
        if item.dest_name is None:
            continue
        if item.dest_name in seen:
            raise ConfigError(
                f"two inputs ({seen[item.dest_name]!r} and {item.source!r}) would both be {item.dest_name!r}",
                where="inputs",
            )
        seen[item.dest_name] = item.source
    return items


def inputs_digest(items: Iterable[InputItem]) -> str:
    """A stable hash of what a container holds: destination names, content hashes, file ids.

    Independent of the order of the specs and of where a local file lives: only what ends up in
    the container counts.
    """
    rows = sorted(
        [item.kind if item.kind == "file_id" else "content", item.dest_name or "", item.sha256 or item.source]
        for item in items
    )
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def split_file_ids(items: Sequence[InputItem]) -> tuple[list[str], list[InputItem]]:
    """File ids a create request can carry (``file_ids=…``), and the items still to upload."""
    ids = [i.source for i in items if i.kind == "file_id"]
    rest = [i for i in items if i.kind != "file_id"]
    return ids, rest


def _matches_dest(f: ContainerFile, name: str) -> bool:
    """``/mnt/data/<name>`` or an upload's ``/mnt/data/<hex>-<name>``."""
    base = f.path.rsplit("/", 1)[-1]
    return base == name or (base.endswith("-" + name) and _UPLOAD_PREFIX.match(base[: -len(name)]) is not None)


@dataclass(frozen=True)
class _Expect:
    """What an item looks like once in the container: a file name and (when known) a size."""

    names: tuple[str, ...]
    size: int | None
    file_id: str | None = None


def _expectation(client: FilesClient, item: InputItem) -> _Expect:
    if item.kind != "file_id":
        assert item.dest_name is not None
        return _Expect((item.dest_name,), item.size)
    # A Files-API copy lands as /mnt/data/<filename> (or <file_id>-<filename> on some backends).
    meta = client.retrieve_input_file(item.source)
    return _Expect((meta.filename, f"{item.source}-{meta.filename}"), meta.bytes, item.source)


def _present(files: Sequence[ContainerFile], expect: _Expect) -> ContainerFile | None:
    for f in files:
        if f.source == "assistant":
            continue  # code may write a file with the same name; it is not our input
        if not any(_matches_dest(f, n) for n in expect.names):
            continue
        if expect.size is None or f.bytes is None or f.bytes == expect.size:
            return f
    return None


def sync_inputs(
    client: FilesClient,
    container_id: str,
    items: Sequence[InputItem],
    *,
    storage_options: Mapping[str, Any] | None = None,
    file_ids_at_create: bool = False,
) -> list[ContainerFile]:
    """Put ``items`` into the container (skipping what is already there), then verify; files in item order.

    With ``file_ids_at_create`` the file ids were given to the create request, so they are only
    verified here, not added. Raises ``InputsIncomplete`` (temporary) when verification fails.
    """
    options = dict(storage_options or {})
    expects = [_expectation(client, item) for item in items]
    existing = list(client.list_files(container_id, order="asc"))
    for item, expect in zip(items, expects, strict=True):
        if _present(existing, expect) is not None:
            continue
        if item.kind == "file_id":
            if file_ids_at_create:
                continue  # verified below: a create that dropped it is an error, not something to patch
            existing.append(client.add_file_by_id(container_id, item.source))
        elif item.kind == "local":
            existing.append(client.upload_file(container_id, Path(item.source), filename=item.dest_name))
        else:
            try:
                with _open_url(item.source, options) as fh:
                    existing.append(client.upload_file(container_id, fh, filename=item.dest_name))
            except HearthError:
                raise
            except Exception as exc:
                raise StorageError(f"reading {item.source!r} failed: {type(exc).__name__}: {str(exc)[:200]}") from exc

    final = list(client.list_files(container_id, order="asc"))
    found: list[ContainerFile] = []
    missing: list[str] = []
    for item, expect in zip(items, expects, strict=True):
        f = _present(final, expect)
        if f is None or f in found:
            missing.append(item.dest_name or item.source)
        else:
            found.append(f)
    if missing:
        raise InputsIncomplete(f"container {container_id} lacks inputs after sync: {', '.join(missing)}")
    return found


# --- which container files are inputs ---------------------------------------------------

_UPLOAD_NAME_PREFIX = re.compile(r"^[0-9a-f]{32}-(?=.)")
_GLOB_SPECIAL = re.compile(r"([*?\[])")
_COPY_PREFIX = re.compile(r"^file-[A-Za-z0-9_]+-(?=.)")


def restore_name(container_path: str) -> str:
    """The name a file gets back on restore: its base name, without an upload's 32-hex prefix."""
    base = container_path.rstrip("/").rsplit("/", 1)[-1]
    return _UPLOAD_NAME_PREFIX.sub("", base, count=1) or base


def glob_literal(path: str) -> str:
    return _GLOB_SPECIAL.sub(r"[\1]", path)


def input_paths(files: list[ContainerFile], items: list[InputItem]) -> list[str]:
    """Container paths (relative to /mnt/data) of the pool's inputs: uploads named and sized like one."""
    sizes: dict[str, int | None] = {i.dest_name: i.size for i in items if i.dest_name}
    out: list[str] = []
    for f in files:
        if f.source == "assistant" or not f.path.startswith("/mnt/data/"):
            continue
        name = restore_name(f.path)
        if name not in sizes:  # a server-side copy may be /mnt/data/<file_id>-<name> (hearth.files.staging)
            name = _COPY_PREFIX.sub("", name, count=1)
        if name in sizes and (sizes[name] is None or f.bytes is None or sizes[name] == f.bytes):
            out.append(f.path[len("/mnt/data/") :])
    return out

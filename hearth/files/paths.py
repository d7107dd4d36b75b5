"""Container paths are untrusted input: map them to storage keys that can never escape a target.

Code running inside a container chooses its file names, and a backend may report them raw
(``/mnt/data/../../etc/passwd``, ``/mnt/data//etc``, ``%2e%2e``, fullwidth dots, NUL). Harvest
writes each file under a per-container root, so a key must stay strictly below that root on every
store (POSIX directories, S3 keys, Windows shares).

Two kinds of trouble are told apart:

* **Escapes** — anything that is, or could be decoded or normalised by someone downstream into, a
  traversal (``..``, empty segments, absolute paths outside ``/mnt/data``, backslashes, percent
  encodings of those, NUL, Unicode lookalikes of ``.`` and ``/``). These raise ``UnsafePath``; the
  harvest records the file as skipped with the reason. Nothing is guessed.
* **Names a store cannot hold** (control characters, ``:*?"<>|``, Windows reserved names, trailing
  dots and spaces, segments longer than a file system allows) are mapped *reversibly*: exactly the
  offending characters are percent-encoded (``%`` itself is always encoded, so decoding is
  unambiguous), and an over-long segment is split into several key segments, every one but the last
  ending in a bare ``%`` (which no encoded segment can otherwise end with). ``key_to_container_path``
  undoes both, so a key always names exactly one container path.

A key segment never contains ``%`` followed by anything but two hex digits or the end of the
segment, so ``TEMP_MARKER`` (``%tmp``) can mark temporary names that no key can collide with.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote

from hearth.errors import UnsafePath

CONTAINER_ROOT = "/mnt/data/"

# Longest encoded key segment, in UTF-8 bytes. File systems allow 255; the margin leaves room for
# the temporary-name suffix harvest adds next to a file before renaming it into place.
MAX_SEGMENT_BYTES = 200

# Appears in temporary object names only; impossible in a key (``%t`` is not an escape).
TEMP_MARKER = "%tmp"

# Top-level names harvest keeps for itself at a target root.
RESERVED_ROOT_NAMES = frozenset({"manifest.json"})

# Characters Windows/SMB/most object-store tools cannot hold in a name, plus the separators and ``%``.
_ALWAYS_ENCODED = frozenset('%:*?"<>|/\\')
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(\..*)?$", re.IGNORECASE)

# Characters that render as, or normalise to, a dot or a slash; NFKC already folds many of them
# (fullwidth dot and solidus, one-dot leader, small full stop), these are the ones it leaves alone.
_SLASH_LIKE = frozenset("\u2215\u2044\u29f8\u29f9\u2571\u2572\u29f5\u3033\u30fb\uff3c\ufe68\u2216\u244a")
_DOT_LIKE = frozenset("\u2024\ufe52\uff0e\u3002\uff61\u0701\u0702\u2e31\u00b7\u2027\u16eb\u30fb")

_MAX_DECODE_ROUNDS = 4


def _is_control(ch: str) -> bool:
    cat = unicodedata.category(ch)
    # Cc: C0/C1 controls; Zl/Zp: line/paragraph separators (break listings); Cs: lone surrogates.
    return cat in ("Cc", "Zl", "Zp", "Cs")


def _encode_char(ch: str) -> str:
    return "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))


def _skeleton(segment: str) -> str:
    """What a lenient consumer might turn ``segment`` into: percent-decoded, NFKC, lookalikes folded."""
    decoded = segment
    for _ in range(_MAX_DECODE_ROUNDS):
        step = unquote(decoded, errors="replace")
        if step == decoded:
            break
        decoded = step
    else:
        if unquote(decoded, errors="replace") != decoded:
            raise UnsafePath(f"path segment is percent-encoded more than {_MAX_DECODE_ROUNDS} times")
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFC", decoded))
    return "".join("/" if c in _SLASH_LIKE else "." if c in _DOT_LIKE else c for c in folded)


def check_segment(segment: str) -> None:
    """Raise ``UnsafePath`` if ``segment`` is, or could be read as, a traversal or a separator."""
    if segment == "":
        raise UnsafePath("empty path segment (// or a trailing /)")
    if "\x00" in segment:
        raise UnsafePath("NUL in path")
    if "\\" in segment:
        raise UnsafePath("backslash in path")
    if any(unicodedata.category(c) == "Cs" for c in segment):
        raise UnsafePath("lone surrogate in path (not valid Unicode)")
    skel = _skeleton(segment)
    if "/" in skel or "\\" in skel or "\x00" in skel:
        raise UnsafePath(f"path segment {segment!r} decodes to a separator")
    if skel.strip(" .") == "" and "." in skel:
        raise UnsafePath(f"path segment {segment!r} is a dot segment")
    if skel.strip() == "":
        raise UnsafePath(f"path segment {segment!r} is blank")


def encode_segment(segment: str, *, top_level: bool = False) -> str:
    """Percent-encode exactly the characters of ``segment`` a store cannot hold (no length limit)."""
    out = [_encode_char(c) if c in _ALWAYS_ENCODED or _is_control(c) else c for c in segment]
    if out and out[-1] in (".", " "):
        out[-1] = _encode_char(out[-1])  # Windows silently drops trailing dots and spaces
    if out and (_WINDOWS_RESERVED.match(segment) or (top_level and segment.lower() in RESERVED_ROOT_NAMES)):
        out[0] = _encode_char(segment[0])
    return "".join(out)


def _split_segment(segment: str, *, top_level: bool) -> list[str]:
    """Encode ``segment``; if too long, as several key segments chained by a trailing bare ``%``."""
    whole = encode_segment(segment, top_level=top_level)
    if len(whole.encode("utf-8")) <= MAX_SEGMENT_BYTES:
        return [whole]
    # Budget per piece: the marker, plus the few bytes that trailing/reserved fix-ups may add.
    budget = MAX_SEGMENT_BYTES - 1 - 6
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for ch in segment:
        n = len(encode_segment(ch).encode("utf-8"))
        if current and size + n > budget:
            pieces.append("".join(current))
            current, size = [], 0
        current.append(ch)
        size += n
    pieces.append("".join(current))
    encoded = [encode_segment(p, top_level=top_level and i == 0) for i, p in enumerate(pieces)]
    return [p + "%" for p in encoded[:-1]] + [encoded[-1]]


def relative_container_path(path: str) -> str:
    """The part of ``path`` after ``/mnt/data/``, validated; raises ``UnsafePath``."""
    if not isinstance(path, str) or not path:
        raise UnsafePath("empty container path")
    if "\x00" in path:
        raise UnsafePath("NUL in path")
    if "\\" in path:
        raise UnsafePath("backslash in path")
    if not path.startswith(CONTAINER_ROOT):
        raise UnsafePath(f"path is not under {CONTAINER_ROOT}")
    rel = path[len(CONTAINER_ROOT) :]
    for segment in rel.split("/"):
        check_segment(segment)
    return rel


def container_path_to_key(path: str) -> str:
    """Map a container path (``/mnt/data/a/b.png``) to a storage key (``a/b.png``); ``UnsafePath`` if unsafe."""
    rel = relative_container_path(path)
    parts: list[str] = []
    for i, segment in enumerate(rel.split("/")):
        parts.extend(_split_segment(segment, top_level=i == 0))
    return "/".join(parts)


def key_to_container_path(key: str) -> str:
    """The inverse of ``container_path_to_key``."""
    segments: list[str] = []
    pending = ""
    for piece in key.split("/"):
        if piece.endswith("%"):
            pending += piece[:-1]
            continue
        segments.append(unquote(pending + piece, errors="strict"))
        pending = ""
    if pending:
        raise ValueError(f"key {key!r} ends inside a split segment")
    return CONTAINER_ROOT + "/".join(segments)


def safe_name(value: str) -> str:
    """A single key segment for any string (placeholder values, destination names); never a traversal."""
    encoded = encode_segment(value)
    if encoded == "" or encoded.strip(".") == "":
        encoded = "".join(_encode_char(c) for c in value) or "_"
    return encoded

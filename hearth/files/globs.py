"""Include/exclude globs over container paths, with ``**`` crossing directories.

Patterns match the path relative to ``/mnt/data/`` (``charts/q1.png``). ``*`` and ``?`` stay within
one segment, ``**`` spans any number of segments (``**/`` may also match none, so ``**/*.png``
matches ``a.png`` and ``x/y/a.png``), ``[...]`` is a character class as in ``fnmatch``. Matching is
case-sensitive, like the container's file system.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache


@lru_cache(maxsize=256)
def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile one glob into an anchored regular expression."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                j = i + 2
                if j < n and pattern[j] == "/":
                    out.append("(?:.*/)?")  # zero or more whole directories
                    j += 1
                else:
                    out.append(".*")
                i = j
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))  # an unclosed bracket is a literal, as in fnmatch
            else:
                body = pattern[i + 1 : j]
                negate = body[:1] in ("!", "^")
                if negate:
                    body = body[1:]
                body = "".join("\\" + ch if ch in "\\[&~|" else ch for ch in body)
                out.append(f"[^/{body}]" if negate else f"[{body}]")
                i = j + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def glob_match(path: str, pattern: str) -> bool:
    return glob_to_regex(pattern).match(path) is not None


def selected(path: str, include: Iterable[str], exclude: Iterable[str]) -> bool:
    """True when ``path`` matches some include (or there are none) and no exclude."""
    inc = tuple(include)
    if inc and not any(glob_match(path, p) for p in inc):
        return False
    return not any(glob_match(path, p) for p in exclude)

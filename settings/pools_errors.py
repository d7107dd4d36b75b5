"""The error a bad pools file raises: every problem at once, each with its place.

Lives in ``settings`` (which imports nothing of Hearth's) so the loader, the models and the CLI share
one type; ``hearth`` translates it into ``hearth.errors.ConfigError`` at its boundary. Messages never
carry the values of secrets: they name fields and environment variables, not what they hold.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class PoolsFileIssue:
    """One problem in a pools file. ``line``/``column`` are 1-based; ``None`` where unknown."""

    message: str
    file: str | None = None
    line: int | None = None
    column: int | None = None
    pool: str | None = None
    field: str | None = None  # dotted path inside the pool (or the file when ``pool`` is None)

    @property
    def place(self) -> str:
        """``file:line:column`` as editors and compilers print it, as far as it is known."""
        parts = [self.file or "<pools>"]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)

    def __str__(self) -> str:
        where = []
        if self.pool is not None:
            where.append(f"pool {self.pool!r}")
        if self.field:
            where.append(self.field)
        scope = f" [{', '.join(where)}]" if where else ""
        return f"{self.place}{scope}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PoolsFileError(Exception):
    """A pools file that cannot be used; ``errors`` holds every problem found, in file order."""

    def __init__(self, errors: Iterable[PoolsFileIssue]) -> None:
        self.errors: list[PoolsFileIssue] = list(errors)
        super().__init__(self._render())

    def _render(self) -> str:
        n = len(self.errors)
        head = f"{n} problem{'s' if n != 1 else ''} in the pools file"
        return head + ":\n" + "\n".join(f"  {issue}" for issue in self.errors)

    def __str__(self) -> str:
        return self._render()

"""The transition feed: every record state change, in order, read from where the reader last stopped.

Sampling the records and diffing two samples misses what happens between them (a lease released
within one refresh shows as a record that is simply "gone"). So each Lua script that changes a
record's state also appends ``(pool, name, from, to)`` to the capped stream ``{prefix}:events`` in
the same atomic step (``scripts.PRELUDE``'s ``emit``): nothing that changed state can be missing
from the stream. A reader keeps the id of the last entry it saw and asks for everything after it.

The stream is capped at about ``scripts.EVENTS_MAXLEN`` entries; a reader that falls further behind
than that loses the oldest, and is told so (``StateFeed.read`` sets ``missed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hearth.pool.scripts import FORGOTTEN
from hearth.pool.store import PoolStore, _text

START = "0-0"  # before every entry


@dataclass(frozen=True)
class StateEvent:
    """One state change. ``from_state`` is None for a new record; ``to_state`` is a State value or
    ``"forgotten"`` (the record was deleted)."""

    id: str
    pool: str
    name: str
    from_state: str | None
    to_state: str

    @property
    def at(self) -> float:
        """When Redis wrote it (its clock, epoch seconds): the stream id's millisecond part."""
        return int(self.id.partition("-")[0]) / 1000.0

    def describe(self) -> str:
        if self.from_state is None:
            return f"{self.pool}: {self.name} {self.to_state}"
        if self.to_state == FORGOTTEN:
            return f"{self.pool}: {self.name} gone"
        return f"{self.pool}: {self.name} {self.from_state} -> {self.to_state}"


class StateFeed:
    """Reads ``{prefix}:events`` after ``last_id`` (default: only what is written from now on)."""

    def __init__(self, store: PoolStore, *, last_id: str | None = None, batch: int = 500) -> None:
        self.store = store
        self.key = store.key("events")
        self.batch = batch
        self.last_id = last_id if last_id is not None else self.end_id()
        self.missed = False  # set when entries after last_id were trimmed before they were read

    def __repr__(self) -> str:
        return f"StateFeed(key={self.key!r}, last_id={self.last_id!r})"

    def end_id(self) -> str:
        """The id of the newest entry (START when there is none): a reader from here sees only new ones."""
        newest = self.store._cmd(self.store.redis.xrevrange, self.key, count=1)
        return _text(newest[0][0]) if newest else START

    def read(self) -> list[StateEvent]:
        """Every entry after ``last_id``, oldest first; moves ``last_id`` past them."""
        events: list[StateEvent] = []
        while True:
            reply: Any = self.store._cmd(self.store.redis.xread, {self.key: self.last_id}, count=self.batch)
            entries = reply[0][1] if reply else []
            if not entries:
                return events
            first = _text(entries[0][0])
            if not events and self.last_id != START and not self._contiguous(first):
                self.missed = True
            for raw_id, fields in entries:
                f = {_text(k): _text(v) for k, v in fields.items()}
                events.append(StateEvent(_text(raw_id), f.get("pool", "?"), f.get("name", "?"),
                                         f.get("from") or None, f.get("to", "?")))
            self.last_id = _text(entries[-1][0])
            if len(entries) < self.batch:
                return events

    def _contiguous(self, first: str) -> bool:
        # The entry right after last_id still exists when last_id itself does (XRANGE from last_id
        # inclusive); if last_id was trimmed away, something between it and ``first`` may be lost.
        here = self.store._cmd(self.store.redis.xrange, self.key, min=self.last_id, max=first, count=1)
        return bool(here) and _text(here[0][0]) == self.last_id


__all__ = ["START", "StateEvent", "StateFeed"]

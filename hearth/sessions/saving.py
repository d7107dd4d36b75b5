"""Saving a session container's files to its harvest target, and remembering what is saved already.

Every save of a session container (after a lease, after a model response, the live save every
period, the last one at the end) goes through ``save_current``: the pool's harvest rules over every
source minus the pool's own inputs, into the one target pinned on the container's record, under the
container's harvest lock. After each save the ids the container listed (less those whose copy
failed) are remembered in Redis (``SavedState`` at ``<prefix>:session:<hash>:saved``), so the live
save can tell "nothing new" from one listing, newest first, that stops at the first id it knows
(``scan_new``): one cheap request per active session per period.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field

from hearth.api.models import ContainerFile
from hearth.errors import Conflict, ContainerExpired, NotFound
from hearth.files.harvest import HarvestReport
from hearth.files.lock import TokenFactory
from hearth.files.manifest import SkipReason
from hearth.files.ports import FilesClient
from hearth.files.storage import StorageTarget
from hearth.operations import all_but_inputs_policy, harvest_lock, harvest_under
from hearth.pool.model import State
from hearth.runtime import Runtime
from hearth.sessions.records import RecordStore, SessionRecord

SCAN_PAGE = 20  # files per page of the live save's listing: the newest few are all it usually reads


@dataclass
class SavedState:
    """Which files of the session's current container are saved (or deliberately skipped) already."""

    container_id: str | None = None
    known: set[str] = field(default_factory=set)
    retry: bool = False  # the last save had failures: the next live save harvests whatever the listing says

    def to_json(self) -> str:
        return json.dumps({"container_id": self.container_id, "known": sorted(self.known), "retry": self.retry})

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> SavedState:
        if raw is None:
            return cls()
        data = json.loads(raw)
        return cls(container_id=data.get("container_id"), known=set(data.get("known") or ()),
                   retry=bool(data.get("retry")))

    def of(self, container_id: str) -> SavedState:
        """This state if it is about ``container_id``, else a fresh one (a new container knows nothing)."""
        return self if self.container_id == container_id else SavedState(container_id=container_id)


def load_state(records: RecordStore, sid: str) -> SavedState:
    return SavedState.from_json(records._cmd(records.rt.redis.get, records.key(sid, "saved")))


def store_state(records: RecordStore, sid: str, state: SavedState) -> None:
    records._cmd(records.rt.redis.set, records.key(sid, "saved"), state.to_json(), ex=records.retention)


def scan_new(client: FilesClient, container_id: str, known: set[str], *, page_size: int = SCAN_PAGE
             ) -> list[ContainerFile]:
    """The container's files newer than the newest one in ``known``: a listing newest first that stops there.

    ``created_at`` is whole seconds and the order within one second is the backend's, so the files of
    the second of the first known one are read to the end before stopping.
    """
    new: list[ContainerFile] = []
    stop_at: int | None = None
    for f in client.list_files(container_id, order="desc", page_size=page_size):
        if stop_at is not None and f.created_at < stop_at:
            break
        if f.id in known:
            if stop_at is None:
                stop_at = f.created_at
            continue
        new.append(f)
    return new


def save_current(
    rt: Runtime, records: RecordStore, rec: SessionRecord, *, wait: float = 0.0, tokens: TokenFactory | None = None,
) -> HarvestReport | None:
    """Copy the session container's files (outputs and uploads) to its recorded target; None when it has none.

    Under the container's harvest lock (``Busy`` when another harvest keeps it ``wait`` s). Remembers
    what is saved, for the live save's next look.
    """
    here = rec.current
    if here is None:
        return None
    try:
        files = list(rt.client.list_files(here.container_id, order="asc"))
    except (ContainerExpired, NotFound):
        return None
    target = StorageTarget.from_url(here.target, clock=rt.clock)
    with harvest_lock(rt, here.container_id, wait=wait, tokens=tokens) as lock:
        report = harvest_under(rt, lock, here.container_id, target, all_but_inputs_policy(rt, rec.pool, files),
                               pool=rec.pool, lease_id=rec.lease_id)
    crec = rt.store.by_container_id(here.container_id)
    if crec is not None:
        with contextlib.suppress(Conflict):
            rt.store.update(crec.name, (State.READY, State.LEASED, State.HARVESTING), last_harvest_at=rt.clock.now())
    if not report.expired:
        failed = {s.file_id for s in report.skipped_entries if s.reason == SkipReason.FAILED}
        state = load_state(records, rec.session_id).of(here.container_id)
        state.known |= {f.id for f in files} - failed
        state.known -= failed
        state.retry = bool(failed) or report.failures > 0
        store_state(records, rec.session_id, state)
    return report

"""The pure reconcile: what a pool should look like, what it looks like, and now -> actions.

No I/O and no clock here, so the rules can be proved with hypothesis and ``hearth plan`` can print
what the heartbeat would do without doing it. The heartbeat reads the records (and, when it lists
them, the remote containers), calls :func:`reconcile` per pool and hands the actions to tasks.

Rules (one tick):

* desired READY = ``max(min_ready, leased + buffer)``, capped so that READY + LEASED fit in
  ``max_total``; CREATING/SEEDING in progress count toward it.
* Never exceed ``max_total``: every record that is not GONE occupies a slot (a FAILED container
  still exists until deleted), and provisions only fill free slots.
* Refresh (the keepalive call, which costs money: observing is touching) only containers Hearth
  still wants — READY ones within the target and LEASED ones — whose deadline is within
  ``keepalive_margin``, and READY ones with less life than a lease takes (``claim_margin``, the
  pool's ``min_remaining_on_claim_seconds``): such a spare could not be leased, yet it counts as
  READY, so without the refresh the pool would answer "empty" until the keepalive margin came. A
  leased container whose deadline seems past is refreshed, not retired: its holder's own calls
  keep it alive without Hearth seeing them, so the refresh is the check.
* EXPIRED/FAILED records, and live ones past their deadline, are retired (deleted if a container
  exists, else forgotten) and replaced through the normal provision count.
* CREATING/SEEDING without progress for ``create_timeout`` is treated as failed; an intent with no
  container id that old may still have created a container whose id we never saw: ``Adopt`` asks
  the applier to look the name up remotely (or, given ``remote``, the reconcile decides itself).
* READY containers with another ``inputs_digest`` are rotated gradually: replacements are
  provisioned (at most ``rotate_batch`` at a time) before the stale ones are retired as surplus;
  at ``max_total`` one stale container at a time is retired first to make room.
* Surplus READY containers are retired, least life left first, except those younger than
  ``hold_surplus_seconds`` (their billed minimum is paid: deleting saves nothing). Lapsed leases
  are reclaimed.
* Remote containers named ``{name_prefix}-{pool}-…`` with no record, older than ``orphan_grace``,
  are deleted (orphans).
* An open breaker stops provisioning, nothing else.

Appliers should make the next tick see their work: write intents when enqueueing a provision,
move a record to DELETING/HARVESTING when enqueueing its retire, reclaim (LEASED -> HARVESTING)
when enqueueing a harvest. Work already in flight (HARVESTING, DELETING) is only re-issued when it
has not moved for ``stuck_timeout``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from hearth.pool.model import ContainerRecord, State, parse_name

USABLE_REMOTE_STATUS = "running"


@dataclass(frozen=True)
class DesiredPool:
    """What one pool should look like now (after schedules), in plain numbers."""

    name: str
    min_ready: int
    max_total: int
    buffer: int = 0
    keepalive_margin: float = 180.0
    inputs_digest: str = ""
    expires_minutes: int = 20
    orphan_grace: float = 300.0
    lease_grace: float = 0.0
    create_timeout: float = 600.0
    stuck_timeout: float = 900.0
    rotate_batch: int = 1
    name_prefix: str = "hearth"
    # An explicit READY target (demand sizing or a budget, ``sizing.py``) instead of
    # ``max(min_ready, leased + buffer)``; still capped by max_total.
    ready: int | None = None
    # Surplus READY containers younger than this (since create) are kept, not deleted: their
    # billed minimum is paid already, so deleting them saves nothing and one may serve a lease.
    hold_surplus_seconds: float = 0.0
    # The least life a lease takes (``lease.min_remaining_on_claim_seconds``): a READY container
    # with less cannot be leased, so it is refreshed as if within the keepalive margin.
    claim_margin: float = 0.0

    @property
    def ready_refresh_margin(self) -> float:
        """A READY container Hearth keeps is refreshed when its remaining life is at most this."""
        return max(self.keepalive_margin, self.claim_margin)

    def __post_init__(self) -> None:
        if min(self.min_ready, self.max_total, self.buffer) < 0:
            raise ValueError("min_ready, buffer and max_total must not be negative")
        if self.rotate_batch < 1:
            raise ValueError("rotate_batch must be at least 1")
        if not 0 <= self.keepalive_margin < self.expires_minutes * 60:
            # A margin as long as the expiry would refresh every container on every tick.
            raise ValueError("keepalive_margin must be at least 0 and shorter than expires_minutes")
        if not 0 <= self.claim_margin < self.expires_minutes * 60:
            raise ValueError("claim_margin must be at least 0 and shorter than expires_minutes")


@dataclass(frozen=True)
class RemoteContainer:
    """A container as the API lists it (only what the reconcile needs)."""

    id: str
    name: str
    created_at: float
    status: str = USABLE_REMOTE_STATUS


# --- actions --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    kind: ClassVar[str] = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class Provision(Action):
    """Create ``count`` new containers (the applier makes the names and writes the intents)."""

    kind: ClassVar[str] = "provision"
    pool: str
    count: int


@dataclass(frozen=True)
class Refresh(Action):
    """The keepalive call on a container Hearth still wants."""

    kind: ClassVar[str] = "refresh"
    pool: str
    name: str
    container_id: str


@dataclass(frozen=True)
class Retire(Action):
    """Delete the container (after a harvest if ``harvest``); ``container_id`` None = nothing remote."""

    kind: ClassVar[str] = "retire"
    pool: str
    name: str
    container_id: str | None
    reason: str
    harvest: bool = False


@dataclass(frozen=True)
class Reclaim(Action):
    """A lease lapsed: take it back (LEASED -> HARVESTING), harvest, then retire."""

    kind: ClassVar[str] = "reclaim"
    pool: str
    name: str
    container_id: str | None
    lease_id: str | None


@dataclass(frozen=True)
class Forget(Action):
    """Delete a record that has no container behind it (GONE, or an intent that never created one)."""

    kind: ClassVar[str] = "forget"
    pool: str
    name: str
    reason: str


@dataclass(frozen=True)
class Adopt(Action):
    """An old intent with no container id: look ``name`` up remotely; retire what exists, else forget."""

    kind: ClassVar[str] = "adopt"
    pool: str
    name: str


@dataclass(frozen=True)
class DeleteOrphan(Action):
    """A remote container with our prefix that no record owns."""

    kind: ClassVar[str] = "delete_orphan"
    container_id: str
    name: str
    pool: str | None = None


ACTION_TYPES: dict[str, type[Action]] = {
    cls.kind: cls for cls in (Provision, Refresh, Retire, Reclaim, Forget, Adopt, DeleteOrphan)
}


def action_from_json(data: dict[str, Any]) -> Action:
    """Inverse of ``Action.to_json`` (tasks get actions as JSON)."""
    fields = dict(data)
    cls = ACTION_TYPES[fields.pop("kind")]
    return cls(**fields)


@dataclass(frozen=True)
class Unread:
    """Records a tick did not read (``hearth.planner``'s index view): READY ones with current
    inputs whose deadline is beyond ``DesiredPool.ready_refresh_margin`` and that rank above every read READY
    record (more life), and LEASED ones not lapsed, not near their deadline, no harvest due. They
    occupy slots and count toward the target; nothing is due for them, so they get no action."""

    ready: int = 0
    leased: int = 0

    def __post_init__(self) -> None:
        if min(self.ready, self.leased) < 0:
            raise ValueError("unread counts must not be negative")


# --- the rules ------------------------------------------------------------------------------------


def find_orphans(
    remote: Iterable[RemoteContainer],
    known_names: Iterable[str],
    known_ids: Iterable[str],
    now: float,
    *,
    name_prefix: str,
    grace: float,
    pools: Iterable[str] | None = None,
) -> list[DeleteOrphan]:
    """Remote containers named with our prefix, owned by no record, older than ``grace``.

    ``pools`` limits it to those pools (None: any pool, e.g. one removed from the pools file).
    """
    names, ids = set(known_names), set(known_ids)
    only = set(pools) if pools is not None else None
    found: list[DeleteOrphan] = []
    for c in remote:
        parts = parse_name(c.name, name_prefix)
        if parts is None or (only is not None and parts.pool not in only):
            continue
        if c.name in names or c.id in ids or now - c.created_at <= grace:
            continue
        found.append(DeleteOrphan(container_id=c.id, name=c.name, pool=parts.pool))
    return found


def ready_target(desired: DesiredPool, leased: int) -> int:
    """How many READY containers the pool wants while ``leased`` are out.

    ``max(min_ready, leased + buffer)`` (or ``desired.ready`` when sizing set it), capped so READY and
    LEASED together fit in ``max_total``.
    """
    wanted = max(desired.min_ready, leased + desired.buffer) if desired.ready is None else desired.ready
    return min(wanted, max(0, desired.max_total - leased))


def _expired(record: ContainerRecord, now: float) -> bool:
    return record.deadline is not None and now > record.deadline


def _remote_problem(
    record: ContainerRecord, now: float, desired: DesiredPool, remote: dict[str, RemoteContainer] | None
) -> str | None:
    """Why the remote listing says this record's container is unusable (None: fine or unknown)."""
    if remote is None or record.container_id is None:
        return None
    seen = remote.get(record.container_id)
    if seen is None:
        # A container created after the listing was taken is not in it yet: only trust absence
        # for records older than the orphan grace.
        # (bound_at: when we learned the id; an intent can wait in the queue far longer than the grace)
        return "missing" if now - (record.bound_at or record.created_at) > desired.orphan_grace else None
    if seen.status != USABLE_REMOTE_STATUS:
        return f"remote-{seen.status}"[:40]
    return None


def reconcile(
    desired: DesiredPool,
    records: Sequence[ContainerRecord],
    now: float,
    *,
    remote: Sequence[RemoteContainer] | None = None,
    breaker_open: bool = False,
    max_provision: int | None = None,
    unread: Unread | None = None,
) -> list[Action]:
    """The actions that move ``records`` of ``desired.name`` toward ``desired`` at ``now``.

    ``remote`` (all containers the API lists, any pool) enables orphan and lost-container
    detection; without it the reconcile trusts the records. ``max_provision`` caps creates this
    tick (1 while the breaker is half-open). ``unread``: records the caller did not read because
    nothing is due for them (see :class:`Unread`); they count, and get no action.
    """
    unread = unread or Unread()
    if remote is not None and (unread.ready or unread.leased):
        raise ValueError("a remote listing needs every record: orphans are the names no record has")
    pool = desired.name
    mine = [r for r in records if r.pool == pool]
    by_id = {c.id: c for c in remote} if remote is not None else None
    by_name = {c.name: c for c in remote} if remote is not None else None

    actions: list[Action] = []
    occupied = 0
    leased: list[ContainerRecord] = []
    in_progress: list[ContainerRecord] = []
    ready: list[ContainerRecord] = []

    def retire(r: ContainerRecord, reason: str, harvest: bool = False) -> None:
        actions.append(Retire(pool=pool, name=r.name, container_id=r.container_id, reason=reason, harvest=harvest))

    for r in mine:
        if r.state is State.GONE:
            actions.append(Forget(pool=pool, name=r.name, reason="gone"))
            continue
        occupied += 1
        problem = _remote_problem(r, now, desired, by_id)
        idle = now - r.updated_at

        if r.state in (State.EXPIRED, State.FAILED):
            if r.container_id is None or problem == "missing":
                actions.append(Forget(pool=pool, name=r.name, reason=r.state.value.lower()))
            else:
                retire(r, r.state.value.lower())
        elif r.state in (State.HARVESTING, State.DELETING):
            if r.state is State.DELETING and problem == "missing":
                actions.append(Forget(pool=pool, name=r.name, reason="deleted"))
            elif idle > desired.stuck_timeout:
                retire(r, f"stuck-{r.state.value.lower()}", harvest=r.state is State.HARVESTING and problem is None)
        elif r.state is State.CREATING and r.container_id is None:
            if idle <= desired.create_timeout:
                in_progress.append(r)
            elif by_name is None:
                actions.append(Adopt(pool=pool, name=r.name))
            elif r.name in by_name:
                actions.append(Retire(pool=pool, name=r.name, container_id=by_name[r.name].id, reason="dead-intent"))
            else:
                actions.append(Forget(pool=pool, name=r.name, reason="dead-intent"))
        elif r.state in (State.CREATING, State.SEEDING):
            if problem is not None:
                retire(r, problem)
            elif _expired(r, now):
                retire(r, "expired")
            elif idle > desired.create_timeout:
                retire(r, f"stuck-{r.state.value.lower()}")
            else:
                in_progress.append(r)
        elif r.state is State.LEASED:
            if problem is not None:
                retire(r, problem)
            elif r.lease_lapsed(now, desired.lease_grace):
                actions.append(Reclaim(pool=pool, name=r.name, container_id=r.container_id, lease_id=r.lease_id))
            else:
                leased.append(r)
        elif r.state is State.READY:
            if problem is not None:
                retire(r, problem)
            elif _expired(r, now):
                retire(r, "expired")
            else:
                ready.append(r)

    # --- sizes ------------------------------------------------------------------------------------
    occupied += unread.ready + unread.leased
    n_leased = len(leased) + unread.leased
    target = ready_target(desired, n_leased)

    def stale(r: ContainerRecord) -> bool:
        return r.inputs_digest != desired.inputs_digest

    # Keep current inputs first, then most life left; the rest of READY is surplus. Unread READY
    # records rank first (current inputs, more life than any read one).
    ranked = sorted(ready, key=lambda r: (stale(r), -r.remaining(now), r.name))
    kept_unread = min(unread.ready, target)
    kept, surplus = ranked[: target - kept_unread], ranked[target - kept_unread :]
    for r in surplus:
        if not stale(r) and now - (r.bound_at or r.created_at) < desired.hold_surplus_seconds:
            continue  # paid for already: it lapses into a later tick's surplus (or serves a lease)
        retire(r, "stale-inputs" if stale(r) else "surplus", harvest=r.lease_count > 0)

    kept_stale = [r for r in kept if stale(r)]
    shortfall = max(0, target - len(kept) - kept_unread)
    deficit = max(0, shortfall - len(in_progress))
    # In-progress creates beyond the shortfall are replacements for stale READY ones already.
    replacing = max(0, len(in_progress) - shortfall)
    rotation = max(0, min(len(kept_stale), desired.rotate_batch) - replacing)
    budget = max(0, desired.max_total - occupied)
    count = min(deficit + rotation, budget)
    if breaker_open:
        count = 0
    if max_provision is not None:
        count = min(count, max(0, max_provision))

    # At max_total, rotation can only start by making room: retire the stale READY containers with
    # the least life (rotate_batch at a time) once nothing else is about to free a slot.
    releasing = occupied - n_leased - len(in_progress) - len(ready) - unread.ready
    forced: set[str] = set()
    if rotation and budget == 0 and releasing == 0 and not surplus and not breaker_open:
        for r in sorted(kept_stale, key=lambda r: (r.remaining(now), r.name))[:rotation]:
            forced.add(r.name)
            retire(r, "stale-inputs", harvest=r.lease_count > 0)

    for r in [*kept, *leased]:
        if r.name in forced or r.container_id is None:
            continue
        margin = desired.ready_refresh_margin if r.state is State.READY else desired.keepalive_margin
        if r.remaining(now) <= margin:
            actions.append(Refresh(pool=pool, name=r.name, container_id=r.container_id))

    if count > 0:
        actions.append(Provision(pool=pool, count=count))

    if remote is not None:
        actions.extend(
            find_orphans(
                remote,
                (r.name for r in mine),
                (r.container_id for r in mine if r.container_id),
                now,
                name_prefix=desired.name_prefix,
                grace=desired.orphan_grace,
                pools=[pool],
            )
        )
    return actions

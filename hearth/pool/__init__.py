"""Pool state: container records in Redis, leases, the leader lease, and the pure reconcile.

Everything here takes its Redis client, clock and randomness as parameters and knows neither
Celery nor APScheduler: tasks and the heartbeat drive it.
"""

from hearth.pool.leader import LeaderLease
from hearth.pool.leases import Lease, Leases, ReleasedLease
from hearth.pool.model import ContainerRecord, NameParts, State, can_transition, make_name, parse_name
from hearth.pool.reconcile import (
    Action,
    Adopt,
    DeleteOrphan,
    DesiredPool,
    Forget,
    Provision,
    Reclaim,
    Refresh,
    RemoteContainer,
    Retire,
    action_from_json,
    find_orphans,
    ready_target,
    reconcile,
)
from hearth.pool.store import BreakerPolicy, BreakerState, BreakerStatus, PoolStore

__all__ = [
    "Action",
    "Adopt",
    "BreakerPolicy",
    "BreakerState",
    "BreakerStatus",
    "ContainerRecord",
    "DeleteOrphan",
    "DesiredPool",
    "Forget",
    "LeaderLease",
    "Lease",
    "Leases",
    "NameParts",
    "PoolStore",
    "Provision",
    "Reclaim",
    "Refresh",
    "ReleasedLease",
    "RemoteContainer",
    "Retire",
    "State",
    "action_from_json",
    "can_transition",
    "find_orphans",
    "make_name",
    "parse_name",
    "ready_target",
    "reconcile",
]

"""Fill requests: "reconcile this pool now", deduplicated per pool, never lost to a busy tick.

Why: a pool below target must not wait for the next heartbeat interval. A lease that finds its
pool empty, ``hearth fill`` and an edited pools file each *ask* for a pool here; the ask adds the
pool to one Redis set (``{P}:want:reconcile``) and, at most once per ``DEDUPE_MS`` per pool, says
"send one ``hearth.reconcile_pool`` task now" (``{P}:pending:reconcile:{pool}``). Whoever holds the
planner's lock next takes the whole set (``take``): the task that asked, or a heartbeat tick that
was already running (it looks again after it lets the lock go), so a request made while another
planner works is served as soon as that one is done, not at the next interval.

The order that makes it lossless: the asker adds to the set *before* it claims the dedupe key,
and the task clears the dedupe key *before* it takes the set. A request that finds the key held
is therefore always seen by the task that holds it.
"""

from __future__ import annotations

from collections.abc import Iterable

from hearth.pool.effects import Command, Enqueue, Steps
from hearth.pool.store import PoolStore, _text

DEDUPE_MS = 2000  # one task per pool per 2 s, however many callers ask
TASK = "hearth.reconcile_pool"

# Take every wanted pool at once (SMEMBERS + DEL in one step: a concurrent SADD lands before or after).
_TAKE = """
local pools = redis.call('SMEMBERS', KEYS[1])
redis.call('DEL', KEYS[1])
return pools
"""


class FillRequests:
    """The "reconcile these pools now" set of one key prefix."""

    def __init__(self, store: PoolStore) -> None:
        self.store = store
        self.redis = store.redis
        self.key = store.key("want", "reconcile")
        self._take = store.redis.register_script(_TAKE)

    def __repr__(self) -> str:
        return f"FillRequests(key={self.key!r})"

    def pending_key(self, pool: str) -> str:
        return self.store.key("pending", "reconcile", pool)

    def ask_steps(self, pool: str) -> Steps[bool]:
        """Ask for ``pool`` as steps (the lease faces run them); enqueues the task when none is pending."""
        yield Command("sadd", (self.key, pool))
        if (yield Command("set", (self.pending_key(pool), "1"), {"nx": True, "px": DEDUPE_MS})):
            yield Enqueue(TASK, [pool])
            return True
        return False

    def ask(self, pools: Iterable[str]) -> list[str]:
        """Ask for ``pools``; returns those a task must be sent for now (the others have one pending)."""
        send: list[str] = []
        for pool in pools:
            self.store._cmd(self.redis.sadd, self.key, pool)
            if self.store._cmd(self.redis.set, self.pending_key(pool), "1", nx=True, px=DEDUPE_MS):
                send.append(pool)
        return send

    def started(self, pool: str) -> None:
        """A task for ``pool`` runs: a request from now on sends another one."""
        self.store._cmd(self.redis.delete, self.pending_key(pool))

    def take(self) -> list[str]:
        """Every wanted pool, and the set emptied (the caller plans them now)."""
        return sorted({_text(p) for p in self.store._cmd(self._take, keys=[self.key], args=[])})

    def waiting(self) -> bool:
        return bool(self.store._cmd(self.redis.scard, self.key))

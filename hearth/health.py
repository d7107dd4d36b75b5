"""Health of one Hearth deployment, read from Redis: what ``hearth check`` decides on.

Why it exists: a supervisor (systemd, a Kubernetes probe) needs one yes/no for "is this deployment
working", and the answer lives in Redis: each worker keeps a health key alive while it consumes
(``tasks/health.py``), the heartbeat's leader keeps its lease and a health key after each tick
(``worker/heartbeat.py``), and the Redis server's own settings decide whether Hearth's state survives
a restart (persistence) and whether Redis may drop Hearth's keys under memory pressure (eviction).

The keys, all under the deployment's key prefix (``HEARTH_KEY_PREFIX``):

- ``{prefix}:health:worker:{hostname}``: JSON ``{pid, host, hostname, queues, time}``, TTL
  ``HEARTH_WORKER_HEALTH_TTL``, rewritten every ``HEARTH_WORKER_HEALTH_INTERVAL``, deleted on a clean
  shutdown; ``{prefix}:health:workers`` (a sorted set hostname -> last write) indexes them, so a check
  reads a handful of keys instead of scanning the database.
- ``{prefix}:leader:heartbeat``: the heartbeat leader's lease (``hearth.pool.leader``).
- ``{prefix}:health:heartbeat``: written by the leader after each successful tick, TTL 3 ticks.

A Redis database holds one deployment per key prefix: the check looks at its own prefix only.

Verdicts: ``fail`` makes the deployment unhealthy (exit 1), ``warn`` only with ``strict``. An evicting
Redis is a failure (it may silently drop a record, a lease or a queued task); a Redis that does not
persist is a warning (a restart loses the state, but the running deployment works).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import redis

from hearth.clock import Clock
from hearth.errors import HearthError
from hearth.pool.leader import LeaderLease

Verdict = Literal["ok", "warn", "fail"]
HEARTBEAT_LEADER = "heartbeat"
# Index entries of workers not seen for this long are dropped by the next worker that writes (s).
WORKER_INDEX_KEEP = 24 * 3600.0
NO_EVICTION = "noeviction"
ONE_DEPLOYMENT_PER_PREFIX = (
    "a Redis database holds one Hearth deployment per key prefix; this check covers prefix {prefix!r} only"
)


def worker_key(prefix: str, hostname: str) -> str:
    return f"{prefix}:health:worker:{hostname}"


def worker_index_key(prefix: str) -> str:
    return f"{prefix}:health:workers"


def heartbeat_key(prefix: str) -> str:
    """The key the heartbeat leader writes after each tick (``PoolStore.beat("heartbeat", …)``)."""
    return f"{prefix}:health:heartbeat"


def write_worker_health(
    client: redis.Redis, prefix: str, hostname: str, ttl: float, now: float, info: Mapping[str, Any]
) -> None:
    """Say worker ``hostname`` is alive for ``ttl`` s; ``info`` is small JSON-able facts (no secrets)."""
    body = json.dumps({**info, "hostname": hostname, "time": round(now, 3)}, default=str)
    index = worker_index_key(prefix)
    pipe = client.pipeline(transaction=True)
    pipe.set(worker_key(prefix, hostname), body, px=max(1, int(ttl * 1000)))
    pipe.zadd(index, {hostname: now})
    pipe.zremrangebyscore(index, "-inf", now - WORKER_INDEX_KEEP)
    pipe.execute()


def clear_worker_health(client: redis.Redis, prefix: str, hostname: str) -> None:
    """A clean shutdown: the worker is gone now, not after its TTL."""
    pipe = client.pipeline(transaction=True)
    pipe.delete(worker_key(prefix, hostname))
    pipe.zrem(worker_index_key(prefix), hostname)
    pipe.execute()


def live_workers(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    """The health bodies of every worker whose key has not expired."""
    names = [_text(n) for n in client.zrange(worker_index_key(prefix), 0, -1) if isinstance(n, (bytes, str))]
    if not names:
        return []
    bodies = client.mget([worker_key(prefix, n) for n in names])
    alive: list[dict[str, Any]] = []
    for raw in bodies:
        if raw is None:
            continue
        try:
            body = json.loads(raw)
        except ValueError:
            continue
        if isinstance(body, dict):
            alive.append(body)
    return alive


@dataclass(frozen=True)
class Finding:
    """One thing checked: its name, verdict and a sentence saying why."""

    name: str
    verdict: Verdict
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "verdict": self.verdict, "detail": self.detail}


@dataclass
class HealthReport:
    """Everything ``hearth check`` found; ``healthy(strict)`` is its exit status."""

    prefix: str
    redis: str
    embedded: bool
    strict: bool = False
    findings: list[Finding] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)
    heartbeat: dict[str, Any] | None = None
    redis_settings: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, verdict: Verdict, detail: str) -> None:
        self.findings.append(Finding(name, verdict, detail))

    @property
    def failures(self) -> list[Finding]:
        bad: tuple[str, ...] = ("fail", "warn") if self.strict else ("fail",)
        return [f for f in self.findings if f.verdict in bad]

    @property
    def healthy(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "strict": self.strict,
            "prefix": self.prefix,
            "redis": self.redis,
            "embedded_redis": self.embedded,
            "checks": [f.to_json() for f in self.findings],
            "reasons": [f"{f.name}: {f.detail}" for f in self.failures],
            "workers": self.workers,
            "heartbeat": self.heartbeat,
            "redis_settings": self.redis_settings,
            "note": ONE_DEPLOYMENT_PER_PREFIX.format(prefix=self.prefix),
        }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _config(client: redis.Redis, name: str) -> str | None:
    """``CONFIG GET name``, or None where CONFIG is disabled (many managed Redis services)."""
    try:
        got = client.config_get(name)
    except redis.ResponseError:
        return None
    value = got.get(name)
    return None if value is None else _text(value)


def check_redis_settings(client: redis.Redis, report: HealthReport) -> None:
    """Eviction (fail unless ``noeviction``) and persistence (warn unless AOF or snapshots)."""
    memory = client.info("memory")
    persistence = client.info("persistence")
    policy = str(memory.get("maxmemory_policy") or _config(client, "maxmemory-policy") or "unknown")
    aof = bool(int(persistence.get("aof_enabled", 0)))
    save = _config(client, "save")
    report.redis_settings = {
        "maxmemory_policy": policy,
        "maxmemory": int(memory.get("maxmemory", 0) or 0),
        "appendonly": aof,
        "appendfsync": _config(client, "appendfsync"),
        "save": save,
    }
    if policy == NO_EVICTION:
        report.add("eviction", "ok", "maxmemory-policy is noeviction")
    elif policy == "unknown":
        report.add("eviction", "warn", "maxmemory-policy could not be read (CONFIG and INFO hid it)")
    else:
        report.add("eviction", "fail",
                   f"maxmemory-policy is {policy}: Redis may drop Hearth's records, leases and queued tasks "
                   "under memory pressure; set maxmemory-policy noeviction")
    if aof:
        report.add("persistence", "ok", f"appendonly yes (appendfsync {report.redis_settings['appendfsync']})")
    elif save:
        report.add("persistence", "ok", f"snapshots configured (save {save}); AOF everysec loses less")
    elif save is None:
        report.add("persistence", "warn", "appendonly is off and the snapshot schedule could not be read")
    else:
        report.add("persistence", "warn",
                   "neither appendonly nor snapshots: a Redis restart loses every record, lease and queued task; "
                   "set appendonly yes, appendfsync everysec")


def check_workers(client: redis.Redis, report: HealthReport, min_workers: int) -> None:
    report.workers = live_workers(client, report.prefix)
    alive = len(report.workers)
    names = ", ".join(sorted(str(w.get("hostname")) for w in report.workers)) or "none"
    if alive >= min_workers:
        report.add("workers", "ok", f"{alive} alive (at least {min_workers} wanted): {names}")
    else:
        report.add("workers", "fail", f"{alive} alive, at least {min_workers} wanted (no health key under "
                   f"{worker_key(report.prefix, '*')})")


def check_heartbeat(client: redis.Redis, clock: Clock, report: HealthReport) -> None:
    """Alive: a replica holds the leader lease, and the leader's last tick succeeded within 3 ticks."""
    lease = LeaderLease(client, clock, HEARTBEAT_LEADER, 1.0, "hearth-check", prefix=report.prefix)
    holder = lease.holder()
    ttl_ms = int(client.pttl(lease.key))
    raw = client.get(heartbeat_key(report.prefix))
    beat = json.loads(raw) if raw is not None else None
    report.heartbeat = {
        "leader": holder,
        "lease_ttl_seconds": round(ttl_ms / 1000, 3) if ttl_ms > 0 else None,
        "last_tick": beat if isinstance(beat, dict) else None,
    }
    if holder is None:
        report.add("heartbeat", "fail", f"no heartbeat holds the leader lease ({lease.key}): none is running")
    elif beat is None:
        report.add("heartbeat", "fail",
                   f"{holder} holds the leader lease but no tick succeeded lately ({heartbeat_key(report.prefix)} "
                   "expired): see its log")
    else:
        report.add("heartbeat", "ok", f"leader {holder}, last tick at {beat.get('at')}")


def check_deployment(
    client: redis.Redis, clock: Clock, *, prefix: str, redis_label: str, embedded: bool = False,
    min_workers: int = 1, heartbeat: bool = True, strict: bool = False,
) -> HealthReport:
    """Every check, in order; a Redis that cannot be reached is one failure and ends the check."""
    report = HealthReport(prefix=prefix, redis=redis_label, embedded=embedded, strict=strict)
    try:
        client.ping()
    except redis.RedisError as exc:
        report.add("redis", "fail", f"cannot reach {redis_label}: {type(exc).__name__}: {exc}")
        return report
    report.add("redis", "ok", f"{redis_label} answers" + (" (the embedded Redis of `hearth up`)" if embedded else ""))
    try:
        check_redis_settings(client, report)
        check_workers(client, report, min_workers)
        if heartbeat:
            check_heartbeat(client, clock, report)
    except (redis.RedisError, HearthError) as exc:
        report.add("redis", "fail", f"{redis_label} failed during the check: {type(exc).__name__}: {exc}")
    report.add("deployments", "ok", ONE_DEPLOYMENT_PER_PREFIX.format(prefix=prefix))
    return report


__all__ = [
    "Finding", "HealthReport", "check_deployment", "clear_worker_health", "heartbeat_key", "live_workers",
    "worker_index_key", "worker_key", "write_worker_health",
]

"""The process-wide parts of a Hearth process, built once at process start and passed in.

A worker process, the heartbeat and the CLI each build one ``Runtime`` from ``Settings``: one Redis
client, one API client (one HTTP connection pool), the pool store, leases and the harvester. Nothing
here is a module global, so tests build as many as they like, with their own clock or transport.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import fsspec
import httpx
import redis

from hearth.api.client import ContainersClient
from hearth.clock import Clock, SystemClock
from hearth.costs import Costs
from hearth.errors import ConfigError
from hearth.events import NullObserver, Observer, log_event
from hearth.files.harvest import Harvester
from hearth.files.inputs import InputItem, inputs_digest, resolve_inputs
from hearth.files.staging import Staging
from hearth.pool.leases import Leases
from hearth.pool.store import BreakerPolicy, PoolStore
from settings import Settings, load_pools
from settings.pools import Budget, PoolsFile, PoolsFileError, PoolSpec
from settings.pools_loader import parse_pools

if TYPE_CHECKING:
    from collections.abc import Sequence


log = logging.getLogger(__name__)


@dataclass
class _PoolsCache:
    path: Path | None = None
    mtime: float = -1.0
    pools: PoolsFile | None = None
    inputs: dict[str, tuple[tuple[tuple[str, str, int], ...], list[InputItem], str]] = field(default_factory=dict)


class Runtime:
    """Settings plus the clients every Hearth operation needs; ``close()`` at process exit."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis_client: redis.Redis,
        client: ContainersClient,
        clock: Clock | None = None,
        observer: Observer | None = None,
        publish_pools: bool = False,
    ) -> None:
        self.settings = settings
        # Processes that act (worker, heartbeat) share the last good pools file through Redis;
        # read-only commands (`plan`, `status`) only read it, so they change nothing.
        self.publish_pools = publish_pools
        self.clock: Clock = clock or SystemClock()
        self.redis = redis_client
        self.client = client
        self.observer: Observer = observer or NullObserver()
        breaker = BreakerPolicy(
            threshold=settings.breaker_threshold, window=settings.breaker_window, cooldown=settings.breaker_cooldown
        )
        self.store = PoolStore(redis_client, self.clock, prefix=settings.key_prefix, breaker=breaker)
        self.leases = Leases(self.store)
        global_budget = (Budget(usd_per_day=settings.budget_usd_per_day, hard=settings.budget_hard)
                         if settings.budget_usd_per_day else None)
        self.costs = Costs(redis_client, prices=settings.prices, prefix=settings.key_prefix,
                           retention_days=settings.cost_retention_days, budget=global_budget,
                           fast_tau=settings.demand_fast_tau, slow_tau=settings.demand_slow_tau,
                           ready_default=settings.demand_ready_default,
                           replenish_seconds=settings.heartbeat_interval)
        self.harvester = Harvester(client, self.clock)
        # Pool inputs uploaded once to the Files API and copied into containers at create.
        self.staging = Staging(redis_client, client, self.clock, prefix=settings.key_prefix,
                               grace=settings.staged_grace)
        self._pools = _PoolsCache()
        # Why the pools file on disk is not the one in use (None: it is).
        self.pools_error: str | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        clock: Clock | None = None,
        transport: httpx.BaseTransport | None = None,
        observer: Observer | None = None,
        publish_pools: bool = False,
    ) -> Runtime:
        settings = settings or Settings()
        url = settings.resolved_redis_url
        if not url:
            raise ConfigError(
                "no Redis: set HEARTH_REDIS_URL, or start `hearth up` with this data dir "
                f"({settings.data_dir})",
                where="HEARTH_REDIS_URL",
            )
        # Timeouts: a partitioned Redis must raise (and be retried), not hang the heartbeat or a lease.
        redis_client = redis.Redis.from_url(
            url, health_check_interval=30, socket_connect_timeout=5, socket_timeout=30
        )
        client = ContainersClient.from_settings(
            settings, redis=redis_client, transport=transport, clock=clock, observer=observer
        )
        return cls(settings, redis_client=redis_client, client=client, clock=clock, observer=observer,
                   publish_pools=publish_pools)

    def __repr__(self) -> str:
        return f"Runtime(backend={self.settings.backend.value!r}, api={self.client.base_url!r})"

    def close(self) -> None:
        self.client.close()
        self.redis.close()

    # --- the pools file --------------------------------------------------------------------------

    def pools(self) -> PoolsFile:
        """The pools file, re-read when it changes on disk (edits apply without a restart)."""
        path = Path(self.settings.resolved_pools)
        try:
            mtime = path.stat().st_mtime
        except OSError as exc:
            raise ConfigError(f"cannot read the pools file: {exc.strerror}", where=str(path)) from None
        cache = self._pools
        if cache.pools is None or cache.path != path or cache.mtime != mtime:
            try:
                loaded = load_pools(path)
            except PoolsFileError as exc:
                # A bad edit must not stop keepalive: keep serving the last good file, and say so. A
                # process that never saw this file valid (a fresh `hearth status`, a new worker) takes
                # the last good version any process saved, so everyone agrees on what runs.
                kept = cache.pools if cache.pools is not None and cache.path == path else None
                fallback = kept or self._shared_last_good(path)
                if fallback is None:
                    raise ConfigError(str(exc), where=str(path)) from None
                if self.pools_error is None:
                    log_event(log, "pools.reload_failed", level=logging.ERROR, path=str(path), error=str(exc))
                self.pools_error = str(exc)
                self._pools = _PoolsCache(path=path, mtime=mtime, pools=fallback, inputs=cache.inputs)
                return fallback
            self._pools = _PoolsCache(path=path, mtime=mtime, pools=loaded)
            self.pools_error = None
            self._save_last_good(path)
        assert self._pools.pools is not None
        return self._pools.pools

    def _last_good_key(self, path: Path) -> str:
        return self.store.key("pools", "last-good", hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16])

    def _save_last_good(self, path: Path) -> None:
        # The raw text (secrets are only ever `value_env` references, never values), best effort.
        if not self.publish_pools:
            return
        with contextlib.suppress(OSError, redis.RedisError):
            self.redis.set(self._last_good_key(path), path.read_text(encoding="utf-8"))

    def _shared_last_good(self, path: Path) -> PoolsFile | None:
        try:
            raw = self.redis.get(self._last_good_key(path))
            if raw is None:
                return None
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            return parse_pools(text, file=f"{path} (last good)", base_dir=path.resolve().parent)
        except (redis.RedisError, PoolsFileError):
            return None

    def pool(self, name: str) -> PoolSpec:
        pools = self.pools().pools
        if name not in pools:
            known = ", ".join(sorted(pools)) or "none"
            raise ConfigError(f"no pool named {name!r} (pools: {known})", where=str(self.settings.resolved_pools))
        return pools[name]

    def inputs(self, spec: PoolSpec) -> tuple[list[InputItem], str]:
        """The pool's input files and their digest; re-hashed only when a file changed."""
        base = Path(self.settings.resolved_pools).resolve().parent
        stamp = _stamp(spec.inputs, base)
        cached = self._pools.inputs.get(spec.name)
        if cached is not None and cached[0] == stamp:
            return cached[1], cached[2]
        items = resolve_inputs(spec.inputs, base)
        digest = inputs_digest(items)
        self._pools.inputs[spec.name] = (stamp, items, digest)
        return items, digest


def _stamp(specs: Sequence[object], base: Path) -> tuple[tuple[str, str, int], ...]:
    """Cheap change detection for inputs, so their content is re-hashed only when this changes:
    (path, mtime, size) of local files, (url, etag or mtime, size) of storage URLs (one metadata
    call, no download). A Files-API id names immutable content."""
    rows: list[tuple[str, str, int]] = []
    for spec in specs:
        raw, url = getattr(spec, "path", None), getattr(spec, "url", None)
        if url is not None:
            rows.append(_url_stamp(str(url)))
            continue
        if raw is None:
            rows.append((str(getattr(spec, "file_id", None)), "", 0))
            continue
        pattern = raw if Path(raw).is_absolute() else str(base / raw)
        for p in sorted(Path("/").glob(pattern.lstrip("/"))) if any(c in pattern for c in "*?[") else [Path(pattern)]:
            try:
                st = p.stat()
            except OSError:
                rows.append((str(p), "missing", -1))
                continue
            rows.append((str(p), repr(st.st_mtime), st.st_size))
    return tuple(rows)


def _url_stamp(url: str) -> tuple[str, str, int]:
    try:
        fs, path = fsspec.core.url_to_fs(url)
        info = fs.info(path)
    except Exception as exc:  # unreachable now: the resolve that follows reports it properly
        return (url, f"error:{type(exc).__name__}", -1)
    version = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime") or ""
    return (url, str(version), int(info.get("size") or 0))

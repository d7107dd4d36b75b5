"""Prometheus metrics of the worker and heartbeat processes, fed through ``hearth.events.Observer``.

The domain reports to an ``Observer``; ``PrometheusObserver`` turns those calls into the metrics
below, and ``start_metrics_server(port)`` serves them (``Settings.metrics_port``).

Metrics (all prefixed ``hearth_``)
----------------------------------
``containers{pool,state}``                  gauge, last count reported per pool and state
``lease_seconds{pool}`` / ``leases_total{pool,outcome}``  claim latency histogram, outcomes
``api_calls_total{endpoint,status}`` / ``api_errors_total{endpoint,status}`` / ``api_call_seconds{endpoint}``
``refreshes_total{pool,outcome}``           outcome ok | error
``harvest_files_total{pool}``, ``harvest_bytes_total{pool}``, ``harvest_failures_total{pool}``
``breaker_open{pool}``                      gauge 0/1
``heartbeat_ticks_total{outcome}``, ``heartbeat_tick_seconds``, ``heartbeat_last_tick_timestamp_seconds``
``events_total{kind}``                      ``Observer.event`` calls

Celery prefork workers
----------------------
Tasks run in forked child processes, so a plain in-memory registry in the parent would never see
their samples. ``enable_multiprocess(dir)`` switches prometheus_client to its multiprocess mode
(each process writes its samples to mmap files in ``dir``; the server in the parent sums them on
every scrape). The worker entry point must call it **before** any metric is created (i.e. before
``default_metrics()``/``PrometheusObserver()``) and before Celery forks, then call
``start_metrics_server(port)`` in the parent, and ``install_celery_hooks()`` so a child that exits
has its live gauges removed. Gauges use the ``mostrecent`` mode: the last value written by any
process wins, which is what "containers per pool" means. Single-process programs (the heartbeat)
need none of this.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import values as _prom_values

from hearth.errors import ConfigError
from hearth.events import log_event

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TICK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# Container / file / upload ids in an endpoint would make one time series per container.
_ID_RE = re.compile(r"\b(?:cntr|cfile|file|ctr|upload|batch)[_-][A-Za-z0-9_\-]+")


def normalise_endpoint(endpoint: str) -> str:
    """``"GET /containers/cntr_abc/files/cfile_1"`` → ``"GET /containers/{id}/files/{id}"``; no query."""
    return _ID_RE.sub("{id}", endpoint.split("?", 1)[0])


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class HearthMetrics:
    """The metric objects, registered in ``registry`` (``None``: not registered; used in multiprocess mode)."""

    def __init__(self, registry: CollectorRegistry | None = prometheus_client.REGISTRY) -> None:
        r = registry
        self.containers = Gauge(
            "hearth_containers", "Containers per pool and state (last reported).", ["pool", "state"],
            registry=r, multiprocess_mode="mostrecent",
        )
        self.lease_seconds = Histogram(
            "hearth_lease_seconds", "Time to claim a lease, s.", ["pool"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.leases = Counter("hearth_leases", "Lease attempts by outcome.", ["pool", "outcome"], registry=r)
        self.api_calls = Counter(
            "hearth_api_calls", "Containers API requests by endpoint and status.", ["endpoint", "status"], registry=r
        )
        self.api_errors = Counter(
            "hearth_api_errors", "Failed API requests (status >= 400 or no answer).", ["endpoint", "status"],
            registry=r,
        )
        self.api_seconds = Histogram(
            "hearth_api_call_seconds", "Containers API request latency, s.", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.refreshes = Counter("hearth_refreshes", "Container refreshes by outcome.", ["pool", "outcome"], registry=r)
        self.harvest_files = Counter("hearth_harvest_files", "Files harvested.", ["pool"], registry=r)
        self.harvest_bytes = Counter("hearth_harvest_bytes", "Bytes harvested.", ["pool"], registry=r)
        self.harvest_failures = Counter(
            "hearth_harvest_failures", "Files that failed to harvest.", ["pool"], registry=r
        )
        self.breaker_open = Gauge(
            "hearth_breaker_open", "1 while the pool's circuit breaker is open.", ["pool"],
            registry=r, multiprocess_mode="mostrecent",
        )
        self.ticks = Counter("hearth_heartbeat_ticks", "Heartbeat ticks by outcome.", ["outcome"], registry=r)
        self.tick_seconds = Histogram(
            "hearth_heartbeat_tick_seconds", "Duration of a heartbeat tick, s.", buckets=TICK_BUCKETS, registry=r
        )
        self.last_tick = Gauge(
            "hearth_heartbeat_last_tick_timestamp_seconds", "When the last heartbeat tick ended (epoch s).",
            registry=r, multiprocess_mode="max",
        )
        self.events = Counter("hearth_events", "Observer events by kind.", ["kind"], registry=r)
        self.container_seconds = Counter(
            "hearth_container_seconds", "Billed container time by pool, memory tier and state (idle/leased/other), s.",
            ["pool", "memory", "state"], registry=r,
        )
        self.cost_usd = Counter("hearth_cost_usd", "Metered container cost, $.", ["pool"], registry=r)
        self.burn_rate = Gauge(
            "hearth_cost_burn_usd_per_hour", "What the pool's live containers cost per hour now, $.", ["pool"],
            registry=r, multiprocess_mode="mostrecent",
        )
        self.over_budget = Gauge(
            "hearth_pool_over_budget", "1 while the pool is over its daily budget.", ["pool"],
            registry=r, multiprocess_mode="mostrecent",
        )


_default_lock = threading.Lock()
_default: HearthMetrics | None = None


def default_metrics() -> HearthMetrics:
    """The process's metrics (created once; in the default registry unless multiprocess mode is on)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = HearthMetrics(None if multiprocess_enabled() else prometheus_client.REGISTRY)
        return _default


class PrometheusObserver:
    """A ``hearth.events.Observer`` recording into ``HearthMetrics`` (default: ``default_metrics()``).

    ``event(kind, **fields)`` also logs one line through ``logger`` (if given) so that recent events
    are visible in the log as well as counted.
    """

    def __init__(self, metrics: HearthMetrics | None = None, *, logger: Any = None) -> None:
        self.metrics = metrics or default_metrics()
        self._logger = logger
        self._states: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def api_call(self, endpoint: str, status: int | str, seconds: float) -> None:
        ep = normalise_endpoint(endpoint)
        st = str(status)
        self.metrics.api_calls.labels(ep, st).inc()
        self.metrics.api_seconds.labels(ep).observe(max(seconds, 0.0))
        if not (isinstance(status, int) and status < 400):
            self.metrics.api_errors.labels(ep, st).inc()

    def lease(self, pool: str, seconds: float, outcome: str) -> None:
        self.metrics.leases.labels(pool, outcome).inc()
        self.metrics.lease_seconds.labels(pool).observe(max(seconds, 0.0))

    def refresh(self, pool: str, ok: bool) -> None:
        self.metrics.refreshes.labels(pool, "ok" if ok else "error").inc()

    def harvest(self, pool: str, files: int, bytes: int, failures: int) -> None:
        if files:
            self.metrics.harvest_files.labels(pool).inc(files)
        if bytes:
            self.metrics.harvest_bytes.labels(pool).inc(bytes)
        if failures:
            self.metrics.harvest_failures.labels(pool).inc(failures)

    def containers(self, pool: str, counts: Mapping[str, int]) -> None:
        with self._lock:
            # A state that emptied must read 0, not keep its last non-zero value.
            states = self._states.setdefault(pool, set())
            states.update(counts)
            for state in states:
                self.metrics.containers.labels(pool, state).set(counts.get(state, 0))

    def breaker(self, pool: str, open: bool) -> None:
        self.metrics.breaker_open.labels(pool).set(1 if open else 0)

    def tick(self, seconds: float, ok: bool) -> None:
        self.metrics.ticks.labels("ok" if ok else "error").inc()
        self.metrics.tick_seconds.observe(max(seconds, 0.0))
        self.metrics.last_tick.set_to_current_time()

    def cost(self, pool: str, memory: str, seconds: Mapping[str, float], usd: float) -> None:
        for state, value in seconds.items():
            if value > 0:
                self.metrics.container_seconds.labels(pool, memory, state).inc(value)
        if usd > 0:
            self.metrics.cost_usd.labels(pool).inc(usd)

    def spend(self, pool: str, burn_usd_per_hour: float, over_budget: bool) -> None:
        self.metrics.burn_rate.labels(pool).set(burn_usd_per_hour)
        self.metrics.over_budget.labels(pool).set(1 if over_budget else 0)

    def event(self, kind: str, **fields: Any) -> None:
        self.metrics.events.labels(kind).inc()
        if self._logger is not None:
            log_event(self._logger, kind, **fields)


# --- serving ---------------------------------------------------------------------------------


@dataclass
class MetricsServer:
    """A running metrics HTTP server; ``port`` is the bound port (useful when asked for port 0)."""

    port: int
    server: WSGIServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def exposition_registry(multiproc_dir: str | Path | None = None) -> CollectorRegistry:
    """The registry to serve: the default one, or (multiprocess mode) one summing every process's files."""
    path = multiproc_dir or os.environ.get(MULTIPROC_ENV)
    if not path:
        return prometheus_client.REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(path))
    return registry


def start_metrics_server(
    port: int, addr: str = "0.0.0.0", *, registry: CollectorRegistry | None = None
) -> MetricsServer:
    """Serve ``/metrics`` on ``addr:port`` from a daemon thread (port 0: a free port)."""
    reg = registry or exposition_registry()
    try:
        server, thread = prometheus_client.start_http_server(port, addr=addr, registry=reg)
    except OSError as exc:
        msg = f"cannot serve metrics on {addr}:{port}: {exc.strerror}"
        raise ConfigError(msg, where="HEARTH_METRICS_PORT") from exc
    return MetricsServer(port=server.server_port, server=server, thread=thread)


# --- multiprocess mode (Celery prefork) ----------------------------------------------------------


def enable_multiprocess(directory: str | Path | None = None) -> Path:
    """Switch this process (and the children it will fork) to prometheus multiprocess mode.

    ``directory`` is emptied (a fresh temporary one if ``None``); stale files from an earlier run
    would otherwise be summed into this one's counters. Must run before the first metric exists.
    """
    if _default is not None:
        raise RuntimeError("enable_multiprocess() must be called before the first metric is created")
    path = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="hearth-metrics-"))
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(path)
    # prometheus_client picks its value class when first imported; re-pick it now that the env is set.
    _prom_values.ValueClass = _prom_values.get_value_class()
    return path


def mark_process_dead(pid: int | None = None) -> None:
    """Drop the live gauges of an exited process (call from the parent, or the child on its way out)."""
    if not multiprocess_enabled():
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid if pid is not None else os.getpid())


def install_celery_hooks() -> None:
    """Mark each Celery child process dead in the metrics files when it shuts down."""
    from celery.signals import worker_process_shutdown

    def _on_child_exit(pid: int | None = None, **_: Any) -> None:
        mark_process_dead(pid)

    worker_process_shutdown.connect(_on_child_exit, weak=False)

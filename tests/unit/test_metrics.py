"""PrometheusObserver records what the domain reports, and the metrics server serves it over HTTP."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from hearth.errors import ConfigError
from hearth.events import FanoutObserver, NullObserver, Observer
from settings import Settings
from worker.observability import setup_observability
from worker.observability.metrics import (
    HearthMetrics,
    MetricsServer,
    PrometheusObserver,
    normalise_endpoint,
    start_metrics_server,
)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def observer(registry: CollectorRegistry) -> PrometheusObserver:
    return PrometheusObserver(HearthMetrics(registry))


@pytest.fixture
def server(registry: CollectorRegistry) -> Iterator[MetricsServer]:
    srv = start_metrics_server(0, addr="127.0.0.1", registry=registry)
    yield srv
    srv.stop()


def scrape(srv: MetricsServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample served, keyed by (name, labels)."""
    resp = httpx.get(srv.url, timeout=10)
    resp.raise_for_status()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(resp.text)
        for s in fam.samples
    }


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def test_observers_satisfy_the_protocol(observer: PrometheusObserver) -> None:
    for obs in (observer, NullObserver(), FanoutObserver(observer)):
        assert isinstance(obs, Observer)


def test_every_observer_call_is_served_over_http(observer: PrometheusObserver, server: MetricsServer) -> None:
    observer.api_call("POST /containers", 200, 0.2)
    observer.api_call("GET /containers/cntr_abc123/files/cfile_9", 404, 0.05)
    observer.api_call("GET /containers/cntr_zz", "timeout", 60)
    observer.lease("analysts", 0.003, "taken")
    observer.lease("analysts", 0.001, "empty")
    observer.refresh("analysts", ok=True)
    observer.refresh("analysts", ok=False)
    observer.harvest("analysts", files=3, bytes=4096, failures=1)
    observer.harvest("analysts", files=1, bytes=10, failures=0)
    observer.containers("analysts", {"ready": 4, "leased": 2})
    observer.breaker("analysts", open=True)
    observer.tick(0.4, ok=True)
    observer.event("container.expired", pool="analysts", container_id="cntr_1")

    got = scrape(server)
    assert got[key("hearth_api_calls_total", endpoint="POST /containers", status="200")] == 1
    assert got[key("hearth_api_calls_total", endpoint="GET /containers/{id}/files/{id}", status="404")] == 1
    assert got[key("hearth_api_errors_total", endpoint="GET /containers/{id}/files/{id}", status="404")] == 1
    assert got[key("hearth_api_errors_total", endpoint="GET /containers/{id}", status="timeout")] == 1
    assert key("hearth_api_errors_total", endpoint="POST /containers", status="200") not in got
    assert got[key("hearth_api_call_seconds_count", endpoint="POST /containers")] == 1
    assert got[key("hearth_api_call_seconds_sum", endpoint="POST /containers")] == pytest.approx(0.2)
    assert got[key("hearth_leases_total", pool="analysts", outcome="taken")] == 1
    assert got[key("hearth_leases_total", pool="analysts", outcome="empty")] == 1
    assert got[key("hearth_lease_seconds_count", pool="analysts")] == 2
    assert got[key("hearth_lease_seconds_bucket", pool="analysts", le="0.005")] == 2
    assert got[key("hearth_refreshes_total", pool="analysts", outcome="ok")] == 1
    assert got[key("hearth_refreshes_total", pool="analysts", outcome="error")] == 1
    assert got[key("hearth_harvest_files_total", pool="analysts")] == 4
    assert got[key("hearth_harvest_bytes_total", pool="analysts")] == 4106
    assert got[key("hearth_harvest_failures_total", pool="analysts")] == 1
    assert got[key("hearth_containers", pool="analysts", state="ready")] == 4
    assert got[key("hearth_containers", pool="analysts", state="leased")] == 2
    assert got[key("hearth_breaker_open", pool="analysts")] == 1
    assert got[key("hearth_heartbeat_ticks_total", outcome="ok")] == 1
    assert got[key("hearth_heartbeat_last_tick_timestamp_seconds")] > 1_600_000_000
    assert got[key("hearth_events_total", kind="container.expired")] == 1

    # A state that emptied reads 0, a closed breaker 0.
    observer.containers("analysts", {"ready": 5})
    observer.breaker("analysts", open=False)
    got = scrape(server)
    assert got[key("hearth_containers", pool="analysts", state="leased")] == 0
    assert got[key("hearth_containers", pool="analysts", state="ready")] == 5
    assert got[key("hearth_breaker_open", pool="analysts")] == 0


def test_fanout_survives_a_failing_observer(observer: PrometheusObserver, registry: CollectorRegistry) -> None:
    class Broken(NullObserver):
        def refresh(self, pool: str, ok: bool) -> None:
            raise RuntimeError("boom")

    FanoutObserver(Broken(), observer).refresh("p", ok=True)
    assert registry.get_sample_value("hearth_refreshes_total", {"pool": "p", "outcome": "ok"}) == 1


def test_endpoint_ids_and_queries_are_normalised() -> None:
    assert normalise_endpoint("DELETE /containers/cntr_6a1b2c/files/cfile_x-9?after=3") == (
        "DELETE /containers/{id}/files/{id}"
    )
    assert normalise_endpoint("POST /files") == "POST /files"
    assert normalise_endpoint("GET /files/file-abc123/content") == "GET /files/{id}/content"


def test_a_port_in_use_is_a_config_error(server: MetricsServer) -> None:
    with pytest.raises(ConfigError, match="HEARTH_METRICS_PORT"):
        start_metrics_server(server.port, addr="127.0.0.1", registry=CollectorRegistry())


def test_setup_observability_serves_the_default_observer() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    settings = Settings(metrics_port=0, log_json=True, log_level="WARNING", sentry_dsn=None)
    obs = setup_observability(settings, component="test", secrets=["setup-domain-secret"])
    try:
        assert obs.sentry is False and obs.metrics_server is not None
        obs.observer.breaker("setup-pool", open=True)
        got = scrape(obs.metrics_server)
        assert got[key("hearth_breaker_open", pool="setup-pool")] == 1
    finally:
        obs.close()
        for h in list(root.handlers):
            if h not in saved[0]:
                root.removeHandler(h)
        root.setLevel(saved[1])
        logging.captureWarnings(False)

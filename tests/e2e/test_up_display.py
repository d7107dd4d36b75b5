"""The status display of ``hearth up``: how transitions read, the plain status line, the restart counts."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

from rich.console import Console

from hearth.pool.feed import StateEvent
from settings import Settings
from worker.up import Child, PoolRow, Snapshot, Supervisor


def test_transitions_read_as_new_moved_and_gone_records() -> None:
    assert StateEvent("1700000000123-0", "beta", "c-4", None, "CREATING").describe() == "beta: c-4 CREATING"
    assert StateEvent("1-0", "alpha", "c-1", "CREATING", "READY").describe() == "alpha: c-1 CREATING -> READY"
    assert StateEvent("1-1", "beta", "c-3", "GONE", "forgotten").describe() == "beta: c-3 gone"
    assert StateEvent("1700000000123-0", "beta", "c-4", None, "CREATING").at == 1_700_000_000.123


def test_plain_line_lists_every_pool_and_the_heartbeat() -> None:
    snap = Snapshot(rows=[
        PoolRow("alpha", desired=2, ready=1, leased=1, provisioning=1, expiring=1, breaker="closed", next_change=None),
        PoolRow("beta", desired=0, ready=0, leased=0, provisioning=0, expiring=0, breaker="open", next_change=None),
    ], heartbeat=True)
    line = Supervisor.plain_line(snap)
    assert "alpha desired 2 ready 1 leased 1 provisioning 1 expiring 1 $/h - breaker closed" in line
    assert "beta desired 0" in line and "breaker open" in line and "heartbeat alive" in line
    assert Supervisor.plain_line(Snapshot(error="redis down")) == "status unavailable: redis down"
    assert Supervisor.plain_line(snap, "worker pid 7 restarts 1").endswith("; processes: worker pid 7 restarts 1")


def test_render_shows_counts_and_recent_events(tmp_path: Path) -> None:
    sup = Supervisor(Settings(data_dir=tmp_path, pools=Path("pools.yaml")))
    sup.events.append("12:00:00 alpha: c-1 CREATING -> READY")
    snap = Snapshot(rows=[PoolRow("alpha", 2, 2, 0, 0, 1, "closed", "2030-01-01T07:00:00+00:00")], heartbeat=True)
    console = Console(width=200, record=True)
    console.print(sup.render(snap))
    text = console.export_text()
    assert "alpha" in text and "2030-01-01T07:00:00+00:00" in text
    assert "c-1 CREATING -> READY" in text and "heartbeat alive" in text


def test_processes_line_counts_restarts_and_shows_a_pending_one(tmp_path: Path) -> None:
    sup = Supervisor(Settings(data_dir=tmp_path, pools=Path("pools.yaml")))
    waiting = Child("worker", ["true"], tmp_path / "w.log", restarts=2, restart_at=110.0)
    sup.children = [waiting, Child("heartbeat", ["true"], tmp_path / "h.log")]
    assert sup.children_line(now=100.0) == "worker restarting in 10 s restarts 2, heartbeat pid None restarts 0"


def test_a_dead_child_restarts_after_a_doubling_capped_backoff_that_resets_once_it_ran_long(
    tmp_path: Path,
) -> None:
    # A real child that dies at once, every time; the supervisor's clock is handed in.
    sup = Supervisor(Settings(data_dir=tmp_path, pools=Path("pools.yaml")), console=Console(file=io.StringIO()))
    child = Child("worker", [sys.executable, "-c", "print('boom'); raise SystemExit(3)"], tmp_path / "w.log")
    sup.children = [child]
    child.start(dict(os.environ))
    for n, backoff in enumerate([1, 2, 4, 8, 16, 30, 30], start=1):
        assert child.proc is not None and child.proc.wait(30) == 3
        now = child.started_at + 0.5
        (said,) = sup.supervise(now=now)
        assert f"exited with code 3 after 0 s; restart {n} in {backoff} s" in said
        assert sup.supervise(now=now + backoff - 0.1) == []  # still waiting
        assert "restarting in" in sup.children_line(now=now)
        (said,) = sup.supervise(now=now + backoff)
        assert said.endswith(f"worker restarted: pid {child.pid}, restart {n}") and child.restarts == n
    # It ran for longer than HEALTHY_AFTER before dying: the next wait is the shortest again.
    assert child.proc is not None and child.proc.wait(30) == 3
    (said,) = sup.supervise(now=child.started_at + 61)
    assert "restart 8 in 1 s" in said
    assert "boom" in child.tail()
    sup.stopping.set()  # a pending restart does not happen once stopping
    assert sup.supervise(now=child.started_at + 1000) == [] and child.restarts == 7
    sup.shutdown()


def test_the_view_shows_each_pools_burn_rate_and_why_a_paused_pool_is_paused(tmp_path: Path) -> None:
    sup = Supervisor(Settings(data_dir=tmp_path, pools=Path("pools.yaml")))
    reason = "create failed: environment variable GH_TOKEN is not set"
    snap = Snapshot(rows=[
        PoolRow("alpha", 2, 2, 1, 0, 0, "closed", None, burn_usd_per_hour=0.27),
        PoolRow("beta", 1, 0, 0, 0, 0, "open", None, burn_usd_per_hour=0.0, breaker_reason=reason,
                breaker_permanent=True),
        PoolRow("gone", 0, 0, 0, 0, 0, "closed", None),
    ], heartbeat=True)
    console = Console(width=240, record=True)
    console.print(sup.render(snap))
    text = console.export_text()
    assert "$/h" in text and "0.270" in text
    assert f"beta: breaker open until the pools file or the environment changes: {reason}" in text
    assert "alpha: breaker" not in text  # a closed breaker has nothing to explain
    line = Supervisor.plain_line(snap)
    assert "alpha desired 2 ready 2 leased 1 provisioning 0 expiring 0 $/h 0.270 breaker closed" in line
    assert f"$/h 0.000 breaker open until the pools file or the environment changes: {reason}" in line
    assert "gone desired 0 ready 0 leased 0 provisioning 0 expiring 0 $/h - breaker closed" in line
    # A breaker open for a cool-down, without the permanent flag, says only its reason.
    cooling = PoolRow("c", 0, 0, 0, 0, 0, "open", None, breaker_reason="3 creates failed")
    assert cooling.breaker_text() == "open: 3 creates failed"

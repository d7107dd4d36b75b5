"""The status display of ``hearth up``: transitions between snapshots, and the plain status line."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from settings import Settings
from worker.up import PoolRow, Snapshot, Supervisor, state_changes


def test_state_changes_report_new_moved_and_gone_records() -> None:
    before = {"c-1": ("alpha", "CREATING"), "c-2": ("alpha", "READY"), "c-3": ("beta", "LEASED")}
    after = {"c-1": ("alpha", "READY"), "c-2": ("alpha", "READY"), "c-4": ("beta", "CREATING")}
    assert sorted(state_changes(before, after)) == sorted([
        "alpha: c-1 CREATING -> READY",
        "beta: c-4 CREATING",
        "beta: c-3 gone",
    ])
    assert state_changes(after, after) == []


def test_plain_line_lists_every_pool_and_the_heartbeat() -> None:
    snap = Snapshot(rows=[
        PoolRow("alpha", desired=2, ready=1, leased=1, provisioning=1, expiring=1, breaker="closed", next_change=None),
        PoolRow("beta", desired=0, ready=0, leased=0, provisioning=0, expiring=0, breaker="open", next_change=None),
    ], heartbeat=True)
    line = Supervisor.plain_line(snap)
    assert "alpha desired 2 ready 1 leased 1 provisioning 1 expiring 1 breaker closed" in line
    assert "beta desired 0" in line and "breaker open" in line and "heartbeat alive" in line
    assert Supervisor.plain_line(Snapshot(error="redis down")) == "status unavailable: redis down"


def test_render_shows_counts_and_recent_events(tmp_path: Path) -> None:
    sup = Supervisor(Settings(data_dir=tmp_path, pools=Path("pools.yaml")))
    sup.events.append("12:00:00 alpha: c-1 CREATING -> READY")
    snap = Snapshot(rows=[PoolRow("alpha", 2, 2, 0, 0, 1, "closed", "2030-01-01T07:00:00+00:00")], heartbeat=True)
    console = Console(width=200, record=True)
    console.print(sup.render(snap))
    text = console.export_text()
    assert "alpha" in text and "2030-01-01T07:00:00+00:00" in text
    assert "c-1 CREATING -> READY" in text and "heartbeat alive" in text

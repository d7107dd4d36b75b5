"""``hearth cost``: what each pool's containers cost, idle and leased, and what a lease costs.

Reads the hourly aggregates the heartbeat meters (``hearth/pool/metering.py``) and the live view of
each pool (burn rate, today's spend and its budget). Changes nothing.
"""

from __future__ import annotations

import re
from typing import Any

import typer
from rich.table import Table

from worker.cli_support import _print_json, _runtime, out

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``7d`` -> seconds; a clear error naming the option otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration like 30m, 24h or 7d", param_hint="--since")
    return float(match.group(1)) * _UNIT[match.group(2)]


def cost(
    since: str = typer.Option("24h", "--since", help="Window to report: 30m, 24h, 7d (whole hours)."),
    pool: str | None = typer.Option(None, "--pool", help="Only this pool."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Container-seconds (idle, leased, other), dollars, leases and dollars per lease, per pool and tier."""
    from hearth.planner import Planner

    window = parse_duration(since)
    with _runtime() as rt:
        now = rt.clock.now()
        names = [pool] if pool else sorted(rt.pools().pools)
        if pool:
            rt.pool(pool)  # an unknown pool is a clear error, not an empty report
        rows = rt.costs.report(names, now - window, now)
        live = {p.pool: p.sizing for p in Planner(rt).plan(now) if p.pool in names}
        data: dict[str, Any] = {
            "since_seconds": window,
            "rows": [r.to_json() for r in rows],
            "total_usd": round(sum(r.usd for r in rows), 6),
            "pools": {name: (s.to_json() if s else None) for name, s in live.items()},
        }
        if as_json:
            _print_json(data)
            return
        table = Table("pool", "tier", "idle s", "leased s", "other s", "$", "leases", "$/lease", title=f"last {since}")
        for r in rows:
            per = "-" if r.usd_per_lease is None else f"{r.usd_per_lease:.4f}"
            table.add_row(r.pool, r.tier, f"{r.seconds['idle']:.0f}", f"{r.seconds['leased']:.0f}",
                          f"{r.seconds['other']:.0f}", f"{r.usd:.4f}", str(r.leases), per)
        out.print(table)
        for name, s in live.items():
            if s is not None:
                budget = s.spend.budget_usd_per_day
                out.print(f"{name}: burning ${s.spend.burn_usd_per_hour:.3f}/h, ${s.spend.today_usd:.4f} today"
                          + (f" of ${budget:g}/day" if budget else "") + f"; {s.sizing.why}")
        out.print(f"total ${data['total_usd']:.4f}")


def register(app: typer.Typer) -> None:
    app.command("cost")(cost)

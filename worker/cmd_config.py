"""``hearth validate`` and ``hearth schema``: check a pools file without side effects, print its schema.

``validate`` is what a user runs before deploying a pools file and what CI can run on one: every
problem with its place, exit 1; or one summary line per pool, exit 0. ``--json`` is for scripts.
Nothing here touches Redis or the API.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from settings import Settings
from settings.pools import PoolsFile, PoolSpec
from settings.pools_errors import PoolsFileError, PoolsFileIssue
from settings.pools_loader import load_pools


def _pool_summary(spec: PoolSpec, now: datetime) -> dict[str, Any]:
    min_ready, buffer = spec.sizes_at(now)
    nxt = spec.next_schedule_change(now)
    return {
        "name": spec.name,
        "min_ready": spec.min_ready,
        "buffer": spec.buffer,
        "max_total": spec.max_total,
        "now": {"min_ready": min_ready, "buffer": buffer},
        "next_schedule_change": nxt.isoformat() if nxt else None,
        "memory_limit": spec.container.memory_limit,
        "expires_after_minutes": spec.container.expires_after_minutes,
        "inputs": len(spec.resolved_inputs()),
        "schedules": len(spec.schedules),
        "lease_on_release": spec.lease.on_release,
    }


def _summary_line(s: dict[str, Any]) -> str:
    sizes = f"min_ready {s['min_ready']}, buffer {s['buffer']}, max_total {s['max_total']}"
    if s["schedules"]:
        sizes += f" (now {s['now']['min_ready']}/{s['now']['buffer']}, {s['schedules']} schedules)"
    return (
        f"[bold]{escape(s['name'])}[/]: {sizes}; {s['memory_limit']}, expires after "
        f"{s['expires_after_minutes']} min; {s['inputs']} input file(s); lease → {s['lease_on_release']}"
    )


def _warnings(pools: PoolsFile) -> list[str]:
    return [
        f"pool {pool!r}: environment variable {var} (a domain secret) is not set here; "
        "containers cannot be created where it is missing"
        for pool, var in pools.missing_secret_envs()
    ]


def _print_issues(console: Console, path: Path, issues: list[PoolsFileIssue]) -> None:
    n = len(issues)
    console.print(f"[bold red]{escape(str(path))}: {n} problem{'s' if n != 1 else ''}[/]")
    for issue in issues:
        scope = " ".join(x for x in (f"pool {issue.pool!r}" if issue.pool else "", issue.field or "") if x)
        console.print(
            f"  [cyan]{escape(issue.place)}[/]" + (f" [yellow]{escape(scope)}[/]" if scope else "")
            + f": {escape(issue.message)}"
        )


def validate(
    file: Annotated[Path | None, typer.Argument(help="The pools file (default HEARTH_POOLS).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Check a pools file: every problem with file, line, pool and field (exit 1), or a summary per pool."""
    path = file if file is not None else Settings().resolved_pools
    console = Console(highlight=False, soft_wrap=True)
    try:
        pools = load_pools(path)
    except PoolsFileError as exc:
        if as_json:
            typer.echo(json.dumps({"ok": False, "file": str(path), "errors": [i.to_dict() for i in exc.errors]},
                                  indent=2))
        else:
            _print_issues(console, path, exc.errors)
        raise typer.Exit(1) from None
    now = datetime.now(UTC)
    summaries = [_pool_summary(spec, now) for spec in pools.pools.values()]
    warnings = _warnings(pools)
    if as_json:
        typer.echo(json.dumps({"ok": True, "file": str(path), "pools": summaries, "warnings": warnings}, indent=2))
        return
    console.print(f"[green]{escape(str(path))}: valid, {len(summaries)} pool(s)[/]")
    for s in summaries:
        console.print("  " + _summary_line(s))
    for w in warnings:
        console.print(f"  [yellow]warning:[/] {escape(w)}")


def schema() -> None:
    """Print the JSON Schema of the pools file (for editors and CI)."""
    typer.echo(json.dumps(PoolsFile.model_json_schema(), indent=2))


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
    app.command("schema")(schema)

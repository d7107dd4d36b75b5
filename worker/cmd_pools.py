"""Pool commands: ``heartbeat``, ``lease``, ``release``, ``harvest``, ``plan``, ``status``, ``gc``, ``drain``.

Each prints a readable table (rich) or, with ``--json``, one JSON document; exit codes are for
scripts: 0 done, 1 failed (the reason on stderr), 2 bad usage or configuration, 3 pool empty.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import typer
from rich.markup import escape
from rich.table import Table

from settings import Settings
from worker.cli_support import EXIT_FAILED, _print_json, _runtime, out


def public_url(url: str | None) -> str | None:
    """A URL without its password (for status output and logs)."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.query:  # redis-py also takes ?password=… in the query
        query = "&".join(
            f"{k}=***" if k.lower() in ("password", "pass") else f"{k}={v}" for k, v in parse_qsl(parts.query)
        )
        parts = parts._replace(query=query)
    if parts.password is None:
        return urlunsplit(parts)
    netloc = parts.hostname or ""
    if parts.username:
        netloc = f"{parts.username}:***@{netloc}"
    elif parts.password:
        netloc = f":***@{netloc}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def heartbeat() -> None:
    """Run the heartbeat: reconcile every pool each HEARTH_HEARTBEAT_INTERVAL seconds (one leader)."""
    from worker.heartbeat import run_heartbeat

    run_heartbeat(Settings())


def lease(
    pool: str = typer.Argument(..., help="Pool to lease from."),
    ttl: float | None = typer.Option(None, "--ttl", help="Lease time to live, s (default: the pool's)."),
    wait: float | None = typer.Option(None, "--wait", help="Wait for a ready container, s (default: the pool's)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    session: str | None = typer.Option(
        None, "--session", help="Session key: the same container for the same key (restored if it was lost)."
    ),
) -> None:
    """Lease a ready container of POOL and print its id and lease id."""
    from tasks.app import create_app
    from tasks.pools import HearthPools, lease_json

    if session is not None:
        from worker.cmd_session import lease_session

        lease_session(pool, session, wait=wait, as_json=as_json)
        return
    with _runtime() as rt:
        got = HearthPools(rt, create_app(rt.settings)).lease(pool, ttl=ttl, wait=wait)
        data = lease_json(got)
        if as_json:
            _print_json(data)
        else:
            out.print(f"leased [bold]{got.container_id}[/] ({got.name}) lease [bold]{got.lease_id}[/] "
                      f"until {data['expires_at']}")


def release(
    container_id: str = typer.Argument(..., help="The leased container's id."),
    lease_id: str = typer.Option(..., "--lease", help="The lease id `hearth lease` printed."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Release a lease: the container's outputs are harvested and it is retired (or reused)."""
    from tasks.app import create_app
    from tasks.pools import HearthPools

    with _runtime() as rt:
        released = HearthPools(rt, create_app(rt.settings)).release(container_id, lease_id)
        if as_json:
            _print_json({"container_id": container_id, "name": released.name, "state": released.state.value})
        else:
            out.print(f"released {container_id}: {released.state.value.lower()}")


def harvest(
    container_id: str = typer.Argument(..., help="Container to harvest."),
    to: str | None = typer.Option(None, "--to", help="Storage URL (default: the pool's target)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Copy a container's outputs to durable storage now (in this process)."""
    from hearth.operations import Operations
    from worker.cmd_fill import harvest_progress

    with _runtime() as rt:
        with harvest_progress(show=not as_json and out.is_terminal) as progress:  # a byte bar on a terminal
            report = Operations(rt).harvest(container_id, to=to, progress=progress)
        if as_json:
            _print_json(report.summary())
        else:
            out.print(f"harvested {report.files} files ({report.bytes} bytes) to {report.target}; "
                      f"{report.already} already there, {report.skipped} skipped, {report.failures} failed")
        if not report.complete:
            raise typer.Exit(EXIT_FAILED)


def plan(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Print what the heartbeat would do now, changing nothing."""
    from hearth.planner import Planner

    with _runtime() as rt:
        plans = Planner(rt).plan()
        if as_json:
            _print_json([p.to_json() for p in plans])
            return
        table = Table("pool", "desired ready", "why", "counts", "breaker", "actions")
        for p in plans:
            actions = "\n".join(_describe(a.to_json()) for a in p.actions) or "-"
            counts = ", ".join(f"{k} {v}" for k, v in sorted(p.counts.items())) or "-"
            why = p.sizing.sizing.why if p.sizing else "-"
            table.add_row(p.pool, str(p.desired_ready), why, counts,
                          _breaker_text(p.breaker, p.breaker_reason, p.breaker_permanent), actions)
        out.print(table)


def _breaker_text(state: str, why: str | None, permanent: bool) -> str:
    """The breaker as a person reads it: its state, and why it is not closed."""
    if state == "closed" or not why:
        return state
    return escape(f"{state}{' until the pools file or the environment changes' if permanent else ''}: {why}")


def _describe(action: dict[str, Any]) -> str:
    kind = action.pop("kind")
    action.pop("pool", None)
    return f"{kind} " + " ".join(f"{k}={v}" for k, v in action.items() if v is not None)


def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Per pool: desired, and containers by state; the heartbeat's health."""
    from hearth.operations import Operations
    from hearth.planner import Planner

    with _runtime() as rt:
        plans = Planner(rt).plan()
        beat = rt.store.health("heartbeat")
        fallbacks = rt.staging.fallbacks()
        staged = Operations(rt).gc_staged(dry_run=True)
        data = {
            "api_base": rt.client.base_url,
            "backend": rt.settings.backend.value,
            "redis_url": public_url(rt.settings.resolved_redis_url),
            "heartbeat": beat,
            "pools_file": str(rt.settings.resolved_pools),
            "pools_error": rt.pools_error,
            "pools": {
                p.pool: {
                    "desired": p.desired_ready,
                    "min_ready": p.min_ready,
                    "buffer": p.buffer,
                    "max_total": p.max_total,
                    **{s: p.counts.get(s, 0) for s in ("ready", "leased", "creating", "seeding", "harvesting",
                                                        "deleting", "expired", "failed")},
                    "provisioning": p.counts.get("creating", 0) + p.counts.get("seeding", 0),
                    "breaker": p.breaker,
                    "breaker_reason": p.breaker_reason,
                    "breaker_permanent": p.breaker_permanent,
                    "breaker_retry": p.breaker_retry,
                    "draining": p.draining,
                    "next_schedule_change": p.next_schedule_change,
                    "error": p.error,
                    # How its inputs get in: copied from the staged Files-API files at create, or
                    # streamed into each container (a fallback, with its reason).
                    "inputs": _inputs_mode(fallbacks.get(p.pool)),
                    "cost": p.sizing.spend.to_json() if p.sizing else None,
                    "sizing": p.sizing.to_json() if p.sizing else None,
                }
                for p in plans
            },
            "staged": {"in_use": staged["in_use"], "unused": staged["unused"], "grace": staged["grace"]},
        }
        if as_json:
            _print_json(data)
            return
        out.print(f"API {data['api_base']} ({data['backend']}), Redis {data['redis_url']}, "
                  f"heartbeat {'alive' if beat else '[red]not running[/]'}")
        table = Table("pool", "desired", "ready", "leased", "provisioning", "expired/failed", "breaker", "$/h",
                      "next change")
        pools: dict[str, dict[str, Any]] = data["pools"]  # type: ignore[assignment]
        for name, p in pools.items():
            burn = f"{p['cost']['burn_usd_per_hour']:.3f}" if p["cost"] else "-"
            table.add_row(name, str(p["desired"]), str(p["ready"]), str(p["leased"]), str(p["provisioning"]),
                          str(p["expired"] + p["failed"]), str(p["breaker"]), burn,
                          str(p["next_schedule_change"] or "-"))
        out.print(table)
        for name, p in pools.items():  # the reasons below the table: too long for a cell
            if p["breaker"] != "closed" and p["breaker_reason"]:
                out.print(f"[red]{name}: breaker "
                          f"{_breaker_text(p['breaker'], p['breaker_reason'], p['breaker_permanent'])}[/]",
                          highlight=False)
            if p["sizing"]:
                out.print(f"{name}: {p['sizing']['why']}", highlight=False)
            if p["inputs"]["mode"] == "streamed":
                out.print(f"[yellow]{name}: inputs streamed into each container (not copied by file_ids): "
                          f"{escape(p['inputs']['reason'])}[/]", highlight=False)
        unused = staged["unused"]
        out.print(f"staged inputs: {staged['in_use']} in use, {len(unused)} unused "
                  f"(deleted {staged['grace']:.0f} s after last use)", highlight=False)
        for f in unused:
            out.print(f"  unused: {escape(f['name'])} ({f['file_id']})", highlight=False)


def _inputs_mode(fallback: dict[str, str] | None) -> dict[str, Any]:
    if fallback is None:
        return {"mode": "copied", "reason": None}
    return {"mode": "streamed", "reason": fallback.get("reason"), "since": float(fallback.get("at") or 0)}


def gc(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be deleted."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Delete orphans now (containers with Hearth's prefix that no record owns, after the grace) and staged
    inputs no pool uses (after HEARTH_STAGED_GRACE)."""
    from hearth.operations import Operations
    from hearth.planner import Planner
    from hearth.pool.reconcile import DeleteOrphan

    with _runtime() as rt:
        plans = Planner(rt).plan(remote=Planner(rt).remote())
        orphans = [a for p in plans for a in p.actions if isinstance(a, DeleteOrphan)]
        done = [] if dry_run else [Operations(rt).delete_orphan(o.container_id, o.name).to_json() for o in orphans]
        deleted = [d for d in done if d["state"] == "GONE"]
        staged = Operations(rt).gc_staged(dry_run=dry_run)
        if as_json:
            _print_json({"orphans": [o.to_json() for o in orphans], "deleted": deleted, "dry_run": dry_run,
                         "staged": staged})
            return
        if dry_run:
            for o in orphans:
                out.print(f"would delete {o.container_id} ({o.name})")
            out.print(f"{len(orphans)} orphan(s)")
        else:
            for d in done:
                out.print(f"{'deleted' if d['state'] == 'GONE' else 'kept (' + d['detail'] + ')'} {d['name']}")
            out.print(f"{len(deleted)} orphan(s) deleted")
        gone = {f["key"] for f in staged["deleted"]}
        for f in staged["unused"]:
            if f["key"] in gone:
                out.print(f"deleted staged input {escape(f['name'])} ({f['file_id']})", highlight=False)
            else:
                left = max(0.0, staged["grace"] - (rt.clock.now() - (f["unused_since"] or rt.clock.now())))
                out.print(f"unused staged input {escape(f['name'])} ({f['file_id']}): deleted in {left:.0f} s",
                          highlight=False)
        out.print(f"{len(staged['deleted'])} staged input(s) deleted, {len(staged['unused']) - len(gone)} "
                  f"unused kept for the grace, {staged['in_use']} in use")


def drain(
    pool: str = typer.Argument(..., help="Pool to drain."),
    undo: bool = typer.Option(False, "--undo", help="Stop draining: scale back to the pools file."),
) -> None:
    """Scale POOL to zero idle containers (leased ones finish their lease), or --undo."""
    from hearth.planner import Planner

    with _runtime() as rt:
        rt.pool(pool)
        Planner(rt).set_drain(pool, not undo)
        out.print(f"pool {pool}: {'draining' if not undo else 'back to its pools-file sizes'}")


def register(app: typer.Typer) -> None:
    app.command("heartbeat")(heartbeat)
    app.command("lease")(lease)
    app.command("release")(release)
    app.command("harvest")(harvest)
    app.command("plan")(plan)
    app.command("status")(status)
    app.command("gc")(gc)
    app.command("drain")(drain)

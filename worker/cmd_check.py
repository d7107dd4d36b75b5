"""``hearth check``: exit 0 when the deployment is healthy, 1 when it is not, for systemd and Kubernetes probes.

Why it exists: a probe wants one exit status, and what it depends on is in Redis (``hearth.health``
says which keys and why): Redis answers; at least ``--workers`` workers keep their health key alive;
a heartbeat holds the leader lease and its last tick succeeded; Redis does not evict (an evicting Redis
is a failure); Redis persists (AOF or snapshots; not persisting is a warning, a failure with
``--strict``). It reads only Redis: no pools file, no API call, nothing written.

A Redis database holds one deployment per key prefix (``HEARTH_KEY_PREFIX``): the check looks at its
own prefix only, and says so.

Exit codes: 0 healthy, 1 unhealthy (any failure, or any warning with ``--strict``), 2 a configuration
error (no Redis configured, or a setting is invalid). ``--json`` prints the report object
(``HealthReport.to_json``): ``healthy``, ``strict``, ``prefix``, ``redis``, ``embedded_redis``,
``checks`` (``name``, ``verdict`` ok|warn|fail, ``detail``), ``reasons``, ``workers``, ``heartbeat``,
``redis_settings``, ``note``.
"""

from __future__ import annotations

import redis
import typer
from pydantic import ValidationError
from rich.table import Table

from hearth.clock import SystemClock
from hearth.health import HealthReport, check_deployment
from settings import Settings
from worker.cli_support import EXIT_CONFIG, EXIT_FAILED, _print_json, err, out

_STYLE = {"ok": "green", "warn": "yellow", "fail": "red"}


def _label(client: redis.Redis) -> str:
    """Where the Redis is, without its password."""
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return f"unix://{kw['path']}?db={kw.get('db', 0)}"
    return f"redis://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def _print(report: HealthReport) -> None:
    table = Table("check", "", "detail", show_header=False, box=None)
    for f in report.findings:
        table.add_row(f.name, f"[{_STYLE[f.verdict]}]{f.verdict}[/]", f.detail)
    out.print(table)
    if report.healthy:
        out.print("[green]healthy[/]" + (" (strict)" if report.strict else ""))
    else:
        out.print("[red]unhealthy:[/] " + "; ".join(f"{f.name}: {f.detail}" for f in report.failures))


def check(
    workers: int = typer.Option(1, "--workers", min=0, help="Workers that must be alive."),
    heartbeat: bool = typer.Option(True, "--heartbeat/--no-heartbeat", help="Require a live heartbeat."),
    strict: bool = typer.Option(False, "--strict", help="Warnings (e.g. Redis does not persist) fail too."),
    timeout: float = typer.Option(5.0, "--timeout", min=0.1, help="Redis connect and read timeout, s."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Exit 0 if this deployment is healthy, 1 if not: workers, heartbeat, Redis eviction and persistence."""
    try:
        settings = Settings()
    except ValidationError as exc:  # names the fields, never echoes their values (hide_input_in_errors)
        err.print(f"[red]configuration:[/] {exc}")
        raise typer.Exit(EXIT_CONFIG) from None
    url = settings.resolved_redis_url
    if not url:
        err.print(f"[red]configuration:[/] HEARTH_REDIS_URL is not set and no `hearth up` runs in {settings.data_dir}")
        raise typer.Exit(EXIT_CONFIG)
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        report = check_deployment(
            client, SystemClock(), prefix=settings.key_prefix, redis_label=_label(client),
            embedded=not settings.redis_url, min_workers=workers, heartbeat=heartbeat, strict=strict,
        )
    finally:
        client.close()
    if as_json:
        _print_json(report.to_json())
    else:
        _print(report)
    if not report.healthy:
        raise typer.Exit(EXIT_FAILED)


def register(app: typer.Typer) -> None:
    app.command("check")(check)

"""``hearth worker``: the long-lived Celery worker process (Procfile ``worker``).

Every Containers API call and file transfer runs here. Scale out by running more of these, on any
machine, against the same Redis. SIGTERM is a warm shutdown: running tasks finish; tasks that
cannot finish in time are redelivered (acks_late), since every Hearth task is idempotent. A worker
that Celery stops on an error exits with Celery's non-zero status, so a supervisor restarts it.

Observability is set up here, before Celery starts: logging (Celery keeps our redacting handler),
Sentry, and the metrics server on ``HEARTH_METRICS_PORT``. Its observer is handed to
``tasks.runtime`` so every API call a task makes is counted. With the prefork pool the children's
samples go to multiprocess files under ``<data_dir>/metrics`` that the parent's server sums.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click
import typer

from settings import Settings, load_pools
from settings.pools import NetworkPolicyAllowlist, PoolsFileError

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)


def domain_secret_values(settings: Settings) -> list[str]:
    """The ``domain_secrets`` values the pools file names, so logs and Sentry can mask them.

    Best effort: a pools file that does not load yet is reported by the tasks that need it.
    """
    try:
        pools = load_pools(Path(settings.resolved_pools))
    except (OSError, PoolsFileError):
        return []
    values: list[str] = []
    for spec in pools.pools.values():
        policy = spec.container.network_policy
        if isinstance(policy, NetworkPolicyAllowlist):
            values += [v for ref in policy.domain_secrets if (v := os.environ.get(ref.value_env))]
    return values


def run_celery(app: Celery, argv: list[str]) -> int:
    """Run Celery's command line on ``app`` and return its exit status.

    Neither ``worker_main`` nor ``app.start`` does: both drop it, since click (8.2+), run with
    ``standalone_mode=False``, returns the status of ``ctx.exit(code)`` instead of raising it, and
    Celery only looks for the raise. A worker Celery stopped on an unrecoverable error would then
    exit 0, and a supervisor that restarts on failure would not restart it.
    """
    from celery.bin.celery import celery as celery_command

    celery_command.params[0].default = app  # what ``app.start`` does: the ``-A`` default
    try:
        code = celery_command.main(args=argv, standalone_mode=False)
    except click.exceptions.Exit as exc:  # older click raises it
        code = exc.exit_code
    finally:
        celery_command.params[0].default = None
    return int(code) if isinstance(code, int) else 0


def worker(
    concurrency: int | None = typer.Option(None, help="Tasks at once (default HEARTH_WORKER_CONCURRENCY)."),
    pool: str | None = typer.Option(None, help="threads | prefork | solo (default HEARTH_WORKER_POOL)."),
    loglevel: str | None = typer.Option(None, help="Log level (default HEARTH_LOG_LEVEL)."),
    hostname: str | None = typer.Option(
        None, help="Node name (default celery@<host>); each worker on one machine needs its own (e.g. w2@%h): "
        "it names the worker's health key, which `hearth check` counts.",
    ),
) -> None:
    """Run a Celery worker that executes Hearth's tasks."""
    from tasks.app import create_app
    from tasks.runtime import set_observer
    from worker.observability import install_celery_logging, setup_observability

    settings = Settings()
    pool_kind = pool or settings.worker_pool
    level = loglevel or settings.log_level
    secrets = domain_secret_values(settings)
    # Prefork children run the tasks: their samples must reach the parent's server through files.
    multiprocess_dir = settings.data_dir / "metrics" if pool_kind == "prefork" else None
    obs = setup_observability(settings, component="worker", secrets=secrets, multiprocess_dir=multiprocess_dir)
    install_celery_logging(level, settings.log_json, secrets=secrets)
    set_observer(obs.observer)
    if obs.metrics_server is not None:
        log.info("metrics on %s", obs.metrics_server.url)
    app = create_app(settings)
    argv = [
        "worker",
        "--concurrency", str(concurrency or settings.worker_concurrency),
        "--pool", pool_kind,
        "--loglevel", level.upper(),
        "--without-gossip", "--without-mingle",
        *(["--hostname", hostname] if hostname else []),
    ]
    try:
        code = run_celery(app, argv)
    finally:
        set_observer(None)
        obs.close()
    if code:
        log.error("worker: Celery stopped with exit status %s", code)
        raise typer.Exit(int(code))


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)

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

import typer

from settings import Settings, load_pools
from settings.pools import NetworkPolicyAllowlist, PoolsFileError

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
        # Not ``worker_main``: it drops the exit status, and a worker Celery stopped on an
        # unrecoverable error would exit 0, so a supervisor that restarts on failure would not.
        code = app.start(argv)
    finally:
        set_observer(None)
        obs.close()
    if code:
        log.error("worker: Celery stopped with exit status %s", code)
        raise typer.Exit(int(code))


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)

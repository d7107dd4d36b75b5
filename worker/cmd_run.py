"""``hearth worker``: the long-lived Celery worker process (Procfile ``worker``).

Every Containers API call and file transfer runs here. Scale out by running more of these, on any
machine, against the same Redis. SIGTERM is a warm shutdown: running tasks finish; tasks that
cannot finish in time are redelivered (acks_late), since every Hearth task is idempotent.
"""

from __future__ import annotations

import typer

from settings import Settings


def worker(
    concurrency: int | None = typer.Option(None, help="Tasks at once (default HEARTH_WORKER_CONCURRENCY)."),
    pool: str | None = typer.Option(None, help="threads | prefork | solo (default HEARTH_WORKER_POOL)."),
    loglevel: str | None = typer.Option(None, help="Log level (default HEARTH_LOG_LEVEL)."),
) -> None:
    """Run a Celery worker that executes Hearth's tasks."""
    from tasks.app import create_app

    settings = Settings()
    app = create_app(settings)
    argv = [
        "worker",
        "--concurrency", str(concurrency or settings.worker_concurrency),
        "--pool", pool or settings.worker_pool,
        "--loglevel", (loglevel or settings.log_level).upper(),
        "--without-gossip", "--without-mingle",
    ]
    app.worker_main(argv)


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)

"""``hearth up``: the one command a new user runs (see ``worker.up`` for what it starts and stops)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from settings import Settings


def up(
    pools: Annotated[
        Path | None, typer.Option("--pools", help="Pools file (default HEARTH_POOLS, else examples/pools.yaml).")
    ] = None,
    stop_timeout: Annotated[
        float, typer.Option("--stop-timeout", help="Seconds a child may take to stop before SIGKILL.")
    ] = 20.0,
) -> None:
    """Run Redis, the local API, a worker and the heartbeat in one supervisor, with a live status."""
    from worker.up import Supervisor

    settings = Settings()
    if pools is not None:
        settings = settings.model_copy(update={"pools": pools})
    code = Supervisor(settings, stop_timeout=stop_timeout).run()
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("up")(up)

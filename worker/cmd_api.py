"""``hearth api``: serve the local Containers API in the foreground.

It prints the base URLs it serves and stops cleanly on SIGINT/SIGTERM (uvicorn's signal handling).
Defaults come from ``Settings`` (``HEARTH_LOCAL_HOST``, ``HEARTH_LOCAL_PORT``, ``HEARTH_DATA_DIR``/localapi,
``HEARTH_FAULTS``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hearth.errors import HearthError
from hearth.localapi import LocalAPIServer
from hearth.localapi.devswitches import FILE_IDS_MODES, DevSwitches
from settings.config import Settings


def api(
    host: Annotated[str | None, typer.Option(help="Address to bind. Default HEARTH_LOCAL_HOST (127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind. Default HEARTH_LOCAL_PORT (8650).")] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Where metadata and file bytes live. Default <data_dir>/localapi.")
    ] = None,
    api_key: Annotated[
        list[str] | None,
        typer.Option("--api-key", help="Accepted API key (repeat for several; each key is a tenant). Default: none."),
    ] = None,
    dev: Annotated[
        bool, typer.Option("--dev", help="Enable dev controls: /_dev/clock, /_dev/faults, X-Hearth-File-* headers.")
    ] = False,
    file_ids: Annotated[
        str, typer.Option("--file-ids", help="What a create's file_ids do: copy (as OpenAI), ignore (accepted, "
                          "not copied: a gateway that drops them), reject (400). Dev only; PUT /_dev/switches too.")
    ] = "copy",
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the local Containers API (OpenAI format at /v1, gateway format at /openai/v1)."""
    settings = Settings()
    if file_ids not in FILE_IDS_MODES:
        typer.echo(f"hearth api: --file-ids: expected one of {', '.join(FILE_IDS_MODES)}", err=True)
        raise typer.Exit(2)
    if file_ids != "copy" and not dev:
        typer.echo("hearth api: --file-ids is a dev control: add --dev", err=True)
        raise typer.Exit(2)
    switches = DevSwitches()
    switches.update({"file_ids": file_ids})
    server = LocalAPIServer(
        data_dir or settings.data_dir / "localapi",
        host=host or settings.local_host,
        port=settings.local_port if port is None else port,
        api_keys=tuple(api_key or ()),
        dev=dev,
        faults=settings.faults,
        log_level=log_level,
        switches=switches,
    )
    try:
        server.serve_forever(
            on_ready=lambda s: typer.echo(
                f"Hearth local Containers API at {s.base_url} (gateway format at {s.gateway_base_url})"
                + (", dev controls on" if dev else ""),
            )
        )
    except HearthError as exc:
        typer.echo(f"hearth api: {exc}", err=True)
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    app.command("api")(api)

"""The ``hearth`` command: one Typer app, each command group in a module of its own.

Commands live next to what they drive (``worker/cmd_*.py``); this module only assembles them, so
that adding a command never means editing another's code.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="hearth",
    help="Warm pools, leases and harvest for OpenAI code-interpreter containers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold secrets
)

# Each module defines ``register(app: typer.Typer) -> None``.
COMMAND_MODULES: tuple[str, ...] = (
    "worker.cmd_run",
    "worker.cmd_pools",
    "worker.cmd_api",
    "worker.cmd_config",
    "worker.cmd_up",
    "worker.cmd_session",
    "worker.cmd_fill",
    "worker.cmd_cost",
    "worker.cmd_check",
)


@app.callback()
def _root() -> None:
    """Warm pools, leases and harvest for OpenAI code-interpreter containers."""


@app.command()
def version() -> None:
    """Print Hearth's version."""
    from hearth import __version__

    typer.echo(__version__)


def _load() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)


def main() -> None:
    _load()
    app()


if __name__ == "__main__":
    main()

"""What every ``hearth`` command module shares: the consoles, the exit codes, JSON output and the
runtime that turns Hearth's errors into those exit codes.

It lives apart from any one command so that command modules import it and never each other's
internals (``cmd_fill`` and ``cmd_session`` took these from ``cmd_pools``, which in turn needed them:
an import cycle).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console

from hearth.errors import ConfigError, HearthError, PoolEmpty
from hearth.runtime import Runtime
from settings import Settings

EXIT_FAILED, EXIT_CONFIG, EXIT_EMPTY = 1, 2, 3

out = Console()
err = Console(stderr=True)


@contextmanager
def _runtime() -> Iterator[Runtime]:
    try:
        rt = Runtime.from_settings(Settings())
    except ConfigError as exc:
        err.print(f"[red]configuration:[/] {exc}")
        raise typer.Exit(EXIT_CONFIG) from None
    try:
        yield rt
    except PoolEmpty as exc:
        err.print(f"[yellow]pool empty:[/] {exc}")
        raise typer.Exit(EXIT_EMPTY) from None
    except ConfigError as exc:
        err.print(f"[red]configuration:[/] {exc}")
        raise typer.Exit(EXIT_CONFIG) from None
    except HearthError as exc:
        err.print(f"[red]failed:[/] {exc}")
        raise typer.Exit(EXIT_FAILED) from None
    finally:
        rt.close()


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")

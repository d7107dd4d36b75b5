"""Session commands: ``hearth session end|show|save KEY``; ``hearth lease --session``.

A session key is the app's own string; these commands hash it the same way the Python API does
and print only the hash (``session_id``), never the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from worker.cli_support import _print_json, _runtime, out

if TYPE_CHECKING:
    from hearth.runtime import Runtime
    from hearth.sessions import Sessions

session_app = typer.Typer(help="Sticky leases by session key: inspect and end sessions.", no_args_is_help=True)


def _sessions_of(rt: Runtime) -> Sessions:
    from hearth.sessions import Sessions
    from tasks.app import create_app

    celery = create_app(rt.settings)
    return Sessions(rt, lambda name, args: celery.send_task(name, args=args))


def lease_session(pool: str, key: str, *, wait: float | None, as_json: bool) -> None:
    """``hearth lease POOL --session KEY``: the session's container, restored if it had to be replaced."""
    with _runtime() as rt:
        sessions = _sessions_of(rt)
        got = sessions.lease(pool, key, wait=wait)
        if as_json:
            _print_json(got.to_json())
            return
        how = "restored " + ", ".join(got.restored_files) if got.restored else ("new" if got.created else "same")
        out.print(f"session {got.session_id}: [bold]{got.container_id}[/] ({got.name}) lease {got.lease_id} "
                  f"until {got.expires_at} [{how}]")


@session_app.command("end")
def end(
    key: str = typer.Argument(..., help="The session key the app leased with."),
    no_harvest: bool = typer.Option(False, "--no-harvest", help="Retire without a last harvest."),
    forget: bool = typer.Option(False, "--forget", help="Also delete the session record (no later restore)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """End a session: harvest its container a last time and retire it."""
    with _runtime() as rt:
        sessions = _sessions_of(rt)
        done = sessions.end_session(key, harvest=not no_harvest, forget=forget)
        if as_json:
            _print_json(done.to_json())
        elif not done.found:
            out.print(f"session {done.session_id}: unknown (never leased, or past its retention)")
        else:
            out.print(f"session {done.session_id}: ended; {done.harvested_files} files in storage; "
                      f"container {done.container_id or '-'} {'retiring' if done.retiring else 'already gone'}")


@session_app.command("show")
def show(
    key: str = typer.Argument(..., help="The session key."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Print what Hearth remembers of a session (its current container and its container history)."""
    with _runtime() as rt:
        sessions = _sessions_of(rt)
        rec = sessions.get(key)
        if rec is None:
            out.print("unknown session (never leased, or past its retention)")
            raise typer.Exit(1)
        if as_json:
            _print_json(rec.model_dump(mode="json"))
            return
        out.print(f"session {rec.session_id} pool {rec.pool}: container {rec.container_id or '-'}"
                  f"{' (ended)' if rec.ended else ''}; {len(rec.history)} container(s) so far")


@session_app.command("save")
def save(
    key: str = typer.Argument(..., help="The session key."),
    response: str | None = typer.Option(
        None, "--response", help="A Responses API response as JSON (a file, or - for stdin): its cited "
        "container files are checked too."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Save the session's new files now (what after_response does); exit 1 when a save failed."""
    import json
    import sys

    data = None
    if response is not None:
        try:
            text = sys.stdin.read() if response == "-" else Path(response).read_text(encoding="utf-8")
            data = json.loads(text)
        except OSError as exc:
            out.print(f"--response {response}: cannot read it ({exc.strerror})")
            raise typer.Exit(2) from None
        except ValueError as exc:
            out.print(f"--response {response}: not JSON ({exc})")
            raise typer.Exit(2) from None
    with _runtime() as rt:
        done = _sessions_of(rt).after_response(key, data)
    if as_json:
        _print_json(done.to_json())
    else:
        out.print(f"session {done.session_id}: {done.message}")
        for c in done.cited:
            out.print(f"  cited {c['file_id']} ({c.get('filename') or '-'}): {c['status']}")
        for r in done.refused:
            out.print(f"  refused {r['file_id']} in {r['container_id']}: {r['reason']}")
    if done.found and done.failures:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(session_app, name="session")

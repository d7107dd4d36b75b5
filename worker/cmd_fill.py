"""Progress on long CLI work: ``hearth fill POOL`` (watch a pool fill) and the bar of ``hearth harvest``.

``hearth fill`` asks the workers to reconcile the pool now (a fill request, ``hearth.pool.wanted``: the
``hearth.reconcile_pool`` task, served even while a heartbeat tick holds the planner) and watches the
pool's READY count climb to what the planner wants, so a script can wait for a warm pool::

    hearth up                       # one terminal
    hearth fill analysts && run-my-batch   # another

On a terminal it draws a rich progress bar; with ``--json``, or when stdout is not a terminal, it
prints one JSON document (``--json``) or a plain line per change. Exit 0 when the pool is full, 1 on
timeout (the counts on stderr), 2 on bad configuration (as every pool command).

``harvest_progress`` puts a byte bar (with transfer speed) on a harvest by handing the harvester a
progress callback for the duration; ``hearth harvest`` uses it when stdout is a terminal.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from hearth.errors import ConfigError
from hearth.files.harvest import HarvestProgress, ProgressCallback
from hearth.pool.wanted import TASK, FillRequests
from hearth.runtime import Runtime
from worker.cli_support import EXIT_FAILED, _runtime, err, out

REFRESH_SECONDS = 0.5  # ~2 screen updates a second
NUDGE_SECONDS = 5.0  # ask again: a failed provision is retried only by a later reconcile


@dataclass(frozen=True)
class FillState:
    """One look at a pool: what the planner wants READY now, and the records by state."""

    pool: str
    desired: int
    counts: dict[str, int]
    breaker: str
    breaker_reason: str | None

    @property
    def ready(self) -> int:
        return self.counts.get("ready", 0)

    @property
    def provisioning(self) -> int:
        return self.counts.get("creating", 0) + self.counts.get("seeding", 0)

    @property
    def full(self) -> bool:
        return self.ready >= self.desired

    def line(self) -> str:
        text = f"{self.pool}: ready {self.ready}/{self.desired}, provisioning {self.provisioning}"
        if self.breaker != "closed":
            text += f", breaker {self.breaker}" + (f" ({self.breaker_reason})" if self.breaker_reason else "")
        return text

    def to_json(self, *, elapsed: float) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "full": self.full,
            "desired": self.desired,
            "ready": self.ready,
            "provisioning": self.provisioning,
            "counts": self.counts,
            "breaker": self.breaker,
            "breaker_reason": self.breaker_reason,
            "elapsed_seconds": round(elapsed, 3),
        }


def look(rt: Runtime, pool: str) -> FillState:
    from hearth.planner import Planner

    for p in Planner(rt).plan():
        if p.pool == pool:
            return FillState(pool, p.desired_ready, dict(p.counts), p.breaker, p.breaker_reason)
    raise ConfigError(f"no pool named {pool!r}", where=str(rt.settings.resolved_pools))


def fill(
    pool: str = typer.Argument(..., help="Pool to fill."),
    timeout: float = typer.Option(300.0, "--timeout", help="Give up after this many seconds (exit 1)."),
    as_json: bool = typer.Option(False, "--json", help="No bar: print one JSON document at the end."),
) -> None:
    """Ask for a reconcile now and wait until POOL has as many READY containers as it wants."""
    from tasks.app import create_app

    with _runtime() as rt:
        rt.pool(pool)  # an unknown pool is a configuration error (exit 2), not a timeout
        app = create_app(rt.settings)
        requests = FillRequests(rt.store)

        def nudge() -> None:
            for name in requests.ask([pool]):
                app.send_task(TASK, args=[name])

        try:
            state, elapsed = _watch(rt, pool, timeout, nudge,
                                    mode="json" if as_json else "bar" if out.is_terminal else "lines")
        finally:
            app.close()
    if as_json:
        sys.stdout.write(json.dumps(state.to_json(elapsed=elapsed), indent=2) + "\n")
    if state.full:
        if not as_json:
            out.print(f"pool {pool} full: {state.ready}/{state.desired} ready in {elapsed:.1f}s")
        return
    err.print(f"[yellow]timed out[/] after {timeout:g}s: {state.line()}")
    if state.provisioning == 0 and state.breaker == "closed":
        err.print("nothing is provisioning: is a worker running (`hearth up` or `hearth worker`)?")
    raise typer.Exit(EXIT_FAILED)


def _watch(rt: Runtime, pool: str, timeout: float, nudge: Any, *, mode: str) -> tuple[FillState, float]:
    """Poll the pool until full or ``timeout``; ``nudge()`` requests a reconcile (now, then now and then)."""
    start = time.monotonic()
    state = look(rt, pool)
    if state.full:
        return state, time.monotonic() - start
    nudge()
    nudged = time.monotonic()
    progress: Progress | None = None
    task = None
    if mode == "bar":
        progress = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=out,
            refresh_per_second=1 / REFRESH_SECONDS,
        )
        progress.start()
        task = progress.add_task(f"{pool} ready", total=max(state.desired, 1), completed=state.ready, detail="")
    last_line = ""
    try:
        while True:
            if progress is not None and task is not None:
                detail = f"provisioning {state.provisioning}"
                if state.breaker != "closed":
                    detail += f", [red]breaker {state.breaker}[/]"
                progress.update(task, total=max(state.desired, 1), completed=min(state.ready, state.desired),
                                detail=detail)
            elif mode == "lines" and state.line() != last_line:
                last_line = state.line()
                print(last_line, flush=True)
            now = time.monotonic()
            if state.full or now - start >= timeout:
                return state, now - start
            if now - nudged >= NUDGE_SECONDS:
                nudge()
                nudged = now
            time.sleep(min(REFRESH_SECONDS, max(0.0, timeout - (now - start))))
            state = look(rt, pool)
    finally:
        if progress is not None:
            progress.stop()


# --- harvest ---------------------------------------------------------------------------------------


@contextmanager
def harvest_progress(*, show: bool, console: Console | None = None) -> Iterator[ProgressCallback | None]:
    """A progress callback that draws a byte bar with transfer speed while open (None unless ``show``)."""
    if not show:
        yield None
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TextColumn("{task.fields[files]}"), TimeRemainingColumn(), console=console or out,
        refresh_per_second=1 / REFRESH_SECONDS,
    )
    task = bar.add_task("harvest", total=None, files="")

    def report(p: HarvestProgress) -> None:
        name = p.path.rsplit("/", 1)[-1] if p.path else "harvest"
        bar.update(task, total=p.bytes_total, completed=p.bytes_done, description=name[:40],
                   files=f"{p.files_done}/{p.files_total} files")

    with bar:
        yield report


def register(app: typer.Typer) -> None:
    app.command("fill")(fill)

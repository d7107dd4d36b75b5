"""Runs the local API with uvicorn: in a background thread (``hearth up``, tests) or in the foreground.

``LocalAPIServer`` owns the store, the clock and the fault injector, binds its socket itself (so port
0 picks a free port that is known before the first request, and a restart can take the same port
again), and stops cleanly. The dev clock is an ``OffsetClock`` whose offset is persisted in the store,
so a restarted server keeps the time a test moved it to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import uvicorn

from hearth.clock import Clock, OffsetClock
from hearth.errors import HearthError
from hearth.localapi.app import CLOCK_OFFSET_KEY, create_app
from hearth.localapi.devswitches import DevSwitches, RequestCounter
from hearth.localapi.faults import DropLogFilter, FaultInjector
from hearth.localapi.store import BlobWriter, Store, open_new_file
from settings.faults import FaultConfig

log = logging.getLogger(__name__)
_drop_filter = DropLogFilter()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose proto says TCP,
    # and without it every response waits out the peer's delayed ACK (~40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise HearthError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, minus re-raising the signal after a graceful stop (SIGINT/SIGTERM exit 0),
    and woken at once by :meth:`wake` instead of noticing ``should_exit`` at its next 0.1 s tick
    (tests start and stop a server per test)."""

    _loop: asyncio.AbstractEventLoop | None = None
    _wake: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)
            should_exit = await self.on_tick(counter)

    def wake(self) -> None:
        loop, event = self._loop, self._wake
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(event.set)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


class LocalAPIServer:
    """The local Containers API on ``host:port`` with its state under ``data_dir``.

    ``port=0`` picks a free port (read ``.port`` / ``.base_url`` after ``start()``). ``clock=None``
    gives the persisted dev clock. ``faults`` is the initial ``FaultConfig`` (``PUT /_dev/faults``
    or :meth:`set_faults` change it at run time). ``blob_writer`` opens the files uploads are written to
    (see ``Store``).
    """

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        api_keys: tuple[str, ...] | list[str] = (),
        dev: bool = False,
        clock: Clock | None = None,
        faults: FaultConfig | None = None,
        log_level: str = "warning",
        blob_writer: BlobWriter = open_new_file,
        switches: DevSwitches | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.api_keys = tuple(api_keys)
        self.dev = dev
        self._given_clock = clock
        self.injector = FaultInjector(faults)
        self.switches = switches or DevSwitches()
        self.requests = RequestCounter()
        self.log_level = log_level
        self._blob_writer = blob_writer
        self.clock: Clock | None = None
        self.store: Store | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def __repr__(self) -> str:  # no keys in here
        return f"LocalAPIServer(root_url={self.root_url!r}, dev={self.dev}, keys={len(self.api_keys)})"

    # --- addresses ------------------------------------------------------------------------------

    @property
    def root_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    @property
    def gateway_base_url(self) -> str:
        return f"{self.root_url}/openai/v1"

    # --- life -----------------------------------------------------------------------------------

    def _prepare(self) -> uvicorn.Server:
        # Bind first: a server that cannot get its port must not touch the data dir at all.
        self._sock = _bind(self.host, self.port)
        try:
            self._open_store()
        except BaseException:
            self._close()
            raise
        assert self.store is not None and self.clock is not None
        self.port = self._sock.getsockname()[1]
        app = create_app(self.store, clock=self.clock, api_keys=self.api_keys, dev=self.dev, faults=self.injector,
                         switches=self.switches, requests=self.requests)
        config = uvicorn.Config(
            app,
            log_level=self.log_level,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=3,
            server_header=False,
        )
        logging.getLogger("uvicorn.error").addFilter(_drop_filter)
        self._server = _Server(config)
        return self._server

    def _open_store(self) -> None:
        """The store (locking the data dir: ``DataDirInUse`` if another server has it) and the clock."""
        if self._given_clock is not None:
            self.clock = self._given_clock
            self.store = Store(self.data_dir, self.clock, blob_writer=self._blob_writer)
            return
        clock = OffsetClock()
        self.store = Store(self.data_dir, clock, blob_writer=self._blob_writer)
        stored = self.store.get_meta(CLOCK_OFFSET_KEY)
        if stored is not None:
            clock.advance(float(stored))
        self.clock = clock

    def start(self, timeout: float = 15.0) -> LocalAPIServer:
        """Serve in a background thread; returns once the socket accepts requests."""
        if self._thread is not None:
            raise HearthError("local API server already started")
        server = self._prepare()
        sock = self._sock
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"hearth-localapi-{self.port}", daemon=True
        )
        self._thread.start()
        tick = threading.Event()  # only waited on, never set: a sleep that needs no clock
        for _ in range(int(timeout / 0.01)):
            if server.started or not self._thread.is_alive():
                break
            tick.wait(0.01)
        if not server.started:
            self.stop()
            raise HearthError(f"local API server did not start on {self.root_url}")
        return self

    def serve_forever(self, on_ready: Callable[[LocalAPIServer], None] | None = None) -> None:
        """Serve in this (main) thread until SIGINT/SIGTERM, then shut down cleanly.

        ``on_ready`` runs once the socket is bound (so ``.port`` is known even for port 0).
        """
        server = self._prepare()
        if on_ready is not None:
            on_ready(self)
        try:
            server.run(sockets=[self._sock] if self._sock else None)
        finally:
            self._close()

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
            if isinstance(self._server, _Server):
                self._server.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(timeout)
        self._thread = None
        self._close()

    def _close(self) -> None:
        self._server = None
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def restart(self) -> None:
        """Stop and start again on the same port and data dir (what a process restart does)."""
        self.stop()
        self.start()

    def set_faults(self, faults: FaultConfig | None) -> None:
        self.injector.configure(faults)

    def __enter__(self) -> LocalAPIServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

"""Serving the console: uvicorn on a socket bound up front, the feed thread, clean shutdown.

:class:`ConsoleServer` is a component like the others of ``metaheal up``
(``await start()``, then ``await run(stop)``), so ``metaheal up --console-port``
runs it beside the control plane and ``metaheal console`` runs it alone. The socket
is bound in :meth:`ConsoleServer.start`, so a port in use is an error at start-up,
not a log line later; signals stay with the caller (uvicorn's own handlers are off).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from metaheal.config import Settings
from metaheal.console.app import Console
from metaheal.console.feed import ConsoleFeed
from metaheal.console.view import FleetView
from metaheal.errors import MetahealError

logger = logging.getLogger(__name__)


class ConsoleUnavailable(MetahealError, RuntimeError):
    """The console cannot serve (its port is taken, the host does not resolve)."""


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the process owner handles signals
        yield


class ConsoleServer:
    def __init__(self, settings: Settings, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None):
        self.settings = settings
        self.host = host
        self.port = port
        self.view = FleetView(settings)
        self.console = Console(settings, self.view, token=token, host=host)
        self.feed: ConsoleFeed | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise ConsoleUnavailable(f"console: cannot listen on {self.host}:{self.port}: {exc.strerror}") from None
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        return sock

    async def start(self) -> None:
        self._sock = self._bind()
        self.console.bind_loop(asyncio.get_running_loop())
        self.feed = ConsoleFeed(self.settings, self.view, self.console.notify)
        await asyncio.to_thread(self.feed.start)
        config = uvicorn.Config(
            self.console.app(),
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=2,
            access_log=False,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]), name="console-http")
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()
        logger.info("console listening url=%s token=%s", self.url, "required" if self.console.token else "none")

    async def run(self, stop: asyncio.Event) -> None:
        if self._task is None:
            await self.start()
        assert self._task is not None and self._server is not None
        waiter = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({self._task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            self.console.close()
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            if self.feed is not None:
                await asyncio.to_thread(self.feed.stop)
            if self._sock is not None:
                self._sock.close()
            logger.info("console stopped")
        if not stop.is_set():
            raise ConsoleUnavailable("console: the web server stopped by itself")


__all__ = ["ConsoleServer", "ConsoleUnavailable"]

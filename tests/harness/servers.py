"""Run an ASGI app under a real uvicorn server on loopback, from synchronous tests.

    with serve(app) as url:           # "http://127.0.0.1:PORT"
        ...
    with run_server(app) as server:   # ServerHandle: .url, .loop, .call(coro_fn)
        ...

The server runs in a background thread with its own event loop. Startup is awaited on an
event the server sets once it listens (or once startup failed, whose error is re-raised);
the listening socket is bound to port 0 before the server starts, so there is no port race.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal, TypeVar

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ServerHandle", "ServerStartupError", "run_server", "serve"]

T = TypeVar("T")

STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


class ServerStartupError(RuntimeError):
    """The app's lifespan startup failed, or the server could not start listening."""


class _LifespanErrorRecorder:
    """Keep the app's own lifespan failure so startup can fail with it, not only with uvicorn's log line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.failure_message: str | None = None
        self.exception: BaseException | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_and_record(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                self.failure_message = message.get("message") or "lifespan.startup.failed"
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        except BaseException as exc:
            self.exception = exc
            raise


class _ThreadedServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        await super().startup(sockets=sockets)
        if self.started:
            self.ready.set()

    async def main_loop(self) -> None:
        # uvicorn polls should_exit every 0.1 s; wake up at once when asked to stop instead.
        assert self._wakeup is not None
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), 0.1)

    def request_exit(self) -> None:
        self.should_exit = True
        if self.loop is not None and self._wakeup is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self.loop.call_soon_threadsafe(self._wakeup.set)


class ServerHandle:
    """A running server: its base URL, its event loop, and a way to run coroutines there."""

    def __init__(self, url: str, port: int, loop: asyncio.AbstractEventLoop) -> None:
        self.url = url
        self.port = port
        self.loop = loop

    def call(self, coro_fn: Callable[[], Awaitable[T]], *, timeout: float = 10.0) -> T:
        """Run ``coro_fn()`` on the server's event loop and return its result (or raise its exception)."""

        async def run() -> T:
            return await coro_fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)


@contextlib.contextmanager
def run_server(
    app: Any,
    *,
    lifespan: Literal["on", "off", "auto"] = "on",
    loop: Literal["asyncio", "uvloop"] = "asyncio",
    timeout_graceful_shutdown: int = 2,
) -> Iterator[ServerHandle]:
    """Serve ``app`` with uvicorn on a free loopback port for the duration of the block.

    Raises ServerStartupError if the app's lifespan startup fails. On exit the server is asked
    to stop; requests still running after ``timeout_graceful_shutdown`` seconds are cancelled.
    """
    recorder = _LifespanErrorRecorder(app)
    config = uvicorn.Config(
        recorder,
        loop=loop,
        http="httptools",
        lifespan=lifespan,
        access_log=False,
        log_level="warning",
        log_config=None,  # leave global logging alone; records propagate to pytest's capture
        proxy_headers=False,
        timeout_graceful_shutdown=timeout_graceful_shutdown,
    )
    server = _ThreadedServer(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # SystemExit on startup failure included
            errors.append(exc)
        finally:
            server.ready.set()

    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        thread = threading.Thread(target=run, name=f"uvicorn-127.0.0.1:{port}", daemon=True)
        thread.start()
        started = server.ready.wait(STARTUP_TIMEOUT)
        if not started or not server.started or server.loop is None:
            _stop(server, thread, errors, raise_errors=False)
            cause = recorder.exception or (errors[0] if errors else None)
            detail = recorder.failure_message or (repr(cause) if cause is not None else "no error reported")
            if not started:
                detail = f"not listening after {STARTUP_TIMEOUT} s"
            raise ServerStartupError(f"server on port {port} failed to start: {detail}") from cause
        try:
            yield ServerHandle(f"http://127.0.0.1:{port}", port, server.loop)
        except BaseException:
            _stop(server, thread, errors, raise_errors=False)
            raise
        _stop(server, thread, errors, raise_errors=True)
    finally:
        sock.close()


def _stop(
    server: _ThreadedServer, thread: threading.Thread, errors: list[BaseException], *, raise_errors: bool
) -> None:
    server.request_exit()
    thread.join(STOP_TIMEOUT)
    if thread.is_alive():
        server.force_exit = True
        thread.join(STOP_TIMEOUT)
        if raise_errors:
            raise RuntimeError(f"server thread {thread.name} did not stop within {STOP_TIMEOUT} s")
    if raise_errors and errors:
        raise RuntimeError(f"server thread {thread.name} failed") from errors[0]


@contextlib.contextmanager
def serve(
    app: Any,
    *,
    lifespan: Literal["on", "off", "auto"] = "on",
    loop: Literal["asyncio", "uvloop"] = "asyncio",
    timeout_graceful_shutdown: int = 2,
) -> Iterator[str]:
    """Serve ``app`` on loopback for the duration of the block; yield its base URL ``http://127.0.0.1:PORT``."""
    with run_server(app, lifespan=lifespan, loop=loop, timeout_graceful_shutdown=timeout_graceful_shutdown) as server:
        yield server.url

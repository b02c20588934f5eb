"""Serving the proxy with uvicorn: the worker processes, and timeouts on slow clients.

uvicorn with httptools waits for a request's headers and body as long as the client likes:
200 connections that sent half a request stayed open for 65 s. ``ClientTimeoutsProtocol``
is its HTTP protocol plus two timers, as nginx has them: ``client_header_timeout`` from the
first byte of a request to the end of its headers (a 408, then the connection closes), and
``client_body_timeout`` between two reads of a body (the connection closes; the app sees the
client disconnect), checked by one watchdog per connection. The values come from the app's
lifespan state, so worker processes need no module state of their own.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .logs import log_config
from .settings import CLIENT_TIMEOUTS_STATE, Settings

_REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


_IDLE, _HEADERS, _BODY = 0, 1, 2


class ClientTimeoutsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing connections whose client is too slow to send a request.

    One watchdog timer per connection, not a timer per request: a request only notes when its
    current phase (headers, then each piece of body) began, and the watchdog, every quarter of the
    shorter timeout, closes the connection whose phase has run past its limit.
    """

    _watchdog: asyncio.TimerHandle | None = None
    _phase = _HEADERS  # a new connection owes its first request's headers
    _since = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        timeouts = self.app_state.get(CLIENT_TIMEOUTS_STATE)
        if timeouts is not None:
            self._limits = timeouts
            self._since = self.loop.time()
            self._watchdog = self.loop.call_later(min(timeouts) / 4, self._check)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase, self._since = _HEADERS, self.loop.time()

    def on_headers_complete(self) -> None:
        self._phase, self._since = _BODY, self.loop.time()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._since = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        super().connection_lost(exc)

    def _check(self) -> None:
        if self.transport.is_closing():
            return
        header_timeout, body_timeout = self._limits
        waited = self.loop.time() - self._since
        if self._phase == _HEADERS and waited > header_timeout:
            self.transport.write(_REQUEST_TIMEOUT)
            self.transport.close()
        elif self._phase == _BODY and waited > body_timeout:
            self.transport.close()  # the app's receive() reports the disconnect
        else:
            self._watchdog = self.loop.call_later(min(self._limits) / 4, self._check)


def serve(settings: Settings, cli: dict[str, Any] | None = None) -> None:
    """Serve the proxy until it is stopped; ``settings.workers`` processes share the port."""
    app: Any
    options: dict[str, Any] = {}
    if settings.workers > 1:
        from .app import WORKER_ARGS_ENV

        # each worker process builds its own app, clients and loop from the same flags and environment
        os.environ[WORKER_ARGS_ENV] = json.dumps(cli or {})
        app = "statefulproxy.app:app_from_environment"
        options = {"workers": settings.workers, "factory": True}
    else:
        from .app import create_app

        app = create_app(settings)
    from uvicorn.config import LOGGING_CONFIG

    # The app drains on SIGTERM and then hands the signal to uvicorn (shutdown.py), which re-raises
    # it once it has shut down, for the process to die of it: ignored then, the process exits 0.
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        uvicorn.run(
            app,
            **options,
            host=settings.host,
            port=settings.port,
            lifespan="on",  # a failing startup (store unreachable) stops the server
            log_level=settings.log_level,
            log_config=log_config(copy.deepcopy(LOGGING_CONFIG), settings.log_level, settings.log_format),
            access_log=False,  # the app logs each request itself (access_log), its query's keys redacted
            loop="uvloop",
            http=ClientTimeoutsProtocol,
            proxy_headers=False,
            server_header=False,
            date_header=False,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stopped(sig: int, frame: FrameType | None) -> None:
    """SIGTERM once uvicorn has shut down: nothing is left to do."""

"""Serving the proxy with uvicorn: the worker processes, and timeouts on slow clients.

uvicorn with httptools waits for a request's headers and body as long as the client likes:
200 connections that sent half a request stayed open for 65 s. ``ClientTimeoutsProtocol``
is its HTTP protocol plus two timers, as nginx has them: ``client_header_timeout`` from the
first byte of a request to the end of its headers (a 408, then the connection closes), and
``client_body_timeout`` between two reads of a body (the connection closes; the app sees the
client disconnect). The values come from the app's lifespan state, so worker processes need
no module state of their own.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .settings import CLIENT_TIMEOUTS_STATE, LogLevel, Settings

_REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class ClientTimeoutsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing connections whose client is too slow to send a request."""

    _timer: asyncio.TimerHandle | None = None
    _reading_headers = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_headers()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._reading_headers:
            self._arm_headers()

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        super().on_headers_complete()
        self._arm(1, self._body_timed_out)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._arm(1, self._body_timed_out)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm_headers(self) -> None:
        self._reading_headers = True
        self._arm(0, self._headers_timed_out)

    def _arm(self, which: int, handler: Any) -> None:
        self._disarm()
        timeouts = self.app_state.get(CLIENT_TIMEOUTS_STATE)
        if timeouts is not None:
            self._timer = self.loop.call_later(timeouts[which], handler)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_timed_out(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(_REQUEST_TIMEOUT)
            self.transport.close()

    def _body_timed_out(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()  # the app's receive() reports the disconnect


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
    uvicorn.run(
        app,
        **options,
        host=settings.host,
        port=settings.port,
        lifespan="on",  # a failing startup (store unreachable) stops the server
        log_level=settings.log_level,
        log_config=_log_config(settings.log_level),
        access_log=settings.access_log,
        loop="uvloop",
        http=ClientTimeoutsProtocol,
        proxy_headers=False,
        server_header=False,
        date_header=False,
    )


def _log_config(level: LogLevel) -> dict[str, Any]:
    # uvicorn's own config, plus our loggers on its stderr handler.
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["statefulproxy"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config

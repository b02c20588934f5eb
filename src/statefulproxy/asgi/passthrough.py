"""The passthrough app: forwards any HTTP request to the upstream and relays the reply.

Request bodies stream upstream as they arrive; response bytes stream back unchanged with
the upstream's own headers, less hop-by-hop ones (RFC 9110 7.6.1). The relay owns the
upstream response for the whole ASGI call and closes it on every exit path; a client
that disconnects cancels the upstream request at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from time import perf_counter

from ..errors import UpstreamError, UpstreamTimeout
from ..routes import ROUTE_KEY, Route
from ..types import Headers, Message, Receive, Scope, Send
from ..upstream import UpstreamClient, UpstreamResponse
from .exchange import EXCHANGE_KEY, Exchange
from .replies import send_failure

# set by the session layer (asgi.chat): its errors take the request's dialect
DIALECT_KEY = "statefulproxy.dialect"

logger = logging.getLogger("statefulproxy")

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


def end_to_end(headers: Headers | tuple[tuple[bytes, bytes], ...]) -> Headers:
    """The headers less hop-by-hop ones and those the Connection header names."""
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    if not named:
        return [(name, value) for name, value in headers if name.lower() not in HOP_BY_HOP]
    dropped = HOP_BY_HOP | named
    return [(name, value) for name, value in headers if name.lower() not in dropped]


class ClientDisconnected(Exception):
    """The client went away while its request body was being forwarded."""


class PassthroughApp:
    """An ASGI app that relays every HTTP request to the upstream of its route (``ROUTE_KEY`` in the scope)."""

    def __init__(self, upstream: UpstreamClient) -> None:
        self.upstream = upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # websockets are not proxied; lifespan is handled by the composing app
        await Relay(self.upstream, scope, receive, send).run()


class Relay:
    """One request's trip to the upstream and back."""

    def __init__(self, upstream: UpstreamClient, scope: Scope, receive: Receive, send: Send) -> None:
        self.upstream = upstream
        self.scope = scope
        self.receive = receive
        self.send = send
        self.disconnected = False
        self.body_done = asyncio.Event()
        task = asyncio.current_task()
        assert task is not None
        self.task = task

    async def run(self) -> None:
        # The client's framing was checked on arrival (guards.py); the session layer may
        # re-frame a body it rewrote, and the upstream request is framed anew by aiohttp.
        scope = self.scope
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in end_to_end(scope["headers"])
            if name != b"host"
        ]
        target = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        first = await self.receive()
        if first["type"] == "http.disconnect":
            return
        body: bytes | AsyncIterator[bytes] | None
        if first.get("more_body", False):
            body = self._stream_body(first.get("body", b""))
        else:
            body = first.get("body", b"") or None
            self.body_done.set()

        task = self.task
        watcher = asyncio.get_running_loop().create_task(self._watch_disconnect(task))
        try:
            await self._relay(scope["method"], target, headers, body)
        except asyncio.CancelledError:
            if not self.disconnected:
                raise
            task.uncancel()
            logger.info("client disconnected; upstream request cancelled")
        finally:
            watcher.cancel()

    async def _relay(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes | AsyncIterator[bytes] | None
    ) -> None:
        # the status and time to first byte, for the metrics and the access log (asgi/exchange.py)
        exchange: Exchange | None = self.scope.get(EXCHANGE_KEY)
        started = perf_counter()
        try:
            route: Route = self.scope[ROUTE_KEY]
            response = await self.upstream.request(method, route.upstream, target, headers, body)
        except UpstreamTimeout as exc:
            logger.warning("%s", exc)
            if exchange is not None:
                exchange.status = 504
            message = "The upstream did not answer in time."
            await send_failure(self.send, 504, message, "upstream_error", "timeout", self.scope.get(DIALECT_KEY))
            return
        except UpstreamError as exc:
            logger.warning("%s", exc)
            if exchange is not None:
                exchange.status = 502
            message = "The upstream could not be reached."
            await send_failure(self.send, 502, message, "upstream_error", "bad_gateway", self.scope.get(DIALECT_KEY))
            return
        if exchange is not None:
            exchange.ttfb = perf_counter() - started
            exchange.status = response.status
        try:
            await self._relay_response(response)
        finally:
            response.close()

    async def _relay_response(self, response: UpstreamResponse) -> None:
        send = self.send
        await send({"type": "http.response.start", "status": response.status, "headers": end_to_end(response.headers)})
        try:
            async for chunk in response.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            # Returning without the final message aborts the client's connection, so a cut
            # stream never looks like a complete answer (CONTRACT.md section 4, Recording).
            logger.warning("upstream response cut: %s", exc)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _stream_body(self, first: bytes) -> AsyncIterator[bytes]:
        if first:
            yield first
        while True:
            message: Message = await self.receive()
            if message["type"] == "http.disconnect":
                # Raising (rather than ending the body) makes aiohttp drop the connection, so the
                # upstream never sees a truncated body as a complete request.
                self.disconnected = True
                self.task.cancel()
                raise ClientDisconnected
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                break
        self.body_done.set()

    async def _watch_disconnect(self, task: asyncio.Task[None]) -> None:
        await self.body_done.wait()
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                task.cancel()
                return

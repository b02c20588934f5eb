"""What the proxy notes about one request for its metrics and access log: an ``Exchange`` in the scope.

The app puts one in the scope (``EXCHANGE_KEY``) when a request arrives; scopes made from it
for the layers below share it. Each layer fills in what only it knows: the session layer the
kind, dialect and session id, the relay the upstream's status and time to first byte. Nothing
wraps ``send`` on the stateless path to learn the status: the relay notes it. Replies the proxy
makes itself (the management API, errors) are noted by ``send_noting``.
"""

from __future__ import annotations

from collections.abc import Awaitable

from ..types import Message, Scope, Send

EXCHANGE_KEY = "statefulproxy.exchange"
REQUEST_ID_HEADER = b"x-request-id"
UPSTREAM_REQUEST_ID_HEADER = b"x-upstream-request-id"


class Exchange:
    """One request, as the metrics and the access log see it."""

    __slots__ = (
        "cut",
        "dialect",
        "kind",
        "noting",
        "request_id",
        "session_id",
        "started",
        "status",
        "ttfb",
        "upstream_id",
    )

    def __init__(self, started: float) -> None:
        self.started = started
        self.kind = 0  # metrics.STATELESS, SESSION or MANAGEMENT
        self.dialect: str | None = None  # a chat request's dialect
        self.status = 0  # 0: no response started
        self.ttfb: float | None = None  # seconds from the upstream request to its response head
        self.session_id: str | None = None
        self.request_id: str | None = None  # only when requests are logged (access_log)
        self.upstream_id: str | None = None  # the upstream's own x-request-id, if it sent one
        self.noting = False  # send is already wrapped by send_noting
        self.cut = False  # ended unfinished at shutdown


def exchange_of(scope: Scope) -> Exchange | None:
    found: Exchange | None = scope.get(EXCHANGE_KEY)
    return found


def send_noting(exchange: Exchange, send: Send) -> Send:
    """``send``, noting the response's status, and echoing ``x-request-id`` when requests are logged.

    A plain function that returns ``send``'s awaitable: no coroutine of its own per message.
    An upstream's own ``x-request-id`` (OpenAI sends one; its support asks for it) is kept as
    ``x-upstream-request-id``, and logged beside the proxy's.
    """
    exchange.noting = True
    request_id = exchange.request_id
    echoed = (REQUEST_ID_HEADER, request_id.encode()) if request_id is not None else None

    def send_and_note(message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            exchange.status = message["status"]
            if echoed is not None:
                headers = list(message.get("headers", ()))
                upstream_id = next((value for name, value in headers if name.lower() == REQUEST_ID_HEADER), None)
                if upstream_id is not None:
                    exchange.upstream_id = upstream_id.decode("latin-1")[:128]
                    headers = [(name, value) for name, value in headers if name.lower() != REQUEST_ID_HEADER]
                    headers.append((UPSTREAM_REQUEST_ID_HEADER, upstream_id))
                headers.append(echoed)
                message = {**message, "headers": headers}
        return send(message)

    return send_and_note


def noted(scope: Scope, send: Send, kind: int | None = None) -> Send:
    """``send`` for a reply the proxy makes itself: its status noted in the scope's exchange, if any."""
    exchange = exchange_of(scope)
    if exchange is None:
        return send
    if kind is not None:
        exchange.kind = kind
    return send if exchange.noting else send_noting(exchange, send)

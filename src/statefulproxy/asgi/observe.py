"""Each request's metrics and access log line: ``begin`` when it arrives, ``finish`` when it is done.

With ``access_log`` off a request costs an ``Exchange``, two clock reads and a few integer
increments. With it on, each request also gets a request id (the client's ``x-request-id`` if it
is a sane one, else minted), echoed in the response's ``x-request-id`` and carried by every line
logged while it runs, and one line when it is done (CONTRACT.md section 7, Logs).
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
from time import perf_counter

from ..logs import REQUEST_ID, redacted_query
from ..metrics import KINDS, Metrics
from ..types import Scope, Send
from .exchange import EXCHANGE_KEY, REQUEST_ID_HEADER, Exchange, send_noting

access_logger = logging.getLogger("statefulproxy.access")

# a client's request id is taken as it is only if it is short and plain: it goes into every log line
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")


class RequestObserver:
    """Notes every request of one app in ``metrics`` and, if ``log_requests``, in the access log."""

    def __init__(self, metrics: Metrics, *, log_requests: bool) -> None:
        self.metrics = metrics
        self.log_requests = log_requests
        # minted ids: unique per process by the random prefix, cheap by the counter
        self._prefix = secrets.token_hex(6)
        self._numbers = itertools.count(1)

    def begin(self, scope: Scope, send: Send) -> tuple[Exchange, Send]:
        """The request's exchange, put in the scope, and the ``send`` to answer it with."""
        exchange = Exchange(perf_counter())
        scope[EXCHANGE_KEY] = exchange
        if not self.log_requests:
            return exchange, send
        request_id = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER and _SANE_REQUEST_ID.fullmatch(value):
                request_id = value.decode()
                break
        if request_id is None:
            request_id = f"{self._prefix}-{next(self._numbers):x}"
        exchange.request_id = request_id
        REQUEST_ID.set(request_id)  # the request runs in a task of its own: this reaches its lines only
        return exchange, send_noting(exchange, send)

    def finish(self, exchange: Exchange, scope: Scope) -> None:
        seconds = perf_counter() - exchange.started
        self.metrics.count(exchange.kind, exchange.dialect, exchange.status, exchange.ttfb, seconds)
        if self.log_requests:
            self._log(exchange, scope, seconds)

    def _log(self, exchange: Exchange, scope: Scope, seconds: float) -> None:
        raw: bytes = scope.get("raw_path") or scope["path"].encode()
        target = raw.decode("latin-1")
        if scope["query_string"]:
            target += "?" + redacted_query(scope["query_string"].decode("latin-1"))
        client = scope.get("client")
        address = f"{client[0]}:{client[1]}" if client else "-"
        status = exchange.status or None
        ttfb = round(exchange.ttfb * 1000, 1) if exchange.ttfb is not None else None
        fields = {
            "request_id": exchange.request_id,
            "client": address,
            "method": scope["method"],
            "path": target,
            "status": status,
            "duration_ms": round(seconds * 1000, 1),
            "ttfb_ms": ttfb,
            "kind": KINDS[exchange.kind],
            "dialect": exchange.dialect,
            "session_id": exchange.session_id,
            "upstream_request_id": exchange.upstream_id,
            "cut": True if exchange.cut else None,  # at shutdown: the client saw an aborted reply
        }
        text = f'{address} - "{scope["method"]} {target} HTTP/{scope.get("http_version", "1.1")}" {status or "-"}'
        text += f" {fields['duration_ms']}ms"
        if ttfb is not None:
            text += f" ttfb={ttfb}ms"
        if exchange.dialect is not None:
            text += f" {exchange.dialect}"
        if exchange.session_id is not None:
            text += f" session={exchange.session_id}"
        text += f" id={exchange.request_id}"
        if exchange.cut:
            text += " cut"
        access_logger.info(
            "%s", text, extra={"fields": {key: value for key, value in fields.items() if value is not None}}
        )

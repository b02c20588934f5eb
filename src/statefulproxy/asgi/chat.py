"""One chat request through the session layer: find its session, hand the turn to the turn service,
forward it and record the reply. Every dialect goes through here; the dialect only changes the
shapes (dialects/), never the rules (sessions/service.py).

Requests without a session identity reach the app with their original bytes. The body is only
parsed when a session header is present or the bytes could hold a session field, so stateless
traffic pays for one substring scan.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..dialects.base import Canonical, Dialect
from ..errors import ClientError, ClientGone, StoreError, body_too_large, invalid_json, not_an_object
from ..metrics import SESSION, Metrics, refusal_reason
from ..routes import ROUTE_KEY, STRICT_PROFILES, Route, reasoning_field
from ..sessions.idempotency import idempotency_key
from ..sessions.identity import Grant, body_session_id, header_session_id, resolve_session_id
from ..sessions.messages import ReasoningField
from ..sessions.retries import is_retry
from ..sessions.service import Recorded, TurnRequest, TurnService
from ..settings import Settings
from ..types import ASGIApp, Headers, Message, Receive, Scope, Send
from .draining import Draining
from .exchange import EXCHANGE_KEY, Exchange
from .passthrough import DIALECT_KEY
from .pins import pin
from .replies import send_error, send_failure
from .request_body import check_integers, decoded
from .tap import ResponseTap, with_session_id

logger = logging.getLogger("statefulproxy")

# Bytes that a body carrying a session field must contain. "\u" covers keys spelled with
# JSON escapes, which are rare enough that parsing those bodies costs nothing overall.
_SESSION_MARKERS = (b"session_id", b"sessionId", b'"store"', b"\\u")
# Fields the proxy consumes; `store`/`metadata.session_id` stay when forward_store is set.
_CONSUMED = ("session_id", "sessionId")
# How each dialect's upstream takes the proxy's own key (client-secret requests).
_UPSTREAM_KEY_HEADERS = {"anthropic": b"x-api-key", "gemini": b"x-goog-api-key"}
_REFRAMED = frozenset({b"content-length", b"transfer-encoding", b"accept-encoding", b"content-encoding"})
_CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-api-key", b"api-key", b"x-goog-api-key"})
_SHUTTING_DOWN, _CLOSE = "The proxy is shutting down; send the request again.", [(b"connection", b"close")]


@dataclass(frozen=True, slots=True)
class TurnContext:
    """What every chat turn of one middleware shares: its collaborators and configuration."""

    app: ASGIApp
    settings: Settings
    header_names: frozenset[bytes]
    owner_for: Callable[[Scope], Awaitable[str]]  # 401 for an anonymous request when a credential is required
    service: TurnService
    upstream_key: bytes | None  # the proxy's own upstream key, for client-secret requests
    metrics: Metrics = field(default_factory=Metrics)
    draining: Draining = field(default_factory=Draining)  # new turns get 503 once shutdown has begun


class ChatTurn:
    """Per-request state of one chat request."""

    def __init__(
        self,
        context: TurnContext,
        scope: Scope,
        receive: Receive,
        send: Send,
        grant: Grant | None,
        dialect: Dialect,
        namespace: str | None = None,
        turn_metadata: dict[str, Any] | None = None,
    ) -> None:
        self.context = context
        self.namespace = namespace
        self.turn_metadata = turn_metadata
        route: Route | None = scope.get(ROUTE_KEY)
        self.profile = route.profile if route is not None else context.settings.profile
        self.app = context.app
        self.settings = context.settings
        self.grant = grant
        self.dialect = dialect
        self.scope = scope
        self.receive = receive
        self.send = send
        self.body = b""
        self.content_encoding = b""
        self.replayed = False
        self.cut: str | None = None  # why the turn was cut, once it was
        self.watching: asyncio.Future[Message] | None = None  # the next message, asked for while waiting
        self.exchange: Exchange | None = scope.get(EXCHANGE_KEY)  # for the metrics and the access log
        if self.exchange is not None:
            self.exchange.dialect = dialect.name

    async def run(self) -> None:
        try:
            await self._run()
        except ClientError as error:
            self._refused(error.status, error.code)
            await send_error(self.send, error, self.dialect)
        except ClientGone as exc:
            logger.info("%s; turn dropped", exc)
        except StoreError as exc:
            self._refused(503, "store_unavailable")
            logger.error("session store unavailable: %s", exc)
            message = "The session store is unavailable."
            await send_failure(self.send, 503, message, "store_error", "store_unavailable", self.dialect)
        finally:
            if self.watching is not None:
                self.watching.cancel()

    async def _run(self) -> None:
        headers: Headers = self.scope["headers"]
        body = self.body = await self._read_body(headers)
        if self.content_encoding or body.startswith(b"\xef"):
            # only what the session layer reads is decoded: a stateless body goes on as it came
            body = decoded(body, self.content_encoding, self.settings.max_body_size)
        from_headers = header_session_id(headers, self.context.header_names)
        if from_headers is None and self.grant is None and not any(marker in body for marker in _SESSION_MARKERS):
            await self.app(self.scope, self.receive_replayed_body, self.send)
            return
        refusal = not_an_object
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed, refusal = None, invalid_json
        else:
            check_integers(body)
        if not isinstance(parsed, dict):
            # a body that names a session but cannot be read must not go upstream as a stateless one
            named = b"session_id" in body or b"sessionId" in body
            if from_headers is not None or self.grant is not None or named:
                raise refusal()  # worded as the management API words it (errors.py)
            await self.app(self.scope, self.receive_replayed_body, self.send)
            return
        session_id = resolve_session_id(body_session_id(parsed), from_headers)
        if self.grant is not None:
            # a client secret chats on its own session, named or not
            if session_id not in (None, self.grant.session_id):
                raise ClientError(
                    403,
                    "A client secret may only chat on and read its own session.",
                    type="permission_error",
                    code="client_secret_scope",
                )
            session_id = self.grant.session_id
        store_flag = parsed.get("store")
        if store_flag is not None and not isinstance(store_flag, bool):
            raise ClientError(400, "'store' must be a boolean.", param="store")
        if session_id is None and store_flag is not True:
            await self.app(self.scope, self.receive_replayed_body, self.send)
            return
        await self._session_turn(parsed, session_id, store_flag is not False)

    def _refused(self, status: int, code: str | None) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.status = status
            if exchange.kind == SESSION:
                self.context.metrics.turns_refused[refusal_reason(code)] += 1

    async def _session_turn(self, parsed: dict[str, Any], session_id: str | None, record: bool) -> None:
        draining = self.context.draining
        if self.exchange is not None:
            self.exchange.kind = SESSION
        if draining.started:  # connection: close, so that a retry reaches another instance
            raise ClientError(503, _SHUTTING_DOWN, type="server_error", code="shutting_down", headers=_CLOSE)
        draining.enter()
        try:
            await self._turn(parsed, session_id, record)
        finally:
            draining.leave()

    async def _turn(self, parsed: dict[str, Any], session_id: str | None, record: bool) -> None:
        dialect, headers = self.dialect, self.scope["headers"]
        if dialect.messages_key not in parsed:
            key_name = dialect.messages_key
            raise ClientError(400, f"'{key_name}' is required for a session request.", param=key_name)
        sent = dialect.parse(parsed)
        if self.grant is not None:
            _only_user_turns(sent)
            if dialect.name != self.grant.dialect:
                raise ClientError(
                    403,
                    f"This client secret chats in the {self.grant.dialect} dialect only.",
                    type="permission_error",
                    code="client_secret_dialect",
                )
        key = idempotency_key(headers, self.body) if record else None  # an unrecorded turn keeps no reply
        try:
            # the owner's hash needs the store's shared secret on a first request
            owner = self.grant.owner if self.grant is not None else await self.context.owner_for(self.scope)
        except StoreError:
            if self.settings.on_store_error != "passthrough":
                raise
            owner = None
        query = self.scope["query_string"].decode("latin-1")
        model = parsed.get("model")
        request = TurnRequest(
            dialect=dialect,
            owner=owner or "",
            session_id=session_id,
            record=record,
            body=self._pinned(self._consumed_removed(parsed)),
            sent=sent,
            metadata=parsed.get("metadata"),
            key=key,
            must_exist=self.grant is not None,
            retry=is_retry(headers),
            stream=dialect.is_stream(parsed, self.scope["path"], query),
            query=query,
            model=model if isinstance(model, str) else None,
            reasoning_field=self._reasoning_field(),
            namespace=self.namespace,
            turn_metadata=self.turn_metadata,
            gone_within=self._gone_within,
        )
        service = self.context.service
        if owner is None:
            turn = service.degraded(request)
        else:
            begun = await service.begin(request)
            if isinstance(begun, Recorded):
                await self._send_recorded(begun, request.stream)
                return
            turn = begun
        if self.exchange is not None:
            self.exchange.session_id = turn.session_id
        task = asyncio.current_task()
        assert task is not None
        draining = self.context.draining
        leased = turn.lease is not None
        draining.leases += leased
        try:
            self.body = turn.forward
            tap = ResponseTap(self.send, turn.session_id, turn.commit, dialect, request.stream)
            turn.keep_leased(functools.partial(self._still_wanted, tap, task, task.get_loop().time()))
            await self.app(self._forward_scope(), self.receive_replayed_body, tap.send_and_record)
        except asyncio.CancelledError:
            if self.cut is None:
                raise
            task.uncancel()
            # returning without the response's end aborts the connection: never a clean, unrecorded reply
            logger.warning("turn cut: %s; not recorded, its lease released", self.cut)
            self.context.metrics.turns_not_recorded["cut"] += 1
        finally:
            draining.leases -= leased
            await turn.release()

    def _still_wanted(self, tap: ResponseTap, task: asyncio.Task[Any], started: float) -> bool:
        """Whether a turn holding its session's lease may go on; if not, it is cut (issue 10, defect 7)."""
        now = task.get_loop().time()
        settings = self.settings
        if now - started > settings.max_turn_duration:
            self.cut = f"longer than max_turn_duration ({settings.max_turn_duration:g} s)"
        elif tap.sending_since is not None and now - tap.sending_since > settings.send_timeout:
            self.cut = f"the client read nothing for send_timeout ({settings.send_timeout:g} s)"
        else:
            return True
        task.cancel()
        return False

    def _pinned(self, body: dict[str, Any]) -> dict[str, Any]:
        """A client secret's body with the model and reply length its creator pinned (issue 10, defect 6)."""
        grant = self.grant
        if grant is None or (grant.model is None and grant.max_tokens is None):
            return body
        return pin(body, self.dialect.name, grant.model, grant.max_tokens)

    def _reasoning_field(self) -> ReasoningField:
        chosen = self.settings.replay_reasoning
        return reasoning_field(self.profile) if chosen == "auto" else chosen

    def _consumed_removed(self, parsed: dict[str, Any]) -> dict[str, Any]:
        """The body less what the proxy consumed: ``store``, the session id fields."""
        out = parsed
        if not self.settings.forward_store or self.profile in STRICT_PROFILES:
            out = {key: value for key, value in parsed.items() if key != "store" and key not in _CONSUMED}
            metadata = parsed.get("metadata")
            if "store" in parsed and self.dialect.name == "openai":
                # OpenAI accepts `metadata` only beside `store: true` (notes/providers.md), and a
                # chat turn that creates a session keeps it as the session's metadata; Anthropic's
                # `metadata.user_id` is its own and goes on
                out.pop("metadata", None)
            elif isinstance(metadata, dict) and "session_id" in metadata:
                rest = {key: value for key, value in metadata.items() if key != "session_id"}
                if rest:
                    out["metadata"] = rest
                else:
                    del out["metadata"]
        elif any(key in parsed for key in _CONSUMED):
            out = {key: value for key, value in parsed.items() if key not in _CONSUMED}
        return out

    def _forward_scope(self) -> Scope:
        """The scope the app sees: the rewritten body's framing, session headers removed."""
        # accept-encoding goes too: an uncompressed reply is recorded and rewritten as it is
        # content-encoding goes as well: the body is the proxy's own, uncompressed JSON
        drop = self.context.header_names | _REFRAMED
        if self.grant is not None:  # the browser's secret stays here; the upstream gets the proxy's key
            drop = drop | _CREDENTIAL_HEADERS
        headers = [(name, value) for name, value in self.scope["headers"] if name.lower() not in drop]
        headers.append((b"content-length", str(len(self.body)).encode()))
        upstream_key = self.context.upstream_key
        if self.grant is not None and upstream_key is not None:
            name = _UPSTREAM_KEY_HEADERS.get(self.dialect.name)
            headers.append((name, upstream_key) if name else (b"authorization", b"Bearer " + upstream_key))
        return {**self.scope, "headers": headers, DIALECT_KEY: self.dialect}

    async def _send_recorded(self, recorded: Recorded, stream: bool) -> None:
        """Answer a retried turn from the store: no upstream call, no new turn."""
        body = recorded.body
        if not stream and recorded.content_type == b"application/json":
            body = with_session_id(orjson.loads(body), body, recorded.session_id)
        headers = [
            (b"content-type", recorded.content_type),
            (b"content-length", str(len(body)).encode()),
            (b"x-session-id", recorded.session_id.encode()),
            (b"x-session-replayed", b"true"),
        ]
        if self.exchange is not None:
            self.exchange.status, self.exchange.session_id = 200, recorded.session_id
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def _read_body(self, headers: Headers) -> bytes:
        limit = self.settings.max_body_size
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"content-length" and value.isdigit() and int(value) > limit:
                raise body_too_large(limit, "max_body_size")
            if lowered == b"content-encoding":
                self.content_encoding = value
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientError(400, "The client disconnected.")  # nobody will read it
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise body_too_large(limit, "max_body_size")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def receive_replayed_body(self) -> Message:
        # Hand the body out once, then defer to the real receive (which reports the
        # disconnect): replaying it forever would hang a streaming response.
        if self.replayed:
            if self.watching is not None:  # a wait for the session already asked for the next message
                watching, self.watching = self.watching, None
                return await watching
            return await self.receive()
        self.replayed = True
        return {"type": "http.request", "body": self.body, "more_body": False}

    async def _gone_within(self, seconds: float) -> bool:
        """Wait ``seconds`` for the session, or less if the client disconnects meanwhile (True)."""
        if self.watching is None:
            # the body was read whole: the next message the server has for us is the disconnect
            self.watching = asyncio.ensure_future(self.receive())
        watching = self.watching
        if not watching.done():
            await asyncio.wait({watching}, timeout=seconds)
            if not watching.done():
                return False
        elif watching.result()["type"] != "http.disconnect":
            await asyncio.sleep(seconds)  # a message that is no disconnect: only wait
        return bool(watching.result()["type"] == "http.disconnect")


_SECRET_MAY_NOT_SEND = frozenset({"system", "developer", "assistant"})


def _only_user_turns(sent: list[Canonical]) -> None:
    """A client secret (a browser) may only add user messages and tool results (issue 10, defect 6):
    a system prompt or an assistant message would rewrite the conversation its owner set up."""
    for item in sent:
        role = item.message.get("role")
        if role in _SECRET_MAY_NOT_SEND:
            raise ClientError(
                403,
                f"A client secret may only send user messages and tool results, not '{role}' messages.",
                type="permission_error",
                code="client_secret_role",
            )

"""One chat request through the session layer: identify, splice, forward, record.

Requests without a session identity reach the app with their original bytes. The body
is only parsed when a session header is present or the bytes could hold a session field,
so stateless traffic pays for one substring scan.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from ..dialects.openai_stream import AssistantReply
from ..errors import ClientError, StoreError
from ..sessions.idempotency import IdempotencyKey, idempotency_key
from ..sessions.identity import (
    MINTED_PREFIX,
    Grant,
    body_session_id,
    header_session_id,
    mint_session_id,
    resolve_session_id,
)
from ..sessions.leases import TurnLease
from ..sessions.messages import MessageIds, validate_messages
from ..sessions.retries import completion_body, completion_stream, is_retry, recorded_reply
from ..sessions.splice import TurnPlan, plan_turn
from ..sessions.turn_writes import turn_write
from ..settings import Settings
from ..stores.base import IdempotentReply, SessionSnapshot, Store
from ..types import ASGIApp, Headers, Message, Receive, Scope, Send
from .replies import send_error, send_failure
from .tap import ResponseTap

logger = logging.getLogger("statefulproxy")

CHAT_SUFFIX = "/chat/completions"
# Bytes that a body carrying a session field must contain. "\u" covers keys spelled with
# JSON escapes, which are rare enough that parsing those bodies costs nothing overall.
_SESSION_MARKERS = (b"session_id", b"sessionId", b'"store"', b"\\u")
# Fields the proxy consumes; `store`/`metadata.session_id` stay when forward_store is set.
_CONSUMED = ("session_id", "sessionId")


def is_chat_request(scope: Scope) -> bool:
    path: str = scope["path"]
    return scope["method"] == "POST" and path.endswith(CHAT_SUFFIX)


@dataclass(frozen=True, slots=True)
class TurnContext:
    """What every chat turn of one middleware shares: its collaborators and configuration."""

    app: ASGIApp
    store: Store
    settings: Settings
    header_names: frozenset[bytes]
    owner_for: Callable[[Scope], Awaitable[str]]  # 401 for an anonymous request when a credential is required
    message_ids: MessageIds
    upstream_authorization: bytes | None  # "Bearer <key>" for client-secret requests


class ChatTurn:
    """Per-request state of one chat request."""

    def __init__(self, context: TurnContext, scope: Scope, receive: Receive, send: Send, grant: Grant | None) -> None:
        self.app = context.app
        self.store = context.store
        self.settings = context.settings
        self.header_names = context.header_names
        self.owner_for = context.owner_for
        self.message_ids = context.message_ids
        self.upstream_authorization = context.upstream_authorization
        self.grant = grant
        self.scope = scope
        self.receive = receive
        self.send = send
        self.body = b""
        self.replayed = False

    async def run(self) -> None:
        try:
            await self._run()
        except ClientError as error:
            await send_error(self.send, error)

        except StoreError as exc:
            logger.error("session store unavailable: %s", exc)
            await send_failure(self.send, 503, "The session store is unavailable.", "store_error", "store_unavailable")

    async def _run(self) -> None:
        headers: Headers = self.scope["headers"]
        body = self.body = await self._read_body(headers)
        from_headers = header_session_id(headers, self.header_names)
        if from_headers is None and self.grant is None and not any(marker in body for marker in _SESSION_MARKERS):
            await self.app(self.scope, self.receive_replayed_body, self.send)
            return
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            # a body that names a session but cannot be read must not go upstream as a stateless one
            named = b"session_id" in body or b"sessionId" in body
            if from_headers is not None or self.grant is not None or named:
                raise ClientError(400, "The request body must be a JSON object for a session request.")
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

    async def _session_turn(self, parsed: dict[str, Any], session_id: str | None, record: bool) -> None:
        if "messages" not in parsed:
            raise ClientError(400, "'messages' is required for a session request.", param="messages")
        sent = validate_messages(parsed["messages"])
        # a turn that is not recorded keeps no reply: its key means nothing here
        key = idempotency_key(self.scope["headers"], self.body) if record else None
        snapshot: SessionSnapshot | None = None
        lease: TurnLease | None = None
        minted = session_id is None
        # a minted id goes through the store too: its first turn needs the store to be there
        try:
            owner = await self._owner()
            if session_id is None:
                session_id = mint_session_id() if key is None else key.session_id(owner)
            if record:
                lease = TurnLease(self.store, owner, session_id, self.settings)
                snapshot = await lease.load(None if key is None else key.hashed)
            else:
                snapshot = await self.store.load(owner, session_id)
        except StoreError as exc:
            if self.settings.on_store_error != "passthrough":
                raise
            # configured to degrade: the turn goes upstream without its history, unrecorded
            logger.warning("session store unavailable, forwarding without history: %s", exc)
            session_id = session_id or mint_session_id()
            owner, lease, record, key = "", None, False, None
        else:
            if snapshot is not None and snapshot.idempotent is not None and key is not None:
                await self._send_recorded(key.reply(snapshot.idempotent), parsed, session_id)  # no lease taken
                return
            if snapshot is None and not minted and (session_id.startswith(MINTED_PREFIX) or self.grant is not None):
                await _release(lease)
                raise ClientError(
                    404, f"No session found with id '{session_id}'.", param="session_id", code="not_found"
                )
            if snapshot is not None:
                try:
                    _admit(snapshot)
                except ClientError:
                    await _release(lease)
                    raise
        try:
            await self._forward_turn(parsed, sent, session_id, owner, snapshot, lease, record, key)
        finally:
            await _release(lease)

    async def _forward_turn(
        self,
        parsed: dict[str, Any],
        sent: list[dict[str, Any]],
        session_id: str,
        owner: str,
        snapshot: SessionSnapshot | None,
        lease: TurnLease | None,
        record: bool,
        key: IdempotencyKey | None,
    ) -> None:
        reasoning_field = self.settings.replay_reasoning
        try:
            plan = plan_turn(
                snapshot.replay if snapshot else (), snapshot.leading_system if snapshot else 0, sent, reasoning_field
            )
            scope = self._forward_scope(parsed, plan)
        except orjson.JSONEncodeError as exc:
            # Past 254 levels orjson cannot write JSON back (past 1024 it cannot read it: a 400
            # too). Session bodies are always re-serialised before anything is forwarded or
            # stored, so this is the depth cap, and it costs nothing to check. (JSONEncodeError is
            # a TypeError: anything but the recursion limit is a bug, and must not look like a 400.)
            if not _too_deep(exc):
                raise
            raise ClientError(400, "The request body nests too deeply (at most 254 levels).", code="too_deep") from None
        if snapshot is not None and record and key is None and is_retry(self.scope["headers"]):
            reply = recorded_reply(snapshot.replay, plan)
            if reply is not None:
                await self._send_recorded(reply, parsed, session_id)
                return

        async def commit(reply: AssistantReply) -> None:
            if not record:
                return
            try:
                write = turn_write(
                    plan,
                    reply,
                    sent,
                    parsed.get("metadata"),
                    create=snapshot is None,
                    new_id=self.message_ids.new,
                    reasoning_field=reasoning_field,
                )
            except orjson.JSONEncodeError as exc:
                if not _too_deep(exc):
                    raise
                logger.warning("reply nests too deeply to be stored; turn not recorded")
                return
            if key is not None:
                # the message as recorded (refusal included), not its replay form
                kept = IdempotentReply(
                    key.hashed, key.keep(orjson.dumps(reply.message)), self.settings.idempotency_ttl_ms
                )
                write = dataclasses.replace(write, idempotent=kept)
            if lease is not None:
                write = dataclasses.replace(write, lease_token=lease.token)
            result = await self.store.commit(owner, session_id, write)
            if lease is not None:
                lease.released = True  # the commit released it in the same step
            if result != "ok":
                logger.info("turn not recorded: session %s", result)

        if lease is not None:
            lease.keep_renewed()
        tap = ResponseTap(self.send, session_id, commit)
        await self.app(scope, self.receive_replayed_body, tap.send_and_record)

    async def _owner(self) -> str:
        if self.grant is not None:
            return self.grant.owner
        return await self.owner_for(self.scope)

    async def _send_recorded(self, reply: dict[str, Any], parsed: dict[str, Any], session_id: str) -> None:
        """Answer a retry of the last recorded turn from the history: no upstream call, no new turn."""
        if parsed.get("stream") is True:
            body, content_type = completion_stream(reply, parsed.get("model")), b"text/event-stream"
        else:
            body, content_type = completion_body(reply, parsed.get("model"), session_id), b"application/json"
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"x-session-id", session_id.encode()),
            (b"x-session-replayed", b"true"),
        ]
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    def _forward_scope(self, parsed: dict[str, Any], plan: TurnPlan) -> Scope:
        """The scope the app sees: consumed fields and headers removed, history spliced in."""
        out = parsed
        if not self.settings.forward_store:
            out = {key: value for key, value in parsed.items() if key != "store" and key not in _CONSUMED}
            metadata = parsed.get("metadata")
            if "store" in parsed:
                # OpenAI accepts `metadata` only beside `store: true` (notes/providers.md), and a
                # chat turn that creates a session keeps it as the session's metadata
                out.pop("metadata", None)
            elif isinstance(metadata, dict) and "session_id" in metadata:
                rest = {key: value for key, value in metadata.items() if key != "session_id"}
                if rest:
                    out["metadata"] = rest
                else:
                    del out["metadata"]
        elif any(key in parsed for key in _CONSUMED):
            out = {key: value for key, value in parsed.items() if key not in _CONSUMED}
        if plan.forward is not None:
            out = {**out} if out is parsed else out
            out["messages"] = orjson.Fragment(b"[" + b",".join(plan.forward) + b"]")
        # Always re-serialised, even when unchanged: the upstream must read exactly what was
        # parsed and recorded (a body with duplicate keys reads differently elsewhere).
        self.body = orjson.dumps(out)
        # accept-encoding goes too: an uncompressed reply is recorded and rewritten as it is
        drop = self.header_names | {b"content-length", b"transfer-encoding", b"accept-encoding"}
        if self.grant is not None:  # the browser's secret stays here; the upstream gets the proxy's key
            drop = drop | {b"authorization", b"x-api-key", b"api-key"}
        headers = [(name, value) for name, value in self.scope["headers"] if name.lower() not in drop]
        headers.append((b"content-length", str(len(self.body)).encode()))
        if self.grant is not None and self.upstream_authorization is not None:
            headers.append((b"authorization", self.upstream_authorization))
        return {**self.scope, "headers": headers}

    async def _read_body(self, headers: Headers) -> bytes:
        limit = self.settings.max_body_size
        for name, value in headers:
            if name.lower() == b"content-length" and value.isdigit() and int(value) > limit:
                raise _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientError(400, "The client disconnected.")  # nobody will read it
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def receive_replayed_body(self) -> Message:
        # Hand the body out once, then defer to the real receive (which reports the
        # disconnect): replaying it forever would hang a streaming response.
        if self.replayed:
            return await self.receive()
        self.replayed = True
        return {"type": "http.request", "body": self.body, "more_body": False}


def _too_deep(exc: orjson.JSONEncodeError) -> bool:
    return "Recursion limit" in str(exc)


async def _release(lease: TurnLease | None) -> None:
    if lease is not None:
        await lease.release()


def _admit(snapshot: SessionSnapshot) -> None:
    """Refuse a turn on a read-only session or one over its request limits."""
    if snapshot.status != "active":
        raise ClientError(
            409, f"Session '{snapshot.id}' is {snapshot.status} and read-only.", code=f"session_{snapshot.status}"
        )
    if snapshot.retry_after is not None:
        per_minute = snapshot.limited_by == "max_requests_per_1_minute"
        raise ClientError(
            429,
            f"Session '{snapshot.id}' is over its {'per-minute request limit' if per_minute else 'request limit'}.",
            type="rate_limit_error",
            code="rate_limit_exceeded" if per_minute else "max_requests_exceeded",
            headers=[(b"retry-after", str(snapshot.retry_after).encode())],
        )


def _too_large(limit: int) -> ClientError:
    return ClientError(413, f"The request body exceeds the limit of {limit} bytes.", code="request_too_large")

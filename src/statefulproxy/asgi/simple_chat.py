"""The minimal chat API of simple front-ends (CONTRACT.md section 3), over any upstream.

Many RAG and support back-ends expose one message in, one answer out, with the history and
a delete beside it. Under ``simple_chat_prefix``:

- ``POST {prefix}/completions`` ``{"message", "sessionId", ...}`` -> ``{"success": true, "data":
  "<answer>"}``. It is an OpenAI chat turn on the session, forwarded to the upstream's
  ``/v1/chat/completions`` through the same session layer as every dialect. ``model`` is
  forwarded if given; other fields are kept beside the turn in the store, never sent upstream.
- ``GET {prefix}/history/{sessionId}?page=N``: 20 messages a page, oldest first.
- ``DELETE {prefix}/{sessionId}``: the conversation is deleted; 204.

Errors are ``{"success": false, "error": "<message>"}`` with the status the other APIs use.
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson

from ..dialects import OPENAI
from ..dialects.base import text_of
from ..errors import ClientError, StoreError
from ..sessions.identity import validate_session_id
from ..stores.base import Store
from ..types import Headers, Message, Receive, Scope, Send
from .api_codec import json_object
from .api_models import message_object
from .chat import ChatTurn, TurnContext
from .replies import send_json
from .request_body import read_body

PAGE_SIZE = 20
MAX_BODY = 1024 * 1024
CHAT_PATH = "/v1/chat/completions"
_FORWARDED = ("message", "sessionId", "model")
_SHOWN_ROLES = frozenset({"user", "assistant"})


class SimpleChatAPI:
    """A pure ASGI handler for the paths under the prefix; ``rest`` is the path after it."""

    def __init__(self, turns: TurnContext, store: Store, owner_for: Callable[[Scope], Awaitable[str]]) -> None:
        self.turns = turns
        self.store = store
        self.owner_for = owner_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send, rest: str) -> None:
        method: str = scope["method"]
        try:
            if rest == "/completions" and method == "POST":
                await self._completion(scope, receive, send)
                return
            if rest.startswith("/history/") and method == "GET":
                await _send(send, 200, {"success": True, "data": await self._history(scope, rest[9:])})
                return
            if rest.count("/") == 1 and rest != "/" and method == "DELETE":
                session_id = validate_session_id(rest[1:], "path")
                await self.store.delete(await self.owner_for(scope), session_id)
                await send({"type": "http.response.start", "status": 204, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
            raise ClientError(404, f"Unknown path or method: {method} '{scope['path']}'.")
        except ClientError as error:
            await _send(send, error.status, {"success": False, "error": error.message}, error.headers)
        except StoreError:
            await _send(send, 503, {"success": False, "error": "The session store is unavailable."})

    async def _completion(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = await _read_json(receive)
        message, session_id = request.get("message"), request.get("sessionId")
        if not isinstance(message, str) or not message.strip():
            raise ClientError(400, "'message' must be a non-empty string.")
        validate_session_id(session_id, "sessionId")
        chat: dict[str, Any] = {"messages": [{"role": "user", "content": message}], "sessionId": session_id}
        if isinstance(request.get("model"), str):
            chat["model"] = request["model"]
        extra = {key: value for key, value in request.items() if key not in _FORWARDED}
        body = orjson.dumps(chat)
        headers = [(name, value) for name, value in scope["headers"] if name.lower() not in _FRAMING]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        chat_scope = {**scope, "path": CHAT_PATH, "raw_path": CHAT_PATH.encode(), "headers": headers}
        answer = _Answer()
        sent = False

        async def receive_chat() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await ChatTurn(self.turns, chat_scope, receive_chat, answer.send, None, OPENAI, None, extra or None).run()
        status, reply = answer.result()
        await _send(send, status, reply, answer.session_header())

    async def _history(self, scope: Scope, raw_id: str) -> list[dict[str, Any]]:
        session_id = validate_session_id(raw_id, "path")
        query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
        try:
            page = max(int(query.get("page", "0")), 0)  # negative pages are the first
        except ValueError:
            raise ClientError(400, "'page' must be an integer.") from None
        stored = await self.store.messages(await self.owner_for(scope), session_id) or []
        shown = [message_object(message) for message in stored]
        shown = [message for message in shown if message["role"] in _SHOWN_ROLES]
        return [
            {"role": message["role"], "content": text_of(message.get("content")), "createdAt": _iso(message)}
            for message in shown[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]
        ]


_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"content-type", b"content-encoding"})


class _Answer:
    """Collects the chat turn's whole reply (it is not streamed) to answer it in the simple shape."""

    def __init__(self) -> None:
        self.status = 502
        self.headers: Headers = []
        self.chunks: list[bytes] = []

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", ()))
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))

    def session_header(self) -> Headers:
        return [(name, value) for name, value in self.headers if name.lower() == b"x-session-id"]

    def result(self) -> tuple[int, dict[str, Any]]:
        try:
            body = orjson.loads(b"".join(self.chunks))
        except orjson.JSONDecodeError:
            body = None
        if 200 <= self.status < 300 and isinstance(body, dict):
            reply = OPENAI.reply_from_body(body)
            if reply is not None:
                return 200, {"success": True, "data": text_of(reply.message.get("content"))}
        return (self.status if self.status >= 400 else 502), {"success": False, "error": _error_text(body)}


def _error_text(body: object) -> str:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(message := error.get("message"), str):
            return message
        if isinstance(error, str):
            return error
    return "The upstream did not answer with a chat completion."


def _iso(message: dict[str, Any]) -> str:
    when = datetime.datetime.fromtimestamp(message["created_at"], datetime.UTC)
    return when.isoformat().replace("+00:00", "Z")


async def _read_json(receive: Receive) -> dict[str, Any]:
    return json_object(await read_body(receive, MAX_BODY))


async def _send(
    send: Send, status: int, value: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send_json(send, status, orjson.dumps(value), headers)

"""A turn cannot hold its session forever (issue 10, defect 7): past max_turn_duration, or when the
client stops reading for send_timeout, the turn is cut, nothing is recorded and the lease is released."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from statefulproxy import SessionMiddleware
from statefulproxy.stores import Lease
from statefulproxy.types import Message, Receive, Scope, Send

pytestmark = pytest.mark.anyio

CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"word "}}]}\n\n'


def stream_app(chunks: int, forever: bool = False) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for _ in range(chunks):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        if forever:
            await asyncio.Event().wait()  # an upstream that never finishes
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def request(session_id: str) -> tuple[Scope, Receive]:
    body = orjson.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "headers": [(b"session-id", session_id.encode()), (b"content-length", str(len(body)).encode())],
    }
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError

    return scope, receive


async def test_a_client_that_stops_reading_is_cut_and_the_session_freed() -> None:
    middleware = SessionMiddleware(
        stream_app(chunks=50), store="memory://", lease_ttl="0.15s", send_timeout="0.2s", on_busy="reject"
    )
    messages: list[Message] = []

    async def stuck_send(message: Message) -> None:
        messages.append(message)
        if len(messages) == 3:
            await asyncio.Event().wait()  # the client reads no more: the send never returns

    scope, receive = request("stuck")
    await asyncio.wait_for(middleware(scope, receive, stuck_send), 5)  # returns: the turn was cut
    assert not any(m.get("more_body") is False for m in messages)  # never a clean end

    finished: list[Message] = []

    async def send(message: Message) -> None:
        finished.append(message)

    scope, receive = request("stuck")
    await asyncio.wait_for(middleware(scope, receive, send), 5)
    assert finished[0]["status"] == 200  # not 409 session_busy: the lease was released
    assert finished[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    history = await middleware.store.messages(await middleware.owner_for(scope), "stuck")
    assert history is not None
    assert len(history) == 2  # only the second, complete turn was recorded


async def test_a_turn_past_max_turn_duration_is_cut() -> None:
    middleware = SessionMiddleware(
        stream_app(chunks=1, forever=True),
        store="memory://",
        lease_ttl="0.15s",
        max_turn_duration="0.2s",
        on_busy="reject",
    )
    messages: list[Message] = []

    async def send(message: Message) -> None:
        messages.append(message)

    scope, receive = request("slow")
    await asyncio.wait_for(middleware(scope, receive, send), 5)
    assert [m.get("more_body") for m in messages if m["type"] == "http.response.body"] == [True]
    assert await middleware.store.get(await middleware.owner_for(scope), "slow") is None  # nothing recorded
    # the lease is free: another turn's read takes it (a held one raises SessionBusy)
    assert await middleware.store.load(await middleware.owner_for(scope), "slow", Lease("next", 1000)) is None

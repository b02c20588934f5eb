"""A turn leaves no reference cycles behind: everything it allocated is freed by reference counting
the moment it ends. A cycle would make every turn garbage for the cyclic collector, whose cost grows
with the live object graph (it made a Redis turn ~10% dearer in proxy CPU before it was found)."""

from __future__ import annotations

import asyncio
import collections
import gc
from typing import Any

import orjson
import pytest

from statefulproxy import SessionMiddleware
from statefulproxy.stores import store_from_url
from statefulproxy.types import Message, Receive, Scope, Send

pytestmark = pytest.mark.anyio

REPLY = orjson.dumps(
    {
        "id": "c",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    }
)
CHUNKS = [
    b'data: {"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":"hel"}}]}\n\n',
    b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}\n\n',
    b"data: [DONE]\n\n",
]


async def upstream(scope: Scope, receive: Receive, send: Send) -> None:
    body = orjson.loads((await receive())["body"])
    if body.get("stream"):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for chunk in CHUNKS:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(REPLY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": REPLY})


async def turn(app: Any, session_id: str, stream: bool) -> int:
    body = orjson.dumps({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "headers": [
            (b"authorization", b"Bearer sk-garbage"),
            (b"session-id", session_id.encode()),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError

    statuses: list[int] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0]


@pytest.mark.parametrize("backend", ["memory", "redis"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_session_turn_leaves_no_cyclic_garbage(
    backend: str, stream: bool, request: pytest.FixtureRequest
) -> None:
    url = "memory://" if backend == "memory" else str(request.getfixturevalue("redis_url"))
    store = store_from_url(url, ttl=60, key_prefix=f"garbage{stream:d}")
    app = SessionMiddleware(upstream, store=store)
    try:
        for number in range(5):  # warm: connections, caches, the owner secret
            assert await turn(app, f"warm-{number}", stream) == 200
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for number in range(20):
                assert await turn(app, f"turn-{number % 3}", stream) == 200
            gc.collect()
            kinds = collections.Counter(type(thing).__qualname__ for thing in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    finally:
        await store.aclose()
    assert not kinds, f"cyclic garbage left by 20 turns: {kinds.most_common(8)}"


def test_the_server_process_keeps_its_startup_objects_out_of_collections() -> None:
    # In a child process: the suite's own collector settings stay as they are.
    import subprocess
    import sys

    code = (
        "import gc; from statefulproxy.app import create_app; from statefulproxy.settings import load_settings;"
        "create_app(load_settings({'upstream': 'http://127.0.0.1:9'}, {}));"
        "print(gc.get_threshold()[0], gc.get_freeze_count())"
    )
    threshold, frozen = map(int, subprocess.check_output([sys.executable, "-c", code], text=True).split())
    assert threshold >= 10_000
    assert frozen > 10_000  # the modules and everything else alive at startup

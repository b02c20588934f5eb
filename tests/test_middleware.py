"""SessionMiddleware around a third-party-style Starlette app that calls "an LLM" itself."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from harness.servers import serve
from statefulproxy import SessionMiddleware

openai = pytest.importorskip("openai")


def build_app(seen: list[list[dict[str, Any]]], store: str) -> Starlette:
    async def chat(request: Request) -> Response:
        body = await request.json()
        messages = body["messages"]
        seen.append(messages)
        answer = f"you said {messages[-1]['content']} ({len(messages)} messages)"
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": "c",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "m",
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
                    ],
                }
            )

        async def events() -> AsyncIterator[bytes]:
            for piece in (answer[:5], answer[5:]):
                chunk = {
                    "id": "c",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": "m",
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                }
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def hello(request: Request) -> Response:
        return JSONResponse({"hello": "world"})

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/hello", hello)])
    app.add_middleware(SessionMiddleware, store=store)
    return app


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> str:
    return "memory://" if request.param == "memory" else str(request.getfixturevalue("redis_url"))


@pytest.fixture
def session_id() -> str:
    return f"mw-{uuid.uuid4().hex}"


@pytest.fixture
def served(store: str) -> Iterator[tuple[str, list[list[dict[str, Any]]]]]:
    seen: list[list[dict[str, Any]]] = []
    with serve(build_app(seen, store)) as url:
        yield url, seen


@pytest.mark.parametrize("stream", [False, True])
def test_wrapped_app_gets_spliced_history_and_its_answers_are_recorded(
    served: tuple[str, list[list[dict[str, Any]]]], session_id: str, stream: bool
) -> None:
    url, seen = served
    with openai.OpenAI(base_url=url + "/v1", api_key="k", default_headers={"session-id": session_id}) as client:
        for text in ("one", "two", "three"):
            if stream:
                with client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": text}], stream=True
                ) as chunks:
                    answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            else:
                answer = (
                    client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}])
                    .choices[0]
                    .message.content
                )
            assert answer == f"you said {text} ({len(seen[-1])} messages)"
        history = client.get(f"/sessions/{session_id}/messages", cast_to=object)
    assert [len(messages) for messages in seen] == [1, 3, 5]
    assert seen[-1][:2] == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "you said one (1 messages)"},
    ]
    assert len(history["data"]) == 6  # type: ignore[index]


def test_other_routes_of_the_wrapped_app_are_untouched(served: tuple[str, list[list[dict[str, Any]]]]) -> None:
    url, _seen = served
    with openai.OpenAI(base_url=url, api_key="k") as client:
        assert client.get("/hello", cast_to=object) == {"hello": "world"}
    with openai.OpenAI(base_url=url + "/v1", api_key="k") as client:
        stateless = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "plain"}])
    assert stateless.choices[0].message.content == "you said plain (1 messages)"
    assert stateless.metadata is None


def test_middleware_takes_settings_as_keywords() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never called
        raise AssertionError

    middleware = SessionMiddleware(app, store="memory://", session_headers="x-conversation", session_ttl="1h")
    assert middleware.header_names == frozenset({b"x-conversation"})
    assert middleware.settings.session_ttl == 3600
    from statefulproxy import ConfigError

    with pytest.raises(ConfigError, match="store"):
        SessionMiddleware(app, store="bogus://")

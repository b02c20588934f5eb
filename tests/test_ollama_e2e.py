"""Ollama /api/chat sessions end to end: raw httpx2 and the ollama client -> the proxy under uvicorn -> a scripted
upstream, over both stores (CONTRACT.md sections 3 and 4)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx2
import ollama
import pytest

from harness import upstream as reply
from harness.stack import Stack, running_stack, store_url_for
from harness.upstream import RecordedRequest

KEY = "ollama-e2e-key"
PATH = "/api/chat"
MODEL = "llama3.2"
TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} of a place",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    for name in ("get_weather", "get_time")
]


@pytest.fixture(scope="module", params=["memory", "redis"])
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    with running_stack(store_url_for(request.param, redis_url)) as running:
        yield running


@pytest.fixture(autouse=True)
def every_scripted_reply_is_played(stack: Stack) -> Iterator[None]:
    yield
    assert stack.upstream.pending == 0, "a scripted reply was never asked for"


@pytest.fixture
def session_id() -> str:
    return f"olla-{uuid.uuid4().hex[:12]}"


def http(stack: Stack, session_id: str | None = None) -> httpx2.Client:
    headers = {"authorization": f"Bearer {KEY}"}
    if session_id:
        headers["session-id"] = session_id
    return httpx2.Client(base_url=stack.url, headers=headers, timeout=10)


def client(stack: Stack, session_id: str) -> ollama.Client:
    return ollama.Client(host=stack.url, headers={"authorization": f"Bearer {KEY}", "session-id": session_id})


def canonical_history(stack: Stack, session_id: str) -> list[dict[str, Any]]:
    skip = ("id", "object", "created_at")
    return [
        {key: value for key, value in message.items() if key not in skip} for message in raw_history(stack, session_id)
    ]


def raw_history(stack: Stack, session_id: str) -> list[dict[str, Any]]:
    with http(stack) as management:
        response = management.get(f"/v1/sessions/{session_id}/messages", params={"limit": 100})
    assert response.status_code == 200, response.text
    messages: list[dict[str, Any]] = response.json()["data"]
    return messages


def message_count(stack: Stack, session_id: str) -> int | None:
    with http(stack) as management:
        response = management.get(f"/v1/sessions/{session_id}")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    count: int = response.json()["message_count"]
    return count


def upstream_requests(stack: Stack, before: int) -> list[RecordedRequest]:
    return [request for request in stack.upstream.received[before:] if request.path.endswith(PATH)]


def ndjson_lines(body: bytes) -> list[dict[str, Any]]:
    assert body.endswith(b"\n")
    return [json.loads(line) for line in body.splitlines()]


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def assert_well_formed(messages: list[dict[str, Any]]) -> None:
    """Tool messages come right after the assistant message whose calls they answer (by tool_name), at most
    one per call; every call's arguments are an object; system messages lead."""
    roles = [message["role"] for message in messages]
    leading = len(roles) - len("".join("s" if role == "system" else "x" for role in roles).lstrip("s"))
    assert "system" not in roles[leading:], roles
    open_calls: list[str] = []
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            calls = message.get("tool_calls") or []
            assert all(isinstance(call["function"]["arguments"], dict) for call in calls), calls
            open_calls = [call["function"]["name"] for call in calls]
        elif message["role"] == "tool":
            assert messages[index - 1]["role"] in ("assistant", "tool"), roles
            assert message.get("tool_name") in open_calls, (message, open_calls)
            open_calls.remove(message["tool_name"])
        else:
            open_calls = []


def test_streams_ndjson_by_default_and_splices_history(stack: Stack, session_id: str) -> None:
    before = len(stack.upstream.received)
    stack.upstream.push(reply.text("Hello there, friend."), reply.text("Still here."), reply.text("Arr."), path=PATH)
    system = {"role": "system", "content": "be kind"}
    with http(stack, session_id) as chat:
        streamed = chat.post(PATH, json={"model": MODEL, "messages": [system, user("hi")]})
        assert streamed.status_code == 200
        assert streamed.headers["content-type"].startswith("application/x-ndjson")
        assert streamed.headers["x-session-id"] == session_id
        lines = ndjson_lines(streamed.content)
        assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
        assert "".join(line["message"]["content"] for line in lines) == "Hello there, friend."
        whole = chat.post(PATH, json={"model": MODEL, "messages": [user("still there?")], "stream": False})
        assert whole.headers["content-type"].startswith("application/json")
        body = whole.json()
        assert body["message"] == {"role": "assistant", "content": "Still here."}
        assert body["done"] is True
        assert body["metadata"] == {"session_id": session_id}
        pirate = {"role": "system", "content": "talk like a pirate"}
        chat.post(PATH, json={"model": MODEL, "messages": [pirate, user("and now?")], "stream": False})
    first, second, third = (request.json for request in upstream_requests(stack, before))
    assert "stream" not in first
    assert second["stream"] is False
    assert second["messages"] == [system, user("hi"), assistant("Hello there, friend."), user("still there?")]
    assert third["messages"] == [pirate, *second["messages"][1:], assistant("Still here."), user("and now?")]
    for request in (first, second, third):
        assert_well_formed(request["messages"])
    assert canonical_history(stack, session_id) == [
        pirate,
        user("hi"),
        assistant("Hello there, friend."),
        user("still there?"),
        assistant("Still here."),
        user("and now?"),
        assistant("Arr."),
    ]


def test_the_ollama_client_streams_and_not(stack: Stack, session_id: str) -> None:
    before = len(stack.upstream.received)
    stack.upstream.push(reply.text("one answer"), reply.text("two answer", reasoning="pondering"), path=PATH)
    with client(stack, session_id) as ollama_client:
        answer = ollama_client.chat(model=MODEL, messages=[user("one")])
        assert answer.message.content == "one answer"
        parts = list(ollama_client.chat(model=MODEL, messages=[user("two")], stream=True, think=True))
        assert parts[-1].done is True
        assert "".join(part.message.content or "" for part in parts) == "two answer"
        assert "".join(part.message.thinking or "" for part in parts) == "pondering"
    first, second = (request.json for request in upstream_requests(stack, before))
    assert first["stream"] is False
    assert second["stream"] is True
    assert second["think"] is True
    assert second["messages"] == [user("one"), assistant("one answer"), user("two")]
    history = canonical_history(stack, session_id)
    assert history[-1] == {"role": "assistant", "content": "two answer", "reasoning": "pondering"}
    assert len(history) == 4


def test_tool_calls_and_their_results_by_tool_name(stack: Stack, session_id: str) -> None:
    before = len(stack.upstream.received)
    calls = [("call_w", "get_weather", '{"city": "Paris"}'), ("call_t", "get_time", '{"city": "Paris", "tz": 1}')]
    stack.upstream.push(reply.tool_calls(calls), reply.text("Sunny at noon."), reply.text("Bye."), path=PATH)
    with http(stack, session_id) as chat:
        streamed = chat.post(PATH, json={"model": MODEL, "messages": [user("Paris?")], "tools": TOOLS})
        lines = ndjson_lines(streamed.content)
        sent_calls = [call for line in lines for call in line["message"].get("tool_calls") or []]
        assert [call["function"]["arguments"] for call in sent_calls] == [{"city": "Paris"}, {"city": "Paris", "tz": 1}]
        # results named by tool, in another order than the calls: bound by name
        results = [
            {"role": "tool", "content": "12:00", "tool_name": "get_time"},
            {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        ]
        chat.post(PATH, json={"model": MODEL, "messages": results, "tools": TOOLS, "stream": False})
        chat.post(PATH, json={"model": MODEL, "messages": [user("thanks")], "stream": False})
    _, answered, thanked = (request.json for request in upstream_requests(stack, before))
    tool_turn = {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "get_time", "arguments": {"city": "Paris", "tz": 1}}},
        ],
    }
    assert answered["messages"] == [user("Paris?"), tool_turn, *results]
    assert thanked["messages"] == [user("Paris?"), tool_turn, *results, assistant("Sunny at noon."), user("thanks")]
    assert_well_formed(answered["messages"])
    assert_well_formed(thanked["messages"])
    history = canonical_history(stack, session_id)
    assert history[1]["tool_calls"] == [
        {"id": "call_w", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": "call_t", "type": "function", "function": {"name": "get_time", "arguments": '{"city":"Paris","tz":1}'}},
    ]
    assert history[2:4] == [
        {"role": "tool", "tool_call_id": "call_t", "content": "12:00"},
        {"role": "tool", "tool_call_id": "call_w", "content": "sunny"},
    ]


def test_the_ollama_client_agent_loop_is_not_duplicated(stack: Stack, session_id: str) -> None:
    before = len(stack.upstream.received)
    stack.upstream.push(reply.tool_calls([("call_1", "get_weather", '{"city": "Oslo"}')]), path=PATH)
    stack.upstream.push(reply.text("Oslo is cold."), reply.text("Wear a coat."), path=PATH)
    messages: list[Any] = [user("Oslo?")]
    with client(stack, session_id) as ollama_client:
        called = ollama_client.chat(model=MODEL, messages=messages, tools=TOOLS)
        assert called.message.tool_calls is not None
        assert called.message.tool_calls[0].function.arguments == {"city": "Oslo"}
        # the loop of Ollama's own tool-calling example: the whole transcript every time
        messages.append(called.message)
        messages.append({"role": "tool", "content": "-3 C", "tool_name": "get_weather"})
        answered = ollama_client.chat(model=MODEL, messages=messages, tools=TOOLS)
        messages.append(answered.message)
        messages.append(user("advice?"))
        ids_before = [message["id"] for message in raw_history(stack, session_id)]
        ollama_client.chat(model=MODEL, messages=messages, tools=TOOLS)
    # a transcript that starts with the stored history: only the new tail is recorded, the rest kept as it was
    assert [message["id"] for message in raw_history(stack, session_id)][:4] == ids_before
    _, second, third = (request.json for request in upstream_requests(stack, before))
    assert [message["role"] for message in second["messages"]] == ["user", "assistant", "tool"]
    assert second["messages"][1]["tool_calls"] == [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]
    assert_well_formed(third["messages"])
    assert [message["role"] for message in third["messages"]] == ["user", "assistant", "tool", "assistant", "user"]
    history = canonical_history(stack, session_id)
    assert [message["role"] for message in history] == ["user", "assistant", "tool", "assistant", "user", "assistant"]
    assert [message["content"] for message in history if message["role"] == "user"] == ["Oslo?", "advice?"]
    assert history[2]["tool_call_id"] == history[1]["tool_calls"][0]["id"]


def test_proxy_errors_are_ollama_shaped(stack: Stack) -> None:
    before = len(stack.upstream.received)
    with http(stack) as management:
        limited = management.post("/v1/sessions", json={"max_requests": 1}).json()["id"]
        ended = management.post("/v1/sessions", json={}).json()["id"]
        assert management.post(f"/v1/sessions/{ended}/end").status_code == 200
    cases = [("sess_" + "1" * 32, 404), ("bad id!", 400), (ended, 409)]
    for target, status in cases:
        with http(stack, target) as chat:
            response = chat.post(PATH, json={"model": MODEL, "messages": [user("x")]})
        assert response.status_code == status
        body = response.json()
        assert list(body) == ["error"]
        assert isinstance(body["error"], str)
        assert body["error"]
    with client(stack, "sess_" + "1" * 32) as ollama_client, pytest.raises(ollama.ResponseError) as missing:
        ollama_client.chat(model=MODEL, messages=[user("x")])
    assert missing.value.status_code == 404
    assert upstream_requests(stack, before) == []
    with client(stack, limited) as ollama_client:
        ollama_client.chat(model=MODEL, messages=[user("x")])
        with pytest.raises(ollama.ResponseError) as limit:
            list(ollama_client.chat(model=MODEL, messages=[user("y")], stream=True))
    assert limit.value.status_code == 429
    assert len(upstream_requests(stack, before)) == 1


FAILURES: dict[str, reply.Reply] = {
    "inband_error": reply.inband_error(after_chunks=2, error="model runner crashed"),
    "cut": reply.cut(after_chunks=2),
    "no_done_line": reply.no_done(),
    "status_500": reply.error(500),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failed_reply_records_nothing(stack: Stack, session_id: str, failure: str) -> None:
    before = len(stack.upstream.received)
    stack.upstream.push(reply.text("kept"), FAILURES[failure], FAILURES[failure], path=PATH)
    with http(stack, session_id) as chat:
        chat.post(PATH, json={"model": MODEL, "messages": [user("one")], "stream": False})
        assert message_count(stack, session_id) == 2
    for target in (session_id, f"{session_id}-new"):
        with http(stack, target) as chat:
            try:
                response = chat.post(PATH, json={"model": MODEL, "messages": [user("two")]})
            except httpx2.RemoteProtocolError:
                assert failure == "cut"  # the proxy cuts the client too
            else:
                assert failure != "cut"
                if failure == "inband_error":
                    assert ndjson_lines(response.content)[-1] == {"error": "model runner crashed"}
                if failure == "status_500":
                    assert response.status_code == 500
                    assert response.json() == {"error": "scripted error 500"}
    assert len(upstream_requests(stack, before)) == 3
    assert canonical_history(stack, session_id) == [user("one"), assistant("kept")]
    assert message_count(stack, f"{session_id}-new") is None


@pytest.mark.parametrize("stream", [False, True], ids=["json", "ndjson"])
def test_a_repeated_idempotency_key_gets_the_recorded_reply(stack: Stack, session_id: str, stream: bool) -> None:
    before = len(stack.upstream.received)
    stack.upstream.push(reply.tool_calls([("call_i", "get_time", '{"city": "Lima"}')], "Checking."), path=PATH)
    body = {"model": MODEL, "messages": [user("Lima time?")], "tools": TOOLS, "stream": stream}
    with http(stack, session_id) as chat:
        first = chat.post(PATH, json=body, headers={"idempotency-key": f"idem-{session_id}"})
        second = chat.post(PATH, json=body, headers={"idempotency-key": f"idem-{session_id}"})
    assert "x-session-replayed" not in first.headers
    assert second.headers["x-session-replayed"] == "true"
    assert second.headers["x-session-id"] == session_id
    messages = [
        [obj["message"] for obj in (ndjson_lines(response.content) if stream else [response.json()])]
        for response in (first, second)
    ]
    for reply_messages in messages:
        assert "".join(message["content"] for message in reply_messages) == "Checking."
        calls = [call["function"] for message in reply_messages for call in message.get("tool_calls") or []]
        assert [(call["name"], call["arguments"]) for call in calls] == [("get_time", {"city": "Lima"})]
    assert len(upstream_requests(stack, before)) == 1
    assert message_count(stack, session_id) == 2


def test_the_ollama_client_parses_a_recorded_reply(stack: Stack, session_id: str) -> None:
    before = len(stack.upstream.received)
    stack.upstream.push(reply.tool_calls([("call_j", "get_time", '{"city": "Kyiv"}')], "Sure."), path=PATH)
    headers = {"authorization": f"Bearer {KEY}", "session-id": session_id, "idempotency-key": f"idem-{session_id}"}
    with ollama.Client(host=stack.url, headers=headers) as ollama_client:
        answers = [ollama_client.chat(model=MODEL, messages=[user("Kyiv?")], tools=TOOLS) for _ in range(2)]
        # the same key with another body (stream: true) is refused, as an Ollama error
        with pytest.raises(ollama.ResponseError) as reused:
            list(ollama_client.chat(model=MODEL, messages=[user("Kyiv?")], tools=TOOLS, stream=True))
    assert reused.value.status_code == 422
    assert "Idempotency-Key" in reused.value.error
    assert answers[1].message.content == answers[0].message.content == "Sure."
    for message in (answers[0].message, answers[1].message):
        assert message.tool_calls is not None
        assert [(call.function.name, call.function.arguments) for call in message.tool_calls] == [
            ("get_time", {"city": "Kyiv"})
        ]
    assert len(upstream_requests(stack, before)) == 1
    assert message_count(stack, session_id) == 2


def test_store_false_splices_history_but_records_nothing(stack: Stack, session_id: str) -> None:
    before = len(stack.upstream.received)
    stack.upstream.push(reply.text("kept"), reply.text("not kept"), path=PATH)
    with http(stack, session_id) as chat:
        chat.post(PATH, json={"model": MODEL, "messages": [user("one")]})
        peek = chat.post(PATH, json={"model": MODEL, "messages": [user("what if")], "store": False})
    assert "".join(line["message"]["content"] for line in ndjson_lines(peek.content)) == "not kept"
    peeked = upstream_requests(stack, before)[-1].json
    assert peeked["messages"] == [user("one"), assistant("kept"), user("what if")]
    assert "store" not in peeked
    assert message_count(stack, session_id) == 2

"""The history window end to end (issue 8): what reaches the upstream, in two dialects, on both stores."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from harness import upstream as reply
from harness.stack import Stack, running_stack, store_url_for


@pytest.fixture(scope="module", params=["memory", "redis"])
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    with running_stack(store_url_for(request.param, redis_url), max_history_messages=4) as running:
        yield running


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def chat(http: httpx2.Client, session_id: str, messages: list[dict[str, Any]]) -> None:
    body = {"model": "m", "messages": messages}
    response = http.post("/v1/chat/completions", json=body, headers={"session-id": session_id})
    assert response.status_code == 200, response.text


def test_system_is_always_sent_the_window_starts_at_a_user_and_storage_is_untouched(stack: Stack) -> None:
    session_id = f"w-{uuid.uuid4().hex[:8]}"
    with stack.http() as http:
        chat(http, session_id, [{"role": "system", "content": "be brief"}, user("u1")])
        for turn in range(2, 5):
            chat(http, session_id, [user(f"u{turn}")])
        sent = stack.upstream.chat_requests[-1].json["messages"]
        # stored: system, u1 a1 u2 a2 u3 a3; the newest 4 that start at a user are u2 a2 u3 a3
        assert sent[0] == {"role": "system", "content": "be brief"}
        assert [message["role"] for message in sent[1:]] == ["user", "assistant", "user", "assistant", "user"]
        assert [message["content"] for message in sent[1:] if message["role"] == "user"] == ["u2", "u3", "u4"]
        stored = http.get(f"/v1/sessions/{session_id}/messages", params={"limit": 100}).json()["data"]
    assert [message["content"] for message in stored if message["role"] == "user"] == ["u1", "u2", "u3", "u4"]
    assert len(stored) == 9  # system + 4 turns: nothing stored was cut


def test_a_tool_call_is_never_separated_from_its_results(stack: Stack) -> None:
    session_id = f"t-{uuid.uuid4().hex[:8]}"
    stack.upstream.push(reply.tool_calls([("call_a", "f", "{}"), ("call_b", "g", "{}")]))
    with stack.http() as http:
        chat(http, session_id, [user("first")])  # -> the tool calls
        chat(
            http,
            session_id,
            [
                {"role": "tool", "tool_call_id": "call_a", "content": "A"},
                {"role": "tool", "tool_call_id": "call_b", "content": "B"},
            ],
        )
        chat(http, session_id, [user("next")])
    sent = stack.upstream.chat_requests[-1].json["messages"]
    # stored: first, call, A, B, answer: 5 > 4, and starting later would split the call from its results
    # or start at a tool message, so the window drops the whole exchange and sends only the new message
    assert sent == [user("next")]
    with stack.http() as http:
        assert http.get(f"/v1/sessions/{session_id}").json()["message_count"] == 7


def test_a_session_window_overrides_the_setting(stack: Stack) -> None:
    with stack.http() as http:
        created = http.post("/v1/sessions", json={"history_window": {"max_messages": 0, "max_tokens": 0}}).json()
        session_id = created["id"]
        for turn in range(4):
            http.post(
                "/v1/chat/completions",
                json={"model": "m", "metadata": {"session_id": session_id}, "messages": [user(f"v{turn}")]},
            )
    sent = stack.upstream.chat_requests[-1].json["messages"]
    assert len(sent) == 7  # 3 whole turns and the new message: no window for this session


def test_the_window_applies_to_other_dialects_too(stack: Stack) -> None:
    session_id = f"a-{uuid.uuid4().hex[:8]}"
    with stack.http() as http:
        for turn in range(1, 5):
            body = {"model": "claude", "max_tokens": 10, "messages": [user(f"u{turn}")]}
            if turn == 1:
                body["system"] = "be brief"
            response = http.post("/v1/messages", json=body, headers={"session-id": session_id})
            assert response.status_code == 200, response.text
    sent = stack.upstream.received[-1].json
    assert sent["system"] == "be brief"
    assert [message["role"] for message in sent["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    assert [message["content"] for message in sent["messages"] if message["role"] == "user"] == ["u2", "u3", "u4"]

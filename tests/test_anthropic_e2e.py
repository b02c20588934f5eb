"""Anthropic Messages sessions end to end: the anthropic SDK -> the proxy under uvicorn -> a scripted upstream,
over both stores (CONTRACT.md sections 3 and 4)."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import orjson
import pytest

from harness import upstream as reply
from harness.stack import Stack, running_stack, store_url_for
from harness.upstream import RecordedRequest

KEY = "sk-ant-e2e"
PATH = "/v1/messages"
MODEL = "claude-e2e"
# a realistic signature: base64 with '+', '/' and padding, replayed as the upstream sent it
SIGNATURE = "EqQBCkYIBxgCKkD+/a9Zq3x0bR7Lw1YkP/8sT2+Qm4nV0cJ5eH6uI7oA8pB9dC0eF1gH2iJ3kL4mN5oP6qR7sT8uV9wX=="
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOLS: Any = [{"name": "get_weather", "description": "weather of a city", "input_schema": WEATHER}]


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
    return f"anth-{uuid.uuid4().hex[:12]}"


def sdk(stack: Stack, session_id: str | None = None) -> anthropic.Anthropic:
    headers = {"session-id": session_id} if session_id else None
    return anthropic.Anthropic(base_url=stack.url, api_key=KEY, max_retries=0, default_headers=headers)


def management(stack: Stack) -> httpx2.Client:
    return httpx2.Client(base_url=stack.url, headers={"x-api-key": KEY}, timeout=10)


def canonical_history(stack: Stack, session_id: str) -> list[dict[str, Any]]:
    with management(stack) as http:
        response = http.get(f"/v1/sessions/{session_id}/messages", params={"limit": 100})
    assert response.status_code == 200, response.text
    skip = ("id", "object", "created_at")
    return [{key: value for key, value in message.items() if key not in skip} for message in response.json()["data"]]


def message_count(stack: Stack, session_id: str) -> int | None:
    """The session's message_count, None when it does not exist."""
    with management(stack) as http:
        response = http.get(f"/v1/sessions/{session_id}")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    count: int = response.json()["message_count"]
    return count


def upstream_requests(stack: Stack, before: int) -> list[RecordedRequest]:
    return [request for request in stack.upstream.received[before:] if request.path.endswith(PATH)]


def user(text: str) -> Any:  # Any: the SDK's message TypedDicts, and a dict to compare with
    return {"role": "user", "content": text}


def assistant_text(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def blocks_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def assert_well_formed(messages: list[dict[str, Any]]) -> None:
    """What the Messages API demands: user first and last, roles alternating, every tool_use answered by
    tool_result blocks (same ids) at the start of the next user message, and no tool_result elsewhere."""
    assert messages
    assert messages[0]["role"] == "user"
    assert messages[-1]["role"] == "user"
    for previous, current in itertools.pairwise(messages):
        assert previous["role"] != current["role"], messages
    pending: list[str] = []
    for message in messages:
        blocks = blocks_of(message)
        assert blocks, message
        if message["role"] == "assistant":
            assert not any(block["type"] == "tool_result" for block in blocks)
            pending = [block["id"] for block in blocks if block["type"] == "tool_use"]
            continue
        results = [block["tool_use_id"] for block in blocks if block["type"] == "tool_result"]
        assert sorted(results) == sorted(pending), (pending, message)
        kinds = [block["type"] for block in blocks]
        assert kinds[: len(results)] == ["tool_result"] * len(results), kinds
        pending = []


def test_multi_turn_text_keeps_and_replaces_the_system_prompt(stack: Stack, session_id: str) -> None:
    before = len(stack.upstream.received)
    stack.upstream.push(reply.text("first answer"), reply.text("second answer"), reply.text("third"), path=PATH)
    with sdk(stack, session_id) as client:
        raw = client.messages.with_raw_response.create(
            model=MODEL, max_tokens=64, system="be terse", messages=[user("one")]
        )
        assert raw.headers["x-session-id"] == session_id
        first = raw.parse()
        assert [block.text for block in first.content if block.type == "text"] == ["first answer"]
        with client.messages.stream(model=MODEL, max_tokens=64, messages=[user("two")]) as stream:
            assert stream.response.headers["x-session-id"] == session_id
            assert stream.get_final_text() == "second answer"
        events = client.messages.create(
            model=MODEL, max_tokens=64, system="be chatty", messages=[user("three")], stream=True
        )
        with events:
            kinds = [event.type for event in events]
        assert kinds[0] == "message_start"
        assert kinds[-1] == "message_stop"
    first_sent, second, third = (request.json for request in upstream_requests(stack, before))
    assert first_sent["system"] == "be terse"
    assert first_sent["messages"] == [user("one")]
    assert second["system"] == "be terse"  # omitted on turn 2: the stored one
    assert second["messages"] == [user("one"), assistant_text("first answer"), user("two")]
    assert second["stream"] is True
    assert third["system"] == "be chatty"  # a new one replaces it
    assert third["messages"] == [*second["messages"], assistant_text("second answer"), user("three")]
    for request in (first_sent, second, third):
        assert_well_formed(request["messages"])
        assert "session-id" not in json.dumps(request)
    assert canonical_history(stack, session_id) == [
        {"role": "system", "content": "be chatty"},
        user("one"),
        {"role": "assistant", "content": "first answer"},
        user("two"),
        {"role": "assistant", "content": "second answer"},
        user("three"),
        {"role": "assistant", "content": "third"},
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_store_true_mints_a_session_and_names_it_in_the_header(stack: Stack, stream: bool) -> None:
    before = len(stack.upstream.received)
    stack.upstream.push(reply.text("minted"), reply.text("resumed"), path=PATH)
    with sdk(stack) as client:
        raw = client.messages.with_raw_response.create(
            model=MODEL, max_tokens=64, messages=[user("remember 7")], stream=stream, extra_body={"store": True}
        )
        minted = raw.headers["x-session-id"]
        parsed = raw.parse()
        if stream:
            with parsed:  # type: ignore[union-attr]
                assert [event.type for event in parsed][-1] == "message_stop"  # type: ignore[union-attr]
        else:
            assert parsed.metadata == {"session_id": minted}  # type: ignore[union-attr]
        assert minted.startswith("sess_")
        assert len(minted) >= 5 + 32
        second = client.messages.create(
            model=MODEL, max_tokens=64, messages=[user("what number?")], extra_headers={"session-id": minted}
        )
    assert second.content[0].type == "text"
    assert second.content[0].text == "resumed"
    first_sent, second_sent = (request.json for request in upstream_requests(stack, before))
    assert "store" not in first_sent
    assert "store" not in second_sent
    assert second_sent["messages"] == [user("remember 7"), assistant_text("minted"), user("what number?")]
    assert message_count(stack, minted) == 4


def test_tool_use_round_trip_sends_alternating_history_with_tool_results(stack: Stack, session_id: str) -> None:
    before = len(stack.upstream.received)
    calls = [("toolu_a", "get_weather", '{"city": "Paris"}'), ("toolu_b", "get_weather", '{"city": "Oslo"}')]
    stack.upstream.push(reply.tool_calls(calls, "Checking both.", chunk_size=3), path=PATH)
    stack.upstream.push(reply.text("Paris sunny, Oslo cold."), reply.text("You're welcome."), path=PATH)
    with sdk(stack, session_id) as client:
        with client.messages.stream(model=MODEL, max_tokens=64, tools=TOOLS, messages=[user("weather?")]) as stream:
            called = stream.get_final_message()
        assert called.stop_reason == "tool_use"
        uses = [block for block in called.content if block.type == "tool_use"]
        assert [(use.id, use.input) for use in uses] == [("toolu_a", {"city": "Paris"}), ("toolu_b", {"city": "Oslo"})]
        results: Any = [
            {"type": "tool_result", "tool_use_id": "toolu_a", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_b", "content": [{"type": "text", "text": "cold"}]},
        ]
        client.messages.create(model=MODEL, max_tokens=64, tools=TOOLS, messages=[{"role": "user", "content": results}])
        client.messages.create(model=MODEL, max_tokens=64, tools=TOOLS, messages=[user("thanks")])
    _, answered, thanked = (request.json for request in upstream_requests(stack, before))
    tool_turn = {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Checking both."},
            {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {"city": "Oslo"}},
        ],
    }
    assert answered["messages"] == [user("weather?"), tool_turn, {"role": "user", "content": results}]
    # replayed from the store: tool results as tool_result blocks (text), then the next user text
    assert thanked["messages"] == [
        user("weather?"),
        tool_turn,
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_a", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "toolu_b", "content": "cold"},
            ],
        },
        assistant_text("Paris sunny, Oslo cold."),
        user("thanks"),
    ]
    assert_well_formed(answered["messages"])
    assert_well_formed(thanked["messages"])
    history = canonical_history(stack, session_id)
    assert history[1]["tool_calls"] == [
        {"id": "toolu_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": "toolu_b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
    ]
    assert history[2:4] == [
        {"role": "tool", "tool_call_id": "toolu_a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_b", "content": "cold"},
    ]
    assert [message["role"] for message in history] == [
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
        "user",
        "assistant",
    ]


def test_a_client_resending_the_whole_transcript_is_not_duplicated(stack: Stack, session_id: str) -> None:
    before = len(stack.upstream.received)
    called_reply = reply.tool_calls(
        [("toolu_x", "get_weather", '{"city": "Rome"}')],
        "Looking.",
        reasoning="Rome: use the tool.",
        signature=SIGNATURE,
    )
    stack.upstream.push(called_reply, reply.text("Rome is warm."), reply.text("Sunny."), path=PATH)
    transcript: list[Any] = [user("weather in Rome?")]
    with sdk(stack, session_id) as client:
        called = client.messages.create(model=MODEL, max_tokens=64, system="brief", tools=TOOLS, messages=transcript)
        # what an agent loop does: the SDK's message back as the assistant turn, then the tool result
        transcript.append({"role": "assistant", "content": [block.model_dump() for block in called.content]})
        result = {"type": "tool_result", "tool_use_id": "toolu_x", "content": "warm"}
        transcript.append({"role": "user", "content": [result]})
        client.messages.create(model=MODEL, max_tokens=64, system="brief", tools=TOOLS, messages=transcript)
        client.messages.create(model=MODEL, max_tokens=64, tools=TOOLS, messages=[user("and tomorrow?")])
    _, echoed, resumed = upstream_requests(stack, before)
    assert echoed.json["messages"] == transcript  # forwarded as sent: no stored history spliced in front
    assert echoed.json["system"] == resumed.json["system"] == "brief"
    # the next turn replays the upstream's own blocks (thinking signed as it sent it), not the client's echo
    produced = [
        {"type": "thinking", "thinking": "Rome: use the tool.", "signature": SIGNATURE},
        {"type": "text", "text": "Looking."},
        {"type": "tool_use", "id": "toolu_x", "name": "get_weather", "input": {"city": "Rome"}},
    ]
    assert resumed.json["messages"] == [
        transcript[0],
        {"role": "assistant", "content": produced},
        transcript[2],
        assistant_text("Rome is warm."),
        user("and tomorrow?"),
    ]
    assert orjson.dumps(produced) in resumed.body
    assert_well_formed(resumed.json["messages"])
    history = canonical_history(stack, session_id)
    roles = [message["role"] for message in history]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user", "assistant"]
    assert history[3] == {"role": "tool", "tool_call_id": "toolu_x", "content": "warm"}
    assert [message["content"] for message in history if message["role"] == "user"] == [
        "weather in Rome?",
        "and tomorrow?",
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_thinking_signature_is_replayed_byte_equal(stack: Stack, session_id: str, stream: bool) -> None:
    before = len(stack.upstream.received)
    thought = 'The user wants weather; "Zürich" needs a tool. {braces} \\ and ünïcode 🌦.'
    scripted = reply.tool_calls(
        [("toolu_t", "get_weather", '{"city": "Zürich"}')], reasoning=thought, signature=SIGNATURE, chunk_size=5
    )
    stack.upstream.push(scripted, reply.text("It is 12 °C."), path=PATH)
    result: Any = {"type": "tool_result", "tool_use_id": "toolu_t", "content": "12 C"}
    with sdk(stack, session_id) as client:
        thinking: Any = {"type": "enabled", "budget_tokens": 1024}
        first: anthropic.types.Message
        if stream:
            with client.messages.stream(
                model=MODEL, max_tokens=2048, thinking=thinking, tools=TOOLS, messages=[user("Zürich?")]
            ) as events:
                first = events.get_final_message()
        else:
            first = client.messages.create(
                model=MODEL, max_tokens=2048, thinking=thinking, tools=TOOLS, messages=[user("Zürich?")]
            )
        assert first.content[0].type == "thinking"
        assert first.content[0].signature == SIGNATURE
        client.messages.create(
            model=MODEL,
            max_tokens=2048,
            thinking=thinking,
            tools=TOOLS,
            messages=[{"role": "user", "content": [result]}],
        )
    sent_reply, replayed = upstream_requests(stack, before)
    assert sent_reply.json["messages"] == [user("Zürich?")]
    # the blocks the upstream produced, as its non-streamed body carries them
    produced = [
        {"type": "thinking", "thinking": thought, "signature": SIGNATURE},
        {"type": "tool_use", "id": "toolu_t", "name": "get_weather", "input": {"city": "Zürich"}},
    ]
    assistant = replayed.json["messages"][1]
    assert assistant == {"role": "assistant", "content": produced}
    assert orjson.dumps(produced) in replayed.body  # byte-equal, key order included
    assert replayed.json["messages"][2] == {"role": "user", "content": [result]}
    assert_well_formed(replayed.json["messages"])
    history = canonical_history(stack, session_id)
    assert history[1]["reasoning"] == thought
    assert SIGNATURE not in json.dumps(history)  # the management API shows the canonical form only


def test_proxy_errors_raise_the_sdk_exceptions(stack: Stack) -> None:
    before = len(stack.upstream.received)
    with management(stack) as http:
        limited = http.post("/v1/sessions", json={"rate_limits": {"max_requests_per_1_minute": 1}}).json()["id"]
        ended = http.post("/v1/sessions", json={}).json()["id"]
        assert http.post(f"/v1/sessions/{ended}/end").json()["status"] == "ended"
    with sdk(stack) as client:
        with pytest.raises(anthropic.NotFoundError) as missing:
            client.messages.create(
                model=MODEL, max_tokens=8, messages=[user("x")], extra_headers={"session-id": "sess_" + "0" * 32}
            )
        assert missing.value.body == {
            "type": "error",
            "error": {"type": "not_found_error", "message": f"No session found with id 'sess_{'0' * 32}'."},
        }
        with pytest.raises(anthropic.BadRequestError) as bad:
            client.messages.create(
                model=MODEL, max_tokens=8, messages=[user("x")], extra_headers={"session-id": "not valid!"}
            )
        assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
        with pytest.raises(anthropic.ConflictError):
            client.messages.create(model=MODEL, max_tokens=8, messages=[user("x")], extra_headers={"session-id": ended})
        assert upstream_requests(stack, before) == []
        client.messages.create(model=MODEL, max_tokens=8, messages=[user("x")], extra_headers={"session-id": limited})
        with (
            pytest.raises(anthropic.RateLimitError) as limit,
            client.messages.stream(
                model=MODEL, max_tokens=8, messages=[user("y")], extra_headers={"session-id": limited}
            ) as events,
        ):
            events.get_final_message()
        assert limit.value.response.headers["retry-after"].isdigit()
        assert limit.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert len(upstream_requests(stack, before)) == 1
    assert message_count(stack, limited) == 2


FAILURES: dict[str, tuple[reply.Reply, type[Exception] | None]] = {
    "inband_error": (reply.inband_error(after_chunks=3), anthropic.APIStatusError),
    "cut": (reply.cut(after_chunks=3), httpx2.RemoteProtocolError),  # the proxy cuts the client too
    "no_message_stop": (reply.no_done(), None),  # ends cleanly, relayed as it came
    "status_529": (reply.error(529), anthropic.InternalServerError),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failed_reply_records_nothing(stack: Stack, session_id: str, failure: str) -> None:
    before = len(stack.upstream.received)
    scripted, raised = FAILURES[failure]
    stack.upstream.push(reply.text("kept"), scripted, scripted, path=PATH)
    with sdk(stack, session_id) as client:
        client.messages.create(model=MODEL, max_tokens=8, messages=[user("one")])
        assert message_count(stack, session_id) == 2
        for target in (session_id, f"{session_id}-new"):

            def attempt(target: str = target) -> None:
                with client.messages.stream(
                    model=MODEL, max_tokens=8, messages=[user("two")], extra_headers={"session-id": target}
                ) as events:
                    events.get_final_message()

            if raised is None:
                attempt()
            else:
                with pytest.raises(raised):
                    attempt()
    assert len(upstream_requests(stack, before)) == 3
    assert message_count(stack, session_id) == 2
    assert canonical_history(stack, session_id) == [user("one"), {"role": "assistant", "content": "kept"}]
    assert message_count(stack, f"{session_id}-new") is None  # a session whose first turn failed is not created


def test_a_system_prompt_of_blocks_is_replayed_verbatim(stack: Stack, session_id: str) -> None:
    before = len(stack.upstream.received)
    system: Any = [
        {"type": "text", "text": "You are a pirate."},
        {"type": "text", "text": "Long context.", "cache_control": {"type": "ephemeral"}},
    ]
    with sdk(stack, session_id) as client:
        client.messages.create(model=MODEL, max_tokens=8, system=system, messages=[user("ahoy")])
        client.messages.create(model=MODEL, max_tokens=8, messages=[user("again")])
    first, second = upstream_requests(stack, before)
    assert first.json["system"] == system
    assert second.json["system"] == system  # cache_control and the block split kept
    assert canonical_history(stack, session_id)[0] == {
        "role": "system",
        "content": "You are a pirate.\n\nLong context.",
    }


def test_count_tokens_passes_through_untouched(stack: Stack, session_id: str) -> None:
    before = len(stack.upstream.received)
    with sdk(stack, session_id) as client:
        client.messages.create(model=MODEL, max_tokens=8, messages=[user("one")])
        client.messages.count_tokens(model=MODEL, messages=[user("how long is this?")])
    counted = stack.upstream.received[before:][-1]
    assert counted.path == "/v1/messages/count_tokens"
    assert counted.json["messages"] == [user("how long is this?")]  # no history spliced in
    assert message_count(stack, session_id) == 2


def test_store_true_keeps_anthropic_metadata_user_id(stack: Stack) -> None:
    before = len(stack.upstream.received)
    with sdk(stack) as client:
        client.messages.create(
            model=MODEL, max_tokens=8, messages=[user("hi")], metadata={"user_id": "u-42"}, extra_body={"store": True}
        )
    sent = upstream_requests(stack, before)[-1].json
    assert "store" not in sent
    assert sent.get("metadata") == {"user_id": "u-42"}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_repeated_idempotency_key_gets_the_recorded_reply(stack: Stack, session_id: str, stream: bool) -> None:
    before = len(stack.upstream.received)
    scripted = reply.tool_calls(
        [("toolu_i", "get_weather", '{"city": "Bern"}')], "One moment.", reasoning="Use it.", signature=SIGNATURE
    )
    stack.upstream.push(scripted, path=PATH)
    headers = {"idempotency-key": f"idem-{session_id}"}
    with sdk(stack, session_id) as client:
        answers: list[tuple[str | None, anthropic.types.Message]] = []
        for _ in range(2):
            if stream:
                with client.messages.stream(
                    model=MODEL, max_tokens=64, tools=TOOLS, messages=[user("Bern?")], extra_headers=headers
                ) as events:
                    answers.append((events.response.headers.get("x-session-replayed"), events.get_final_message()))
            else:
                raw = client.messages.with_raw_response.create(
                    model=MODEL, max_tokens=64, tools=TOOLS, messages=[user("Bern?")], extra_headers=headers
                )
                answers.append((raw.headers.get("x-session-replayed"), raw.parse()))
        # an SDK retry of the same turn (no key) is answered from the store too
        retried = client.messages.with_raw_response.create(
            model=MODEL,
            max_tokens=64,
            tools=TOOLS,
            messages=[user("Bern?")],
            extra_headers={"x-stainless-retry-count": "1"},
        )
    (first_flag, first), (second_flag, second) = answers
    assert first_flag is None
    assert second_flag == "true"
    recorded = [block.model_dump(exclude_none=True) for block in first.content]
    assert recorded == [
        {"type": "thinking", "thinking": "Use it.", "signature": SIGNATURE},
        {"type": "text", "text": "One moment."},
        {"type": "tool_use", "id": "toolu_i", "name": "get_weather", "input": {"city": "Bern"}},
    ]
    assert [block.model_dump(exclude_none=True) for block in second.content] == recorded
    assert second.stop_reason == "tool_use"
    assert retried.headers["x-session-replayed"] == "true"
    assert [block.model_dump(exclude_none=True) for block in retried.parse().content] == recorded
    assert len(upstream_requests(stack, before)) == 1
    assert message_count(stack, session_id) == 2


def sse_events(*events: dict[str, Any]) -> list[bytes]:
    return [f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode() for event in events]


def test_redacted_thinking_is_replayed_byte_equal(stack: Stack, session_id: str) -> None:
    before = len(stack.upstream.received)
    redacted = {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8c=="}
    message: dict[str, Any] = {
        "id": "msg_r",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 1},
    }
    scripted = reply.raw(
        200,
        [("content-type", "text/event-stream")],
        sse_events(
            {"type": "message_start", "message": message},
            {"type": "content_block_start", "index": 0, "content_block": redacted},
            {"type": "content_block_stop", "index": 0},
            {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
            {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Done."}},
            {"type": "content_block_stop", "index": 1},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {}},
            {"type": "message_stop"},
        ),
    )
    stack.upstream.push(scripted, reply.text("Next."), path=PATH)
    with sdk(stack, session_id) as client:
        with client.messages.stream(model=MODEL, max_tokens=64, messages=[user("secret?")]) as events:
            assert events.get_final_text() == "Done."
        client.messages.create(model=MODEL, max_tokens=64, messages=[user("next")])
    replayed = upstream_requests(stack, before)[-1]
    produced = [redacted, {"type": "text", "text": "Done."}]
    assert replayed.json["messages"] == [user("secret?"), {"role": "assistant", "content": produced}, user("next")]
    assert orjson.dumps(produced) in replayed.body
    assert canonical_history(stack, session_id)[1] == {"role": "assistant", "content": "Done."}


def test_store_false_splices_history_but_records_nothing(stack: Stack, session_id: str) -> None:
    before = len(stack.upstream.received)
    stack.upstream.push(reply.text("kept"), reply.text("not kept"), path=PATH)
    with sdk(stack, session_id) as client:
        client.messages.create(model=MODEL, max_tokens=8, messages=[user("one")])
        client.messages.create(model=MODEL, max_tokens=8, messages=[user("what if")], extra_body={"store": False})
    peeked = upstream_requests(stack, before)[-1].json
    assert peeked["messages"] == [user("one"), assistant_text("kept"), user("what if")]
    assert "store" not in peeked
    assert message_count(stack, session_id) == 2

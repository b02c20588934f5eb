from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import orjson
import pytest

from statefulproxy.dialects.anthropic import AnthropicDialect
from statefulproxy.dialects.anthropic_stream import AnthropicStreamDecoder
from statefulproxy.dialects.base import AssistantReply, Canonical
from statefulproxy.errors import ClientError

FIXTURES = Path(__file__).parent / "fixtures" / "anthropic"
LINE_ENDINGS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}
DIALECT = AnthropicDialect()

SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds+Qz7V=="
REDACTED = "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpPkNRj2YfWXGmKDxH4mPnZ5sQ7vB5URj"
THINKING_BLOCKS = [
    {
        "type": "thinking",
        "thinking": "The user wants the weather. I should call get_weather for Paris.",
        "signature": SIGNATURE,
    },
    {"type": "redacted_thinking", "data": REDACTED},
    {"type": "text", "text": "Checking Paris."},
    {"type": "tool_use", "id": "toolu_01Paris", "name": "get_weather", "input": {"city": "Paris", "days": [1, 2]}},
]


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def reply(
    message: dict[str, Any], usage: tuple[int, int], finish: str, model: str, rid: str, **extra: Any
) -> AssistantReply:
    counts = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
    return AssistantReply(message, extra.get("reasoning"), counts, finish, model, rid, extra.get("native"))


# fixture -> the reply it decodes to, or "failed" / "incomplete"
EXPECTED: dict[str, AssistantReply | str] = {
    "text.sse": reply(
        {"role": "assistant", "content": "Hello! How can I help?"},
        (25, 12),
        "end_turn",
        "claude-sonnet-4-5-20250929",
        "msg_01XFDUDYJgAACzvnptvVoYEL",
    ),
    "tool_use.sse": reply(
        {
            "role": "assistant",
            "content": "Let me check the weather.",
            "tool_calls": [
                tool_call(
                    "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                    "get_weather",
                    '{"location":"San Francisco, CA","unit":"fahrenheit"}',
                ),
                tool_call("toolu_01Ab2Cd3Ef4Gh5Ij6Kl7Mn8O", "get_time", "{}"),
            ],
        },
        (472, 89),
        "tool_use",
        "claude-sonnet-4-5-20250929",
        "msg_014p7gG3wDgGV9EUtLvnow3U",
    ),
    "thinking.sse": reply(
        {
            "role": "assistant",
            "content": "Checking Paris.",
            "tool_calls": [tool_call("toolu_01Paris", "get_weather", '{"city":"Paris","days":[1,2]}')],
        },
        (85, 120),
        "tool_use",
        "claude-opus-4-5-20251101",
        "msg_01FqHNEWsdGDsDNJSYXW1Vrb",
        reasoning="The user wants the weather. I should call get_weather for Paris.",
        native={"anthropic": THINKING_BLOCKS},
    ),
    "multibyte.sse": reply(
        {"role": "assistant", "content": "Grüße 🌍, こんにちは"},
        (9, 7),
        "max_tokens",
        "claude-haiku-4-5",
        "msg_01Multibyte",
    ),
    "error_after_content.sse": "failed",
    "malformed.sse": "failed",
    "cut_before_stop.sse": "incomplete",
}
COMPLETE = [name for name, expected in EXPECTED.items() if isinstance(expected, AssistantReply)]


def fixture(name: str, ending: str = "lf") -> bytes:
    return (FIXTURES / name).read_bytes().replace(b"\n", LINE_ENDINGS[ending])


def decode(chunks: Iterable[bytes]) -> tuple[AnthropicStreamDecoder, list[bool]]:
    decoder = AnthropicStreamDecoder()
    done_after = []
    for chunk in chunks:
        decoder.feed(chunk)
        done_after.append(decoder.done)
    return decoder, done_after


def outcome(decoder: AnthropicStreamDecoder) -> AssistantReply | str:
    if decoder.failed:
        assert not decoder.done
        return "failed"
    return decoder.result() if decoder.done else "incomplete"


def terminator_end(raw: bytes, ending: str) -> int:
    """How many bytes must be fed for ``message_stop`` to be dispatched (its blank line seen)."""
    newline = LINE_ENDINGS[ending]
    blank = raw.index(newline * 2, raw.index(b"event: message_stop"))
    return blank + len(newline) + 1  # the first byte of the blank line's ending dispatches


def sse(*events: tuple[str, object]) -> bytes:
    return b"".join(b"event: %s\ndata: %s\n\n" % (name.encode(), orjson.dumps(data)) for name, data in events)


def sdk_client(handler: Callable[[httpx2.Request], httpx2.Response]) -> anthropic.Anthropic:
    transport = httpx2.MockTransport(handler)
    return anthropic.Anthropic(
        api_key="sk-test",
        base_url="http://upstream.test",
        max_retries=0,
        http_client=httpx2.Client(transport=transport),
    )


# --- the stream decoder ---


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("ending", sorted(LINE_ENDINGS))
def test_stream_fixture_decodes_to_expected(name: str, ending: str) -> None:
    decoder, _ = decode([fixture(name, ending)])
    assert outcome(decoder) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("ending", sorted(LINE_ENDINGS))
def test_every_two_piece_split_decodes_like_whole(name: str, ending: str) -> None:
    raw = fixture(name, ending)
    end = terminator_end(raw, ending) if name in COMPLETE else None
    for offset in range(len(raw) + 1):
        decoder, done_after = decode([raw[:offset], raw[offset:]])
        assert outcome(decoder) == EXPECTED[name], offset
        assert done_after[0] == (end is not None and offset >= end), offset


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("ending", sorted(LINE_ENDINGS))
def test_byte_at_a_time_decodes_like_whole_and_is_done_on_the_terminator(name: str, ending: str) -> None:
    raw = fixture(name, ending)
    decoder, done_after = decode(raw[i : i + 1] for i in range(len(raw)))
    assert outcome(decoder) == EXPECTED[name]
    if name in COMPLETE:
        assert done_after.index(True) == terminator_end(raw, ending) - 1
    else:
        assert True not in done_after


def test_native_blocks_are_rebuilt_in_the_api_key_order() -> None:
    decoder, _ = decode([fixture("thinking.sse")])
    assert orjson.dumps(decoder.result().native) == orjson.dumps({"anthropic": THINKING_BLOCKS})


def test_in_band_error_fails_and_ignores_what_follows() -> None:
    decoder, _ = decode([fixture("error_after_content.sse"), fixture("text.sse")])
    assert decoder.failed
    assert not decoder.done


def test_cut_stream_is_never_done() -> None:
    decoder, done_after = decode([fixture("cut_before_stop.sse"), b"event: ping\ndata: {}\n\n"])
    assert done_after == [False, False]
    assert not decoder.failed


START = ("message_start", {"type": "message_start", "message": {"id": "msg_1", "model": "m", "usage": {}}})
TOOL_START = ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use"}})


def delta(payload: dict[str, Any], index: int = 0) -> tuple[str, object]:
    return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": payload}


def tool_input(partial_json: str) -> bytes:
    block = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
    return sse(
        START,
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}),
        delta({"type": "input_json_delta", "partial_json": partial_json}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    )


MALFORMED = {
    "data not json": b"event: message_start\ndata: {nope\n\n",
    "data not an object": b"event: message_start\ndata: [1, 2]\n\n",
    "no type": sse(("message_start", {"message": {}})),
    "message_start without message": sse(("message_start", {"type": "message_start"})),
    "second message_start": sse(START, START),
    "delta before message_start": sse(delta({"type": "text_delta", "text": "x"})),
    "delta of an unopened block": sse(START, delta({"type": "text_delta", "text": "x"})),
    "index not an int": sse(START, ("content_block_stop", {"type": "content_block_stop", "index": "0"})),
    "tool_use block without id": sse(START, TOOL_START),
    "text delta not a string": sse(
        START,
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}),
        delta({"type": "text_delta", "text": 5}),
    ),
    "tool input not json": tool_input('{"a": '),
    "tool input not an object": tool_input("[1]"),
    "error payload under another name": sse(START, ("message_delta", {"type": "error", "error": {}})),
    "named error event": b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"x"}}\n\n',
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_stream_fails_without_raising(name: str) -> None:
    raw = MALFORMED[name] + sse(("message_stop", {"type": "message_stop"}))
    for chunks in ([raw], [raw[i : i + 1] for i in range(len(raw))]):
        decoder, _ = decode(chunks)
        assert decoder.failed, name
        assert not decoder.done, name


def test_unknown_unnamed_and_empty_events_are_skipped_like_the_sdk_does() -> None:
    raw = fixture("text.sse")
    extra = b'event: future_event\ndata: {"type":"future_event"}\n\ndata: {"type":"error"}\n\nevent: ping\n\n'
    head, tail = raw.split(b"event: message_delta")
    decoder, _ = decode([head + extra + b"event: message_delta" + tail])
    assert decoder.result() == EXPECTED["text.sse"]


# --- parse ---


def parsed_messages(messages: list[dict[str, Any]], **body: Any) -> list[dict[str, Any]]:
    return [canonical.message for canonical in DIALECT.parse({"messages": messages, **body})]


def test_parse_system_string_and_blocks() -> None:
    blocks = [
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Be kind."},
    ]
    for system, text in (("Be brief.", "Be brief."), (blocks, "Be brief.\n\nBe kind.")):
        first = DIALECT.parse({"system": system, "messages": [{"role": "user", "content": "hi"}]})[0]
        assert first == Canonical({"role": "system", "content": text}, native={"anthropic": system})
    for empty in ("", [], None):
        assert parsed_messages([], system=empty) == []


def test_parse_user_blocks_puts_tool_results_first() -> None:
    content = [
        {"type": "text", "text": "Here you go"},
        {"type": "tool_result", "tool_use_id": "toolu_a", "content": "72F"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc"}},
        {
            "type": "tool_result",
            "tool_use_id": "toolu_b",
            "is_error": True,
            "content": [
                {"type": "text", "text": "line 1"},
                {"type": "image", "source": {}},
                {"type": "text", "text": "line 2"},
            ],
        },
        {"type": "tool_result", "tool_use_id": "toolu_c"},
    ]
    assert parsed_messages([{"role": "user", "content": content}]) == [
        {"role": "tool", "tool_call_id": "toolu_a", "content": "72F"},
        {"role": "tool", "tool_call_id": "toolu_b", "content": "line 1\n\nline 2"},
        {"role": "tool", "tool_call_id": "toolu_c", "content": ""},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Here you go"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        },
    ]


def test_parse_user_single_text_becomes_a_string_and_empty_messages_vanish() -> None:
    only_tools = [{"type": "tool_result", "tool_use_id": "toolu_a", "content": "ok"}]
    assert parsed_messages(
        [
            {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]},
            {"role": "user", "content": only_tools},
            {"role": "user", "content": [{"type": "document", "source": {}}]},
            {"role": "user", "content": ""},
        ]
    ) == [
        {"role": "user", "content": "hi"},
        {"role": "tool", "tool_call_id": "toolu_a", "content": "ok"},
        {"role": "user", "content": ""},
    ]


def test_parse_assistant_content_shapes() -> None:
    use = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"b": 1, "a": "x"}}
    assert parsed_messages(
        [
            {"role": "assistant", "content": "plain"},
            {"role": "assistant", "content": [{"type": "text", "text": "one", "citations": None}]},
            {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": [use]},
            {"role": "assistant", "content": [{"type": "text", "text": ""}, use]},
            {"role": "assistant", "content": []},
        ]
    ) == [
        {"role": "assistant", "content": "plain"},
        {"role": "assistant", "content": "one"},
        {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None, "tool_calls": [tool_call("toolu_1", "f", '{"b":1,"a":"x"}')]},
        {"role": "assistant", "content": None, "tool_calls": [tool_call("toolu_1", "f", '{"b":1,"a":"x"}')]},
        {"role": "assistant", "content": ""},
    ]


def test_parse_keeps_thinking_blocks_native_verbatim() -> None:
    content = copy.deepcopy(THINKING_BLOCKS)
    parsed = DIALECT.parse({"messages": [{"role": "assistant", "content": content}]})
    assert parsed[0].native == {"anthropic": content}
    assert parsed[0].native["anthropic"] is content
    assert parsed[0].message == EXPECTED["thinking.sse"].message  # type: ignore[union-attr]
    plain = DIALECT.parse({"messages": [{"role": "assistant", "content": [{"type": "text", "text": "x"}]}]})
    assert plain[0].native is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "messages"),
        ({"messages": {"role": "user"}}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": ["x"]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": "x"}]}]},
            "messages[0].content[0].source",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": 1}]}]},
            "messages[0].content[0].tool_use_id",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": 5}]}]},
            "messages[0].content[0].content",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": "{}"}]}
                ]
            },
            "messages[0].content[0].input",
        ),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "tool_use", "input": {}}]}]},
            "messages[0].content[0].name",
        ),
        ({"system": 5, "messages": []}, "system"),
        ({"system": [{"type": "image"}], "messages": []}, "system[0].type"),
    ],
)
def test_parse_rejects_malformed_prompts_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ClientError) as caught:
        DIALECT.parse(body)
    assert (caught.value.status, caught.value.param) == (400, param)


def test_parse_does_not_mutate_the_body() -> None:
    body = {"system": [{"type": "text", "text": "s"}], "messages": [{"role": "assistant", "content": THINKING_BLOCKS}]}
    before = copy.deepcopy(body)
    DIALECT.parse(body)
    assert body == before


# --- render ---

SYSTEM = [Canonical({"role": "system", "content": "Be brief."})]


def test_render_system_prompt() -> None:
    native = [{"type": "text", "text": "Cached.", "cache_control": {"type": "ephemeral"}}]
    body = {"model": "m", "system": "old", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    rendered = DIALECT.render(body, [Canonical({"role": "system", "content": "Cached."}, {"anthropic": native})], [])
    assert rendered["system"] is native
    two = [*SYSTEM, Canonical({"role": "system", "content": [{"type": "text", "text": "Be kind."}]})]
    assert DIALECT.render(body, two, [])["system"] == "Be brief.\n\nBe kind."
    assert DIALECT.render(body, [Canonical({"role": "system", "content": ""})], []) == {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert body["system"] == "old"


def test_render_history_alternates_roles() -> None:
    history = [
        Canonical({"role": "user", "content": "Weather in Paris and Rome?"}),
        Canonical(
            {
                "role": "assistant",
                "content": None,
                "name": "bot",
                "refusal": None,
                "reasoning": "thinking...",
                "tool_calls": [
                    tool_call("call_1", "weather", '{"city": "Paris"}'),
                    tool_call("call_2", "weather", "oops"),
                ],
            }
        ),
        Canonical({"role": "tool", "tool_call_id": "call_1", "content": "20C"}),
        Canonical({"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "25C"}]}),
        Canonical({"role": "system", "content": "late system message"}),
        Canonical({"role": "user", "content": "Thanks"}),
        Canonical({"role": "assistant", "content": "", "refusal": "I can't"}),
        Canonical({"role": "user", "content": [{"type": "text", "text": "And"}, {"type": "text", "text": ""}]}),
        Canonical({"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}),
        Canonical({"role": "tool", "tool_call_id": "call_3", "content": ""}),
    ]
    own = [{"role": "user", "content": "Next?"}, {"role": "assistant", "content": "Sure"}]
    rendered = DIALECT.render({"model": "m", "messages": own}, SYSTEM, history)
    assert rendered["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "20C"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "25C"},
                {"type": "text", "text": "Thanks"},
                {"type": "text", "text": "And"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "call_3"}, {"type": "text", "text": "Next?"}],
        },
        own[1],
    ]
    assert rendered["messages"][-1] is own[1]
    assert rendered["system"] == "Be brief."


def test_render_merges_history_with_the_body_first_message_only_when_roles_match() -> None:
    own_blocks = {"role": "user", "content": [{"type": "text", "text": "more", "cache_control": {"type": "ephemeral"}}]}
    history = [Canonical({"role": "user", "content": "hi"})]
    rendered = DIALECT.render({"messages": [own_blocks]}, [], history)
    assert rendered["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}, *own_blocks["content"]]}
    ]
    assert own_blocks["content"][0] == {"type": "text", "text": "more", "cache_control": {"type": "ephemeral"}}
    own_assistant = {"role": "assistant", "content": "prefill"}
    rendered = DIALECT.render({"messages": [own_assistant]}, [], history)
    assert rendered["messages"][1] is own_assistant


def test_render_replays_native_assistant_blocks_byte_equal() -> None:
    native = copy.deepcopy(THINKING_BLOCKS)
    stored = Canonical(EXPECTED["thinking.sse"].message, {"anthropic": native})  # type: ignore[union-attr]
    rendered = DIALECT.render({"messages": []}, [], [Canonical({"role": "user", "content": "go"}), stored])
    assert orjson.dumps(rendered["messages"][1]) == orjson.dumps({"role": "assistant", "content": native})
    foreign = Canonical({"role": "assistant", "content": "x"}, {"gemini": [{"thoughtSignature": "s"}]})
    assert DIALECT.render({"messages": []}, [], [foreign])["messages"] == [
        {"role": "assistant", "content": [{"type": "text", "text": "x"}]}
    ]


def test_render_user_images() -> None:
    parts = [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}},
    ]
    rendered = DIALECT.render({"messages": []}, [], [Canonical({"role": "user", "content": parts})])
    assert rendered["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
            ],
        }
    ]


def test_render_returns_a_new_body_and_leaves_the_old_one_alone() -> None:
    body = {"model": "m", "system": "s", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    before = copy.deepcopy(body)
    rendered = DIALECT.render(body, SYSTEM, [Canonical({"role": "user", "content": "earlier"})])
    assert body == before
    assert rendered is not body
    assert rendered["stream"] is True


ROUND_TRIP_BODY: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 1024,
    "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": THINKING_BLOCKS},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01Paris", "content": "20C, sunny"},
                {"type": "text", "text": "And tomorrow?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_02", "name": "forecast", "input": {"city": "Paris", "day": 2}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_02", "content": "18C"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "18C tomorrow."}]},
    ],
}


def test_parse_render_round_trip() -> None:
    canonical = DIALECT.parse(ROUND_TRIP_BODY)
    assert [item.message["role"] for item in canonical] == [
        "system", "user", "assistant", "tool", "user", "assistant", "tool", "assistant",
    ]  # fmt: skip
    body = {key: value for key, value in ROUND_TRIP_BODY.items() if key != "messages"} | {"messages": []}
    rendered = DIALECT.render(body, canonical[:1], canonical[1:])
    assert orjson.dumps(rendered) == orjson.dumps(ROUND_TRIP_BODY)
    again = DIALECT.parse(rendered)
    assert [orjson.dumps(item.message) for item in again] == [orjson.dumps(item.message) for item in canonical]
    assert [item.native for item in again] == [item.native for item in canonical]


# --- what the real SDK sends back ---

NON_STREAMED_REPLY = {
    "id": "msg_01NonStream",
    "type": "message",
    "role": "assistant",
    "model": "claude-opus-4-5",
    "content": [
        {"type": "thinking", "thinking": "Hmm.", "signature": SIGNATURE},
        {"type": "text", "text": "Calling.", "citations": None},
        {"type": "tool_use", "id": "toolu_9", "name": "lookup", "input": {"q": "ü", "n": [1, {"z": None}]}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 30, "output_tokens": 40, "cache_read_input_tokens": 0},
}


def echoed_assistant(first_response: httpx2.Response, stream: bool) -> dict[str, Any]:
    """The assistant message the anthropic SDK sends when a client appends the reply it got."""
    requests: list[dict[str, Any]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        requests.append(orjson.loads(request.content))
        return first_response if len(requests) == 1 else httpx2.Response(200, json=NON_STREAMED_REPLY)

    client = sdk_client(handler)
    question = {"role": "user", "content": "hi"}
    if stream:
        with client.messages.stream(model="m", max_tokens=100, messages=[question]) as events:
            content: list[Any] = list(events.get_final_message().content)
    else:
        content = list(client.messages.create(model="m", max_tokens=100, messages=[question]).content)
    follow_up = [question, {"role": "assistant", "content": content}, {"role": "user", "content": "go on"}]
    client.messages.create(model="m", max_tokens=100, messages=follow_up)  # type: ignore[arg-type]
    message: dict[str, Any] = requests[1]["messages"][1]
    return message


@pytest.mark.parametrize("name", COMPLETE)
def test_sdk_echo_of_a_streamed_reply_parses_to_the_decoded_message(name: str) -> None:
    raw = fixture(name)
    echoed = echoed_assistant(httpx2.Response(200, content=raw, headers={"content-type": "text/event-stream"}), True)
    decoder, _ = decode([raw])
    decoded = decoder.result()
    [canonical] = DIALECT.parse({"messages": [echoed]})
    assert orjson.dumps(canonical.message) == orjson.dumps(decoded.message)
    assert (canonical.native is None) == (decoded.native is None)


def test_sdk_echo_of_a_whole_reply_parses_to_the_reply_message() -> None:
    echoed = echoed_assistant(httpx2.Response(200, json=NON_STREAMED_REPLY), False)
    result = DIALECT.reply_from_body(NON_STREAMED_REPLY)
    assert result is not None
    [canonical] = DIALECT.parse({"messages": [echoed]})
    assert orjson.dumps(canonical.message) == orjson.dumps(result.message)
    assert canonical.native == {"anthropic": echoed["content"]}


# --- replies ---


def test_reply_from_body() -> None:
    result = DIALECT.reply_from_body(NON_STREAMED_REPLY)
    assert result == AssistantReply(
        message={
            "role": "assistant",
            "content": "Calling.",
            "tool_calls": [tool_call("toolu_9", "lookup", '{"q":"ü","n":[1,{"z":null}]}')],
        },
        reasoning="Hmm.",
        usage={"prompt_tokens": 30, "completion_tokens": 40, "total_tokens": 70},
        finish_reason="tool_use",
        model="claude-opus-4-5",
        response_id="msg_01NonStream",
        native={"anthropic": NON_STREAMED_REPLY["content"]},
    )
    assert result.native is not None
    assert result.native["anthropic"] is NON_STREAMED_REPLY["content"]
    odd_thinking = DIALECT.reply_from_body(NON_STREAMED_REPLY | {"content": [{"type": "thinking"}]})
    assert odd_thinking is not None
    assert (odd_thinking.reasoning, odd_thinking.native) == (None, {"anthropic": [{"type": "thinking"}]})
    text_only = NON_STREAMED_REPLY | {"content": [{"type": "text", "text": "hi"}]}
    assert DIALECT.reply_from_body(text_only) == AssistantReply(
        {"role": "assistant", "content": "hi"}, None, result.usage, "tool_use", "claude-opus-4-5", "msg_01NonStream"
    )


@pytest.mark.parametrize(
    "body",
    [
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        NON_STREAMED_REPLY | {"content": "text"},
        NON_STREAMED_REPLY | {"content": [{"type": "tool_use", "name": "f", "input": {}}]},
        NON_STREAMED_REPLY | {"content": [7]},
        NON_STREAMED_REPLY | {"role": "user"},
        [NON_STREAMED_REPLY],
        None,
    ],
)
def test_reply_from_body_rejects_errors_and_malformed_bodies(body: Any) -> None:
    assert DIALECT.reply_from_body(body) is None


RECORDED = [
    Canonical({"role": "assistant", "content": "Hello!"}),
    Canonical({"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}),
    Canonical({"role": "assistant", "content": None, "tool_calls": [tool_call("toolu_1", "f", '{"x":[1,"é"]}')]}),
    Canonical({"role": "assistant", "content": "", "tool_calls": [tool_call("toolu_2", "g", "{}")]}),
    Canonical(EXPECTED["thinking.sse"].message, {"anthropic": THINKING_BLOCKS}),  # type: ignore[union-attr]
]


@pytest.mark.parametrize("recorded", RECORDED, ids=range(len(RECORDED)))
def test_recorded_body_is_a_message_the_sdk_accepts(recorded: Canonical) -> None:
    body, content_type = DIALECT.recorded_body(recorded, "claude-x", False, "")
    assert content_type == b"application/json"
    parsed = orjson.loads(body)
    message = anthropic.types.Message.model_validate(parsed)
    assert re.fullmatch(r"msg_[0-9a-f]{24}", message.id)
    assert (message.model, message.stop_sequence, message.usage.input_tokens) == ("claude-x", None, 0)
    assert message.stop_reason == ("tool_use" if recorded.message.get("tool_calls") else "end_turn")
    if recorded.native:
        assert orjson.dumps(parsed["content"]) == orjson.dumps(recorded.native["anthropic"])
    result = DIALECT.reply_from_body(parsed)
    assert result is not None
    expected = recorded.message | ({"content": None} if recorded.message["content"] == "" else {})
    assert orjson.dumps(result.message) == orjson.dumps(expected)
    assert orjson.loads(DIALECT.recorded_body(recorded, None, False, "")[0])["model"] == ""


@pytest.mark.parametrize("recorded", RECORDED, ids=range(len(RECORDED)))
def test_recorded_stream_decodes_to_the_same_message_and_the_sdk_accepts_it(recorded: Canonical) -> None:
    stream, content_type = DIALECT.recorded_body(recorded, "claude-x", True, "")
    assert content_type == b"text/event-stream"
    decoder, done_after = decode([stream])
    assert done_after == [True]
    whole = orjson.loads(DIALECT.recorded_body(recorded, "claude-x", False, "")[0])
    assert decoder.result().message == DIALECT.reply_from_body(whole).message  # type: ignore[union-attr]
    assert decoder.result().native == (recorded.native and {"anthropic": whole["content"]})

    client = sdk_client(
        lambda request: httpx2.Response(200, content=stream, headers={"content-type": "text/event-stream"})
    )
    with client.messages.stream(model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]) as events:
        final = events.get_final_message()
    assert [block.to_dict() for block in final.content] == whole["content"]
    assert final.stop_reason == whole["stop_reason"]


# --- the rest of the protocol ---


@pytest.mark.parametrize(
    ("status", "error_type", "exception"),
    [
        (400, "invalid_request_error", anthropic.BadRequestError),
        (401, "authentication_error", anthropic.AuthenticationError),
        (403, "permission_error", anthropic.PermissionDeniedError),
        (404, "not_found_error", anthropic.NotFoundError),
        (405, "invalid_request_error", anthropic.APIStatusError),
        (409, "invalid_request_error", anthropic.ConflictError),
        (413, "request_too_large", anthropic.APIStatusError),
        (422, "invalid_request_error", anthropic.UnprocessableEntityError),
        (429, "rate_limit_error", anthropic.RateLimitError),
        (431, "request_too_large", anthropic.APIStatusError),
        (500, "api_error", anthropic.InternalServerError),
        (502, "api_error", anthropic.InternalServerError),
        (503, "overloaded_error", anthropic.InternalServerError),
        (504, "timeout_error", anthropic.InternalServerError),
    ],
)
def test_error_body_has_the_anthropic_shape(status: int, error_type: str, exception: type[Exception]) -> None:
    body = DIALECT.error_body(ClientError(status, "session is busy", param="x", code="busy"))
    assert orjson.loads(body) == {"type": "error", "error": {"type": error_type, "message": "session is busy"}}
    client = sdk_client(
        lambda request: httpx2.Response(status, content=body, headers={"content-type": "application/json"})
    )
    with pytest.raises(exception) as caught:
        client.messages.create(model="m", max_tokens=1, messages=[{"role": "user", "content": "hi"}])
    assert isinstance(caught.value, anthropic.APIStatusError)
    assert (caught.value.status_code, caught.value.type, caught.value.api_message) == (
        status,
        error_type,
        "session is busy",
    )


def test_is_stream_and_stream_decoder() -> None:
    assert DIALECT.is_stream({"stream": True}, "/v1/messages", "")
    assert not DIALECT.is_stream({"stream": "true"}, "/v1/messages", "stream=true")
    assert not DIALECT.is_stream({}, "/v1/messages", "")
    assert isinstance(DIALECT.stream_decoder(b"text/event-stream; charset=utf-8"), AnthropicStreamDecoder)
    assert DIALECT.stream_decoder(b"application/json") is None
    assert (DIALECT.name, DIALECT.messages_key) == ("anthropic", "messages")

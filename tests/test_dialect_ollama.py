from __future__ import annotations

import base64
import copy
import itertools
import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from statefulproxy.dialects.base import AssistantReply, Canonical, Dialect
from statefulproxy.dialects.ollama import OllamaDialect
from statefulproxy.dialects.ollama_stream import OllamaStreamDecoder
from statefulproxy.errors import ClientError

FIXTURES = Path(__file__).parent / "fixtures" / "ollama"
ENDINGS = {"lf": b"\n", "crlf": b"\r\n"}
DIALECT: Dialect = OllamaDialect()
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\0" * 16).decode()

USAGE_26_8 = {"prompt_tokens": 26, "completion_tokens": 8, "total_tokens": 34}


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


COMPLETE: dict[str, dict[str, Any]] = {
    "plain_text.ndjson": {
        "message": {"role": "assistant", "content": "The sky is blue because of Rayleigh scattering."},
        "reasoning": None,
        "usage": USAGE_26_8,
        "finish_reason": "stop",
        "model": "llama3.2",
    },
    "thinking.ndjson": {
        "message": {"role": "assistant", "content": "4"},
        "reasoning": "The user wants 2+2.",
        "usage": USAGE_26_8,
        "finish_reason": "stop",
        "model": "qwen3:8b",
    },
    "tool_calls.ndjson": {
        "message": {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                call("call_0", "get_weather", '{"city":"Paris","unit":"celsius"}'),
                call("call_1", "get_time", '{"timezone":"Europe/Paris"}'),
            ],
        },
        "reasoning": None,
        "usage": USAGE_26_8,
        "finish_reason": "stop",
        "model": "llama3.2",
    },
    "tool_calls_with_ids.ndjson": {
        "message": {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                call("call_k3x9ab", "get_weather", '{"city":"Tōkyō"}'),
                call("call_p0q1rs", "get_weather", '{"city":"Ōsaka"}'),
            ],
        },
        "reasoning": "Need the weather.",
        "usage": USAGE_26_8,
        "finish_reason": "stop",
        "model": "qwen3:8b",
    },
    "multibyte_utf8.ndjson": {
        "message": {"role": "assistant", "content": "Grüße, 日本語 🎉🇫🇷"},
        "reasoning": None,
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        "finish_reason": "length",
        "model": "llama3.2",
    },
    "blank_lines.ndjson": {
        "message": {"role": "assistant", "content": "Hi!"},
        "reasoning": None,
        "usage": {"prompt_tokens": 0, "completion_tokens": 2, "total_tokens": 2},
        "finish_reason": "stop",
        "model": "llama3.2",
    },
}
FAILING = {  # fixture -> the text of the line that fails it
    "error_mid_stream.ndjson": b'{"error":',
    "malformed_line.ndjson": b"<html>",
    "not_an_object.ndjson": b'["done"',
}
CUT = ["cut_before_done.ndjson"]


def load(name: str, ending: str = "lf") -> bytes:
    return (FIXTURES / name).read_bytes().replace(b"\n", ENDINGS[ending])


def end_of_line_at(stream: bytes, marker: bytes) -> int:
    """Offset of the line feed ending the first line that holds ``marker``."""
    return stream.index(b"\n", stream.index(marker))


def outcome(decoder: OllamaStreamDecoder) -> tuple[bool, bool, bytes | None]:
    result = orjson.dumps(reply_fields(decoder.result())) if decoder.done else None
    return decoder.done, decoder.failed, result


def reply_fields(reply: AssistantReply) -> dict[str, Any]:
    return {
        "message": reply.message,
        "reasoning": reply.reasoning,
        "usage": reply.usage,
        "finish_reason": reply.finish_reason,
        "model": reply.model,
    }


def decode(chunks: Iterable[bytes], *, unterminated_end: bool = False) -> OllamaStreamDecoder:
    decoder = OllamaStreamDecoder(unterminated_end=unterminated_end)
    for chunk in chunks:
        decoder.feed(chunk)
    return decoder


def splits(stream: bytes, seed: str) -> Iterable[list[bytes]]:
    """Every split into two pieces, then one byte at a time, then random multi-piece splits."""
    for offset in range(len(stream) + 1):
        yield [stream[:offset], stream[offset:]]
    yield [stream[i : i + 1] for i in range(len(stream))]
    rng = random.Random(seed)
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(2, 12)))
        yield [stream[a:b] for a, b in itertools.pairwise([0, *cuts, len(stream)])]


def flag_turns_at(stream: bytes, flag: str, *, unterminated_end: bool = False) -> int:
    """The offset of the byte whose chunk sets ``flag`` ("done"/"failed"), fed one byte at a time; -1 if never."""
    decoder = OllamaStreamDecoder(unterminated_end=unterminated_end)
    for offset in range(len(stream)):
        decoder.feed(stream[offset : offset + 1])
        if getattr(decoder, flag):
            return offset
    return -1


# ---- the stream decoder


def test_fixtures_present() -> None:
    names = {path.name for path in FIXTURES.iterdir()}
    assert {*COMPLETE, *FAILING, *CUT, "non_streamed.json"} <= names


@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("name", COMPLETE)
def test_complete_stream_decodes_whole(name: str, ending: str) -> None:
    decoder = decode([load(name, ending)])
    assert decoder.done
    assert not decoder.failed
    assert reply_fields(decoder.result()) == COMPLETE[name]
    assert decoder.result().response_id is None


@pytest.mark.parametrize("unterminated_end", [False, True], ids=["x-ndjson", "json"])
@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("name", [*COMPLETE, *FAILING, *CUT])
def test_every_split_decodes_like_the_whole(name: str, ending: str, unterminated_end: bool) -> None:
    stream = load(name, ending)
    whole = outcome(decode([stream], unterminated_end=unterminated_end))
    for chunks in splits(stream, f"{name}-{ending}"):
        assert outcome(decode(chunks, unterminated_end=unterminated_end)) == whole, [len(c) for c in chunks]


@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("name", COMPLETE)
def test_done_turns_true_exactly_on_the_chunk_ending_the_done_line(name: str, ending: str) -> None:
    stream = load(name, ending)
    terminator = end_of_line_at(stream, b'"done":true')
    assert flag_turns_at(stream, "done") == terminator
    for offset in range(len(stream) + 1):
        decoder = OllamaStreamDecoder()
        decoder.feed(stream[:offset])
        assert decoder.done is (offset > terminator), offset
        decoder.feed(stream[offset:])
        assert decoder.done


@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("name", COMPLETE)
def test_json_labelled_stream_is_done_at_the_closing_brace_of_the_done_line(name: str, ending: str) -> None:
    stream = load(name, ending)
    closing_brace = stream.rindex(b"}", 0, end_of_line_at(stream, b'"done":true'))
    assert flag_turns_at(stream, "done", unterminated_end=True) == closing_brace


@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("name", FAILING)
def test_in_band_error_or_bad_line_fails_on_its_line(name: str, ending: str) -> None:
    stream = load(name, ending)
    decoder = decode([stream])
    assert decoder.failed
    assert not decoder.done
    assert flag_turns_at(stream, "failed") == end_of_line_at(stream, FAILING[name])
    assert flag_turns_at(stream, "done") == -1


@pytest.mark.parametrize("unterminated_end", [False, True], ids=["x-ndjson", "json"])
@pytest.mark.parametrize("name", CUT)
def test_stream_cut_before_the_done_line_is_never_done(name: str, unterminated_end: bool) -> None:
    stream = load(name)
    for chunks in splits(stream, name):
        decoder = decode(chunks, unterminated_end=unterminated_end)
        assert not decoder.done
        assert not decoder.failed


def test_non_streamed_object_without_line_ending_is_done_at_its_closing_brace() -> None:
    stream = load("non_streamed.json")
    assert not stream.endswith(b"\n")
    assert flag_turns_at(stream, "done", unterminated_end=True) == len(stream) - 1
    for chunks in splits(stream, "non_streamed"):
        decoder = decode(chunks, unterminated_end=True)
        assert decoder.done
        assert decoder.result().message == {"role": "assistant", "content": "Hello! How can I help?"}
    # as NDJSON proper, an unterminated line is not (yet) a line
    assert not decode([stream]).done


def test_unterminated_line_that_does_not_end_the_reply_is_counted_once() -> None:
    fragment = b'{"message":{"role":"assistant","content":"a}"},"done":false}'
    done = b'{"message":{"role":"assistant","content":""},"done":true}\n'
    decoder = decode([fragment, b"\n", done], unterminated_end=True)
    assert decoder.done
    assert decoder.result().message["content"] == "a}"


def test_unterminated_error_object_fails_a_json_labelled_stream() -> None:
    decoder = decode([b'{"error":"model not found"}'], unterminated_end=True)
    assert decoder.failed
    assert not decoder.done


@pytest.mark.parametrize(
    "line",
    [
        b"null",
        b"123",
        b'"done"',
        b"{",
        b'{"message":"hi","done":true}',
        b'{"message":{"role":"assistant","content":5},"done":true}',
        b'{"message":{"role":"assistant","content":"","thinking":["x"]},"done":true}',
        b'{"message":{"role":"assistant","content":"","tool_calls":{"function":{}}},"done":true}',
        b'{"message":{"role":"assistant","content":"","tool_calls":[{"function":{"arguments":{}}}]},"done":true}',
        b'{"message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"f","arguments":3}}]},"done":true}',
        b'{"message":{"role":"assistant","content":"","tool_calls":["f"]},"done":true}',
        b'{"error":"boom","done":true}',
        b"\xff\xfe{}",
    ],
)
def test_malformed_line_fails_without_raising(line: bytes) -> None:
    for unterminated_end in (False, True):
        decoder = decode([line + b"\n"], unterminated_end=unterminated_end)
        assert decoder.failed, line
        assert not decoder.done


def test_random_bytes_never_raise() -> None:
    rng = random.Random(3)
    good = load("tool_calls_with_ids.ndjson")
    for _ in range(300):
        noise = bytes(rng.randrange(256) for _ in range(rng.randint(0, 80)))
        cut = rng.randrange(len(good))
        stream = good[:cut] + noise + good[cut:]
        decoder = decode([stream[i : i + 7] for i in range(0, len(stream), 7)], unterminated_end=rng.random() < 0.5)
        assert not (decoder.done and decoder.failed)


def test_null_error_field_is_not_an_error() -> None:
    line = b'{"error":null,"message":{"role":"assistant","content":"ok"},"done":true}'
    assert decode([line + b"\n"]).done
    assert decode([line], unterminated_end=True).done


def test_line_over_the_cap_fails() -> None:
    decoder = OllamaStreamDecoder(max_line_bytes=64)
    decoder.feed(b'{"message":{"role":"assistant","content":"' + b"x" * 100)
    assert decoder.failed
    decoder.feed(b'"},"done":true}\n')
    assert not decoder.done


def test_chunks_after_done_or_failure_are_ignored() -> None:
    stream = load("plain_text.ndjson")
    decoder = decode([stream, b'{"error":"late"}\n', b"garbage\n"])
    assert decoder.done
    assert not decoder.failed
    assert reply_fields(decoder.result()) == COMPLETE["plain_text.ndjson"]
    failed = decode([load("error_mid_stream.ndjson"), load("plain_text.ndjson")])
    assert failed.failed
    assert not failed.done


def test_tool_call_arguments_given_as_a_string_are_kept() -> None:
    tool_call = {"function": {"name": "f", "arguments": '{"a": 1}'}}
    line = orjson.dumps({"message": {"role": "assistant", "content": "", "tool_calls": [tool_call]}, "done": True})
    assert decode([line + b"\n"]).result().message["tool_calls"] == [call("call_0", "f", '{"a": 1}')]


@pytest.mark.parametrize(
    ("content_type", "decodes"),
    [
        (b"application/x-ndjson", True),
        (b"application/x-ndjson; charset=utf-8", True),
        (b"application/ndjson", True),
        (b"application/json; charset=utf-8", True),
        (b"text/event-stream", False),
        (b"text/plain; charset=utf-8", False),
        (b"", False),
    ],
)
def test_stream_decoder_by_content_type(content_type: bytes, decodes: bool) -> None:
    decoder = DIALECT.stream_decoder(content_type)
    assert (decoder is not None) is decodes
    if decoder is not None:
        decoder.feed(load("plain_text.ndjson"))
        assert decoder.done
        assert decoder.result().message == COMPLETE["plain_text.ndjson"]["message"]


# ---- what a client echoes back parses to exactly what the decoder produced


def stream_objects(name: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in load(name).splitlines() if line.strip()]


def echo_as_ollama_python(name: str) -> dict[str, Any]:
    """The assistant message as ollama-python sends it back after a streamed reply: fragments joined,
    tool calls as its ``Message.ToolCall`` model keeps them (no ``id``, no ``index``), falsy fields dropped."""
    content = "".join(obj["message"].get("content", "") for obj in stream_objects(name))
    thinking = "".join(obj["message"].get("thinking", "") for obj in stream_objects(name))
    calls = [
        {"function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}}
        for obj in stream_objects(name)
        for c in obj["message"].get("tool_calls", [])
    ]
    message = {"role": "assistant", "content": content, "thinking": thinking, "tool_calls": calls}
    return {key: value for key, value in message.items() if value}


def echo_as_raw_json(name: str) -> dict[str, Any]:
    """The assistant message as a plain-JSON client (ollama-js, curl) accumulates it: tool calls verbatim."""
    objects = stream_objects(name)
    return {
        "role": "assistant",
        "content": "".join(obj["message"]["content"] for obj in objects),
        "thinking": "".join(obj["message"].get("thinking", "") for obj in objects),
        "tool_calls": [c for obj in objects for c in obj["message"].get("tool_calls", [])],
    }


@pytest.mark.parametrize("name", COMPLETE)
def test_echoed_assistant_message_parses_to_the_decoded_message(name: str) -> None:
    decoded = orjson.dumps(decode([load(name)]).result().message)
    echoes = [echo_as_raw_json(name)]
    if b'"id":' not in load(name):  # ollama-python drops the ids Ollama 0.12.10+ sends (ollama-python#667)
        echoes.append(echo_as_ollama_python(name))
    for echo in echoes:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}, echo]}
        assert orjson.dumps(DIALECT.parse(body)[1].message) == decoded, echo


def test_non_streamed_reply_and_its_echo_parse_the_same() -> None:
    body = orjson.loads(load("non_streamed.json"))
    reply = DIALECT.reply_from_body(body)
    assert reply is not None
    assert reply_fields(reply) == {
        "message": {"role": "assistant", "content": "Hello! How can I help?"},
        "reasoning": None,
        "usage": USAGE_26_8,
        "finish_reason": "stop",
        "model": "llama3.2",
    }
    echoed = DIALECT.parse({"messages": [body["message"]]})[0].message
    assert orjson.dumps(echoed) == orjson.dumps(reply.message)


def test_non_streamed_reply_with_tool_calls_and_thinking() -> None:
    body = {
        "model": "qwen3:8b",
        "message": {
            "role": "assistant",
            "content": "",
            "thinking": "Weather first.",
            "tool_calls": [{"id": "call_a1", "function": {"index": 0, "name": "get_weather", "arguments": {}}}],
        },
        "done": True,
        "done_reason": "stop",
    }
    reply = DIALECT.reply_from_body(body)
    assert reply is not None
    assert reply.message == {"role": "assistant", "content": None, "tool_calls": [call("call_a1", "get_weather", "{}")]}
    assert reply.reasoning == "Weather first."
    assert reply.usage is None


@pytest.mark.parametrize(
    "body",
    [
        {"error": "model 'nope' not found"},
        {"error": "boom", "message": {"role": "assistant", "content": "x"}},
        {"model": "m", "done": True},
        {"message": "hi", "done": True},
        {"message": {"role": "assistant", "content": 3}, "done": True},
        [],
        "text",
        None,
    ],
)
def test_reply_from_body_refuses_errors_and_malformed_bodies(body: Any) -> None:
    assert DIALECT.reply_from_body(body) is None


# ---- parse


def test_parse_every_role() -> None:
    body = {
        "model": "llava",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "System", "content": "Use metric units."},
            {"role": "user", "content": "What is this?", "images": [PNG, JPEG]},
            {"role": "user", "content": "", "images": [PNG]},
            {
                "role": "assistant",
                "content": "",
                "thinking": "dropped",
                "tool_calls": [
                    {"function": {"name": "lookup", "arguments": {"q": "cat", "n": 2}}},
                    {"function": {"name": "measure", "arguments": {}}},
                ],
            },
            {"role": "tool", "content": "3 cm", "tool_name": "measure"},
            {"role": "tool", "content": "a cat"},
            {"role": "assistant", "content": "A small cat."},
            {"role": "user"},
        ],
    }
    assert [c.message for c in DIALECT.parse(body)] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Use metric units."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG}"}},
            ],
        },
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call("call_0", "lookup", '{"q":"cat","n":2}'), call("call_1", "measure", "{}")],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "3 cm"},
        {"role": "tool", "tool_call_id": "call_0", "content": "a cat"},
        {"role": "assistant", "content": "A small cat."},
        {"role": "user", "content": ""},
    ]
    assert all(c.native is None for c in DIALECT.parse(body))


def test_parse_binds_tool_results_to_the_nearest_assistant_only() -> None:
    messages = [
        {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
        {"role": "tool", "content": "1", "tool_name": "f"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_x", "function": {"name": "g"}}]},
        {"role": "tool", "content": "2", "tool_name": "f"},  # no f here: the next unanswered call
        {"role": "tool", "content": "3", "tool_name": "g"},  # every call answered: left to the session layer
    ]
    parsed = [c.message for c in DIALECT.parse({"messages": messages})]
    assert parsed[1] == {"role": "tool", "tool_call_id": "call_0", "content": "1"}
    assert parsed[2]["tool_calls"] == [call("call_x", "g", "{}")]
    assert parsed[3] == {"role": "tool", "tool_call_id": "call_x", "content": "2"}
    assert parsed[4] == {"role": "tool", "tool_call_id": "", "content": "3", "name": "g"}


def test_parse_binds_by_tool_call_id_when_a_client_sends_one() -> None:
    messages = [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "call_a", "function": {"name": "w", "arguments": {"city": "A"}}},
                {"id": "call_b", "function": {"name": "w", "arguments": {"city": "B"}}},
            ],
        },
        {"role": "tool", "content": "b", "tool_name": "w", "tool_call_id": "call_b"},
        {"role": "tool", "content": "a", "tool_name": "w"},
    ]
    parsed = [c.message for c in DIALECT.parse({"messages": messages})]
    assert [m["tool_call_id"] for m in parsed[1:]] == ["call_b", "call_a"]


def test_parse_tool_result_without_its_assistant_is_left_for_the_session_layer() -> None:
    body = {
        "messages": [{"role": "tool", "content": "22°C", "tool_name": "get_weather"}, {"role": "tool", "content": "x"}]
    }
    assert [c.message for c in DIALECT.parse(body)] == [
        {"role": "tool", "tool_call_id": "", "content": "22°C", "name": "get_weather"},
        {"role": "tool", "tool_call_id": "", "content": "x"},
    ]


def test_parse_takes_a_data_url_image_as_it_is() -> None:
    url = f"data:image/webp;base64,{PNG}"
    content = DIALECT.parse({"messages": [{"role": "user", "content": "", "images": [url]}]})[0].message["content"]
    assert content == [{"type": "image_url", "image_url": {"url": url}}]


def test_parse_without_messages_is_empty() -> None:
    assert DIALECT.parse({"model": "llama3.2"}) == []


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ("hi", "messages"),
        (["hi"], "messages[0]"),
        ([{"content": "x"}], "messages[0].role"),
        ([{"role": "developer", "content": "x"}], "messages[0].role"),
        ([{"role": "user", "content": [{"type": "text", "text": "x"}]}], "messages[0].content"),
        ([{"role": "user", "content": "x", "images": "abc"}], "messages[0].images"),
        ([{"role": "user", "content": "x", "images": [1]}], "messages[0].images"),
        ([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": {}}], "messages[1].tool_calls"),
        ([{"role": "assistant", "tool_calls": [{"name": "f"}]}], "messages[0].tool_calls[0]"),
        (
            [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": 1}}]}],
            "messages[0].tool_calls[0]",
        ),
        ([{"role": "tool", "content": "x", "tool_name": 3}], "messages[0].tool_name"),
    ],
)
def test_parse_rejects_malformed_prompts_naming_the_field(messages: Any, param: str) -> None:
    with pytest.raises(ClientError) as caught:
        DIALECT.parse({"model": "m", "messages": messages})
    assert caught.value.status == 400
    assert caught.value.param == param
    assert param in caught.value.message


def test_parse_does_not_mutate_the_body() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "x", "images": [PNG]},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
            {"role": "tool", "content": "y"},
        ],
    }
    before = copy.deepcopy(body)
    DIALECT.parse(body)
    assert body == before


# ---- render


def test_render_puts_system_then_history_then_the_body_conversation() -> None:
    own = [{"role": "user", "content": "And in Rome?", "images": [PNG]}]
    body = {"model": "llama3.2", "stream": False, "messages": [{"role": "system", "content": "old"}, *own]}
    before = copy.deepcopy(body)
    system = [Canonical({"role": "system", "content": [{"type": "text", "text": "Be brief."}]})]
    history = [
        Canonical(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather in Paris? "},
                    {"type": "text", "text": "Here:"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                ],
            }
        ),
        Canonical(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    call("toolu_1", "get_weather", '{"city":"Paris"}'),
                    call("toolu_2", "get_time", "not json"),
                ],
            }
        ),
        Canonical({"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "noon"}]}),
        Canonical({"role": "tool", "tool_call_id": "toolu_1", "content": "22°C"}),
        Canonical({"role": "tool", "tool_call_id": "elsewhere", "content": "?"}),
        Canonical({"role": "tool", "tool_call_id": "", "name": "lookup", "content": "!"}),
        Canonical({"role": "assistant", "content": "Sunny, 22°C.", "refusal": None}),
        Canonical({"role": "developer", "content": "Now answer in French."}),
    ]
    rendered = DIALECT.render(body, system, history)
    assert body == before
    assert rendered is not body
    assert rendered["model"] == "llama3.2"
    assert rendered["stream"] is False
    assert rendered["messages"][:-1] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris? Here:", "images": [PNG]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                {"function": {"name": "get_time", "arguments": {}}},
            ],
        },
        {"role": "tool", "content": "noon", "tool_name": "get_time"},
        {"role": "tool", "content": "22°C", "tool_name": "get_weather"},
        {"role": "tool", "content": "?"},
        {"role": "tool", "content": "!", "tool_name": "lookup"},
        {"role": "assistant", "content": "Sunny, 22°C."},
        {"role": "system", "content": "Now answer in French."},
    ]
    assert rendered["messages"][-1] is own[0]


def test_render_without_system_drops_the_body_system_prompt_only_where_it_leads() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "a"},
            {"role": "system", "content": "b"},
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "mid-conversation"},
        ]
    }
    assert DIALECT.render(body, [], [])["messages"] == body["messages"][2:]


def test_render_replays_native_ollama_messages_verbatim() -> None:
    native = {"role": "assistant", "content": "kept", "thinking": "as sent", "tool_calls": []}
    history = [Canonical({"role": "assistant", "content": "other"}, native={"ollama": native, "anthropic": {}})]
    rendered = DIALECT.render({"messages": []}, [], history)["messages"]
    assert orjson.dumps(rendered[0]) == orjson.dumps(native)


def test_parse_render_parse_round_trip() -> None:
    body = {
        "model": "llava",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is this?", "images": [PNG]},
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {"function": {"name": "lookup", "arguments": {"q": "cat"}}},
                    {"function": {"name": "lookup", "arguments": {"q": "dog"}}},
                ],
            },
            {"role": "tool", "content": "cat facts", "tool_name": "lookup"},
            {"role": "tool", "content": "dog facts", "tool_name": "lookup"},
            {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": "Thanks"},
        ],
    }
    parsed = DIALECT.parse(body)
    system = [c for c in parsed if c.message["role"] == "system"]
    rendered = DIALECT.render({"model": "llava", "messages": []}, system, parsed[len(system) :])
    assert rendered == {**body, "messages": [{k: v for k, v in m.items() if k != "thinking"} for m in body["messages"]]}
    assert [orjson.dumps(c.message) for c in DIALECT.parse(rendered)] == [orjson.dumps(c.message) for c in parsed]


def test_is_stream_unless_stream_is_false() -> None:
    assert DIALECT.is_stream({"model": "m"}, "/api/chat", "")
    assert DIALECT.is_stream({"model": "m", "stream": True}, "/api/chat", "")
    assert DIALECT.is_stream({"model": "m", "stream": None}, "/api/chat", "")
    assert not DIALECT.is_stream({"model": "m", "stream": False}, "/api/chat", "")


def test_dialect_names() -> None:
    assert DIALECT.name == "ollama"
    assert DIALECT.messages_key == "messages"


# ---- recorded replies and the proxy's own errors

RECORDED = [
    Canonical({"role": "assistant", "content": "Grüße 🎉"}),
    Canonical(
        {"role": "assistant", "content": None, "tool_calls": [call("call_9", "f", '{"a":[1,2]}'), call("x", "g", "{}")]}
    ),
    Canonical({"role": "assistant", "content": [{"type": "text", "text": "from parts"}]}),
]


def replayed_message(recorded: Canonical) -> dict[str, Any]:
    """The recorded message as it reads back from Ollama's wire: content parts become their text."""
    content = recorded.message["content"]
    return {**recorded.message, "content": "from parts" if isinstance(content, list) else content}


def assert_chat_response_shape(obj: dict[str, Any], *, done: bool) -> None:
    """What ollama-python's ``ChatResponse`` and Ollama's Go ``api.ChatResponse`` need of a line."""
    assert isinstance(obj["model"], str)
    created_at = datetime.fromisoformat(obj["created_at"])
    assert created_at.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - created_at) < timedelta(minutes=1)
    assert obj["done"] is done
    if done:
        assert obj["done_reason"] == "stop"
    message = obj["message"]
    assert message["role"] == "assistant"
    assert isinstance(message["content"], str)
    for tool_call in message.get("tool_calls", []):
        assert isinstance(tool_call["function"]["name"], str)
        assert isinstance(tool_call["function"]["arguments"], dict)


@pytest.mark.parametrize("recorded", RECORDED)
def test_recorded_body_not_streamed(recorded: Canonical) -> None:
    body, content_type = DIALECT.recorded_body(recorded, "llama3.2", False, "")
    assert content_type == b"application/json"
    obj = orjson.loads(body)
    assert_chat_response_shape(obj, done=True)
    assert obj["model"] == "llama3.2"
    reply = DIALECT.reply_from_body(obj)
    assert reply is not None
    assert reply.message == replayed_message(recorded)


@pytest.mark.parametrize("recorded", RECORDED)
def test_recorded_body_streamed_decodes_to_the_recorded_message(recorded: Canonical) -> None:
    body, content_type = DIALECT.recorded_body(recorded, None, True, "")
    assert content_type == b"application/x-ndjson"
    lines = body.split(b"\n")
    assert lines[-1] == b""
    objects = [orjson.loads(line) for line in lines[:-1]]
    for obj in objects[:-1]:
        assert_chat_response_shape(obj, done=False)
    assert_chat_response_shape(objects[-1], done=True)
    decoder = DIALECT.stream_decoder(content_type)
    assert decoder is not None
    decoder.feed(body)
    assert decoder.done
    assert decoder.result().message == replayed_message(recorded)


def test_recorded_tool_calls_look_like_ollama_0_12_10() -> None:
    recorded = Canonical(
        {"role": "assistant", "content": None, "tool_calls": [call("call_9", "f", '{"a":[1,2]}'), call("x", "g", "")]}
    )
    body, _ = DIALECT.recorded_body(recorded, "m", False, "")
    # arguments that are not a JSON object (here: empty) cannot travel as Ollama's object
    assert orjson.loads(body)["message"]["tool_calls"] == [
        {"id": "call_9", "function": {"index": 0, "name": "f", "arguments": {"a": [1, 2]}}},
        {"id": "x", "function": {"index": 1, "name": "g", "arguments": {}}},
    ]


def test_recorded_bodies_validate_with_the_ollama_client() -> None:
    ollama = pytest.importorskip("ollama")
    for recorded in RECORDED:
        body, _ = DIALECT.recorded_body(recorded, "m", False, "")
        ollama.ChatResponse.model_validate(orjson.loads(body))
        body, _ = DIALECT.recorded_body(recorded, "m", True, "")
        for line in body.splitlines():
            ollama.ChatResponse.model_validate(orjson.loads(line))


@pytest.mark.parametrize("status", [400, 404, 409, 429])
def test_error_body_is_ollamas_error_shape(status: int) -> None:
    error = ClientError(status, "session 'abc' not found", type="not_found_error", code="not_found")
    body = orjson.loads(DIALECT.error_body(error))
    # ollama-python's ResponseError reads exactly this: json.loads(text).get("error", text)
    assert body == {"error": "session 'abc' not found"}

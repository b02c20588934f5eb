from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest

from statefulproxy.dialects.base import AssistantReply, Canonical
from statefulproxy.dialects.gemini import GeminiDialect
from statefulproxy.dialects.gemini_stream import GeminiStreamDecoder, JSONArraySplitter
from statefulproxy.errors import ClientError

FIXTURES = Path(__file__).parent / "fixtures" / "gemini"
DIALECT = GeminiDialect()
SIG = "CiQBVKhc7yG3Ra/5GqJkXn+oOaN8sWzq0u3x1fTZP2bYw0c4ZmAKXwFUqFzv"
MODEL = "gemini-2.5-flash"

THOUGHT = '**Greeting in German**\n\nThe user wants a {"quoted"} greeting; I\'ll use ü and 🌍.'
TEXT = (
    'Grüße aus Köln 🌍! Here is a "quoted" word, a brace } and a backslash \\ '
    'and a tab\t, an é (é, 🌍) and [brackets] {"nested": [1, {"x": "}"}]}.'
)
WEATHER_ARGS = {
    "location": "Zürich",
    "units": "celsius",
    "days": [1, 2],
    "opts": {"hourly": False, "note": 'say "hi" {}'},
}
CALLS = [
    {
        "id": "call_0",
        "type": "function",
        "function": {
            "name": "get_weather",
            "arguments": '{"location":"Zürich","units":"celsius","days":[1,2],'
            '"opts":{"hourly":false,"note":"say \\"hi\\" {}"}}',
        },
    },
    {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": '{"city":"東京"}'}},
]
CALL_PARTS = [
    {"functionCall": {"name": "get_weather", "args": WEATHER_ARGS}, "thoughtSignature": SIG},
    {"functionCall": {"name": "get_time", "args": {"city": "東京"}}},
]

THINKING_REPLY = AssistantReply(
    message={"role": "assistant", "content": TEXT},
    reasoning=THOUGHT,
    usage={"prompt_tokens": 12, "completion_tokens": 63, "total_tokens": 75},
    finish_reason="STOP",
    model=MODEL,
    response_id="mXr1aPq3DbC8kdUP7Yq8-Ak",
    # the two streamed text parts merged; the signature's own part kept apart
    native={"gemini": [{"text": THOUGHT, "thought": True}, {"text": TEXT}, {"text": "", "thoughtSignature": SIG}]},
)
CALLS_REPLY = AssistantReply(
    message={"role": "assistant", "content": None, "tool_calls": CALLS},
    reasoning=None,
    usage={"prompt_tokens": 57, "completion_tokens": 30, "total_tokens": 87},
    finish_reason="STOP",
    model=MODEL,
    response_id="dXr1aPq3DbC8kdUP7Yq8-Bz",
    native={"gemini": CALL_PARTS},
)

# fixture -> the reply it reassembles to, or "failed" / "incomplete"
STREAMS: dict[str, AssistantReply | str] = {
    "thinking_text.sse": THINKING_REPLY,
    "thinking_text.json": THINKING_REPLY,
    "function_calls.sse": CALLS_REPLY,
    "function_calls.json": CALLS_REPLY,
    "error_after_content.sse": "failed",
    "error_after_content.json": "failed",
    "cut_before_finish.sse": "incomplete",
    "cut_before_finish.json": "incomplete",
}


def content_type(name: str) -> bytes:
    return b"text/event-stream" if name.endswith(".sse") else b"application/json; charset=utf-8"


def decoder_for(name: str) -> GeminiStreamDecoder:
    decoder = DIALECT.stream_decoder(content_type(name))
    assert isinstance(decoder, GeminiStreamDecoder)
    return decoder


def feed(name: str, chunks: Iterable[bytes]) -> tuple[GeminiStreamDecoder, int | None]:
    """The decoder after all chunks, and the index of the chunk on which it became done."""
    decoder, done_at = decoder_for(name), None
    for index, chunk in enumerate(chunks):
        decoder.feed(chunk)
        if decoder.done and done_at is None:
            done_at = index
    return decoder, done_at


def terminator_end(name: str, data: bytes) -> int:
    """The offset just past the byte that completes the finishReason element or event."""
    if name.endswith(".json"):
        return data.rindex(b"}") + 1  # the last element's closing brace; "\n]" follows
    if data.endswith(b"\r\n\r\n"):
        return data.rindex(b"\r\n\r\n") + 3  # a CR alone ends the blank line; its LF is skipped
    return data.rindex(b"\n\n") + 2


def outcome(decoder: GeminiStreamDecoder) -> AssistantReply | str:
    assert not (decoder.done and decoder.failed)
    if decoder.failed:
        return "failed"
    return decoder.result() if decoder.done else "incomplete"


@pytest.mark.parametrize("name", STREAMS)
def test_stream_decodes_whole(name: str) -> None:
    decoder, _ = feed(name, [(FIXTURES / name).read_bytes()])
    assert outcome(decoder) == STREAMS[name]


@pytest.mark.parametrize("name", STREAMS)
def test_stream_every_two_piece_split(name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    expected = STREAMS[name]
    end = terminator_end(name, data) if isinstance(expected, AssistantReply) else None
    for offset in range(len(data) + 1):
        decoder, done_at = feed(name, [data[:offset], data[offset:]])
        assert outcome(decoder) == expected, offset
        if end is not None:
            assert done_at == (0 if offset >= end else 1), offset


@pytest.mark.parametrize("name", STREAMS)
def test_stream_one_byte_at_a_time(name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    decoder, done_at = feed(name, [data[i : i + 1] for i in range(len(data))])
    assert outcome(decoder) == STREAMS[name]
    if isinstance(STREAMS[name], AssistantReply):
        assert done_at == terminator_end(name, data) - 1


def test_input_after_done_is_ignored() -> None:
    data = (FIXTURES / "thinking_text.sse").read_bytes()
    decoder, _ = feed("thinking_text.sse", [data, b'data: {"error": {"code": 500}}\n\n', b"garbage\n\n"])
    assert decoder.done
    assert not decoder.failed
    assert decoder.result() == THINKING_REPLY


def test_error_chunk_after_http_200_fails_at_once() -> None:
    decoder = decoder_for("x.json")
    decoder.feed(b'[{"error": {"code": 429, "message": "Resource exhausted", "status": "RESOURCE_EXHAUSTED"}}')
    assert decoder.failed
    assert not decoder.done


FINISHED = b'{"candidates":[{"content":{"role":"model","parts":[{"text":"ok"}]},"finishReason":"STOP"}]}'
MALFORMED_ARRAYS = [
    FINISHED,  # a bare object, not an array
    b'[{"candidates":[]}}, ' + FINISHED + b"]",  # a stray closing brace
    b'[{"candidates":[]} {"candidates":[]}]',  # no comma between elements
    b'[{"candidates":[]},,' + FINISHED + b"]",
    b"[1, " + FINISHED + b"]",  # an element that is not an object
    b'[{"candidates": tru}, ' + FINISHED + b"]",  # not JSON inside the element
    b'[{"candidates": "none"}, ' + FINISHED + b"]",
    b'[{"candidates":[{"content":{"parts":"text"},"finishReason":"STOP"}]}]',
    b'[{"candidates":[{"content":{"parts":[{"text":5}]},"finishReason":"STOP"}]}]',
    b"[]" + FINISHED,  # bytes after the array
]
MALFORMED_EVENTS = [
    b"data: {not json}\n\n",
    b"data: [" + FINISHED + b"]\n\n",
    b'data: {"candidates":[{"content":{"parts":[{"functionCall":{"args":{}}}]},"finishReason":"STOP"}]}\n\n',
    b'data: {"candidates":[{"content":{"parts":[{"inlineData":{"mimeType":"image/png"}}]},"finishReason":"STOP"}]}\n\n',
    b'data: {"candidates":[{"content":"hi","finishReason":"STOP"}]}\n\n',
]


@pytest.mark.parametrize("body", MALFORMED_ARRAYS)
def test_malformed_array_fails_and_never_raises(body: bytes) -> None:
    for chunks in ([body], [body[i : i + 1] for i in range(len(body))]):
        decoder, _ = feed("x.json", chunks)
        assert decoder.failed, body
        assert not decoder.done


@pytest.mark.parametrize("body", MALFORMED_EVENTS)
def test_malformed_event_fails_and_never_raises(body: bytes) -> None:
    decoder, _ = feed("x.sse", [body])
    assert decoder.failed
    assert not decoder.done


def test_stream_without_finish_reason_never_done() -> None:
    decoder, _ = feed("x.json", [b'[{"promptFeedback": {"blockReason": "SAFETY"}}]'])
    assert not decoder.done
    assert not decoder.failed


def test_splitter_finds_each_element_exactly_at_every_split() -> None:
    elements = [
        b'{"a": "\\"}{\\\\", "b": {"c": [{"d": "}"}]}}',
        '{"ü": "🌍 \\u00e9 \\ud83c\\udf0d", "e": "\\\\"}'.encode(),
        b"{}",
        b'{"t": "\\\\\\""}',
    ]
    data = b" [\n" + b"\n,\r\n".join(elements) + b"\n] \r\n"
    for offset in range(len(data) + 1):
        splitter = JSONArraySplitter()
        found = splitter.feed(data[:offset]) + splitter.feed(data[offset:])
        assert found == elements, offset
        assert splitter.error is None
        assert splitter.closed
    splitter = JSONArraySplitter()
    assert [element for i in range(len(data)) for element in splitter.feed(data[i : i + 1])] == elements
    assert orjson.loads(elements[0])["a"] == '"}{\\'


def test_splitter_caps_an_element() -> None:
    splitter = JSONArraySplitter(max_element_bytes=64)
    assert splitter.feed(b'[{"a": "' + b"x" * 40) == []
    assert splitter.error is None
    assert splitter.feed(b"x" * 40) == []
    assert splitter.error is not None


def test_stream_decoder_by_content_type() -> None:
    assert isinstance(DIALECT.stream_decoder(b"text/event-stream"), GeminiStreamDecoder)
    assert isinstance(DIALECT.stream_decoder(b"application/json; charset=utf-8"), GeminiStreamDecoder)
    assert DIALECT.stream_decoder(b"application/x-ndjson") is None
    assert DIALECT.stream_decoder(b"text/html") is None


def test_is_stream_by_path() -> None:
    assert DIALECT.is_stream({}, "/v1beta/models/gemini-2.5-flash:streamGenerateContent", "alt=sse")
    assert DIALECT.is_stream({}, "/v1beta/models/gemini-2.5-flash:streamGenerateContent", "")
    assert not DIALECT.is_stream({"stream": True}, "/v1beta/models/gemini-2.5-flash:generateContent", "")


def test_reply_from_body() -> None:
    body = orjson.loads((FIXTURES / "reply.json").read_bytes())
    reply = DIALECT.reply_from_body(body)
    parts = body["candidates"][0]["content"]["parts"]
    assert reply == AssistantReply(
        message={"role": "assistant", "content": "Let me check.", "tool_calls": CALLS},
        reasoning=THOUGHT,
        usage={"prompt_tokens": 12, "completion_tokens": 63, "total_tokens": 75},
        finish_reason="STOP",
        model=MODEL,
        response_id="mXr1aPq3DbC8kdUP7Yq8-Ak",
        native={"gemini": parts},
    )


def test_reply_from_body_without_thoughts_has_no_native() -> None:
    reply = DIALECT.reply_from_body(orjson.loads(b"[" + FINISHED + b"]")[0])
    assert reply is not None
    assert reply.message == {"role": "assistant", "content": "ok"}
    assert reply.native is None
    assert reply.usage is None


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}},
        {"candidates": []},
        {"promptFeedback": {"blockReason": "SAFETY"}},
        {"candidates": [{"content": {"parts": [{"functionCall": {"name": 3}}]}}]},
        {"candidates": "x"},
        [1, 2],
        "text",
    ],
)
def test_reply_from_body_refuses(body: Any) -> None:
    assert DIALECT.reply_from_body(body) is None


# --- parse ---------------------------------------------------------------------------------------


def messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [canonical.message for canonical in DIALECT.parse(body)]


def test_parse_system_instruction_first_with_native() -> None:
    instruction = {"parts": [{"text": "Be brief."}, {"text": "Answer in German."}], "role": "user"}
    for key in ("systemInstruction", "system_instruction"):
        parsed = DIALECT.parse({key: instruction, "contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
        assert parsed == [
            Canonical({"role": "system", "content": "Be brief.\nAnswer in German."}, native={"gemini": instruction}),
            Canonical({"role": "user", "content": "hi"}),
        ]


def test_parse_user_parts() -> None:
    body = {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "What is this?"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                    {"file_data": {"mime_type": "application/pdf", "file_uri": "gs://bucket/doc.pdf"}},
                    {"executableCode": {"language": "PYTHON", "code": "print(1)"}},
                ],
            },
            {"parts": [{"text": "no role means user"}]},
        ]
    }
    assert messages(body) == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "gs://bucket/doc.pdf"}},
            ],
        },
        {"role": "user", "content": "no role means user"},
    ]


def test_parse_model_content() -> None:
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "hi"}]},
            {"role": "model", "parts": [{"text": "Hel"}, {"text": "lo"}]},
            {"role": "user", "parts": [{"text": "weather?"}]},
            {"role": "model", "parts": [{"text": "thinking", "thought": True}, *CALL_PARTS]},
        ]
    }
    parsed = DIALECT.parse(body)
    assert parsed[1] == Canonical({"role": "assistant", "content": "Hello"})
    assert parsed[3].message == {"role": "assistant", "content": None, "tool_calls": CALLS}
    assert parsed[3].native == {"gemini": body["contents"][3]["parts"]}


def test_parse_model_call_ids_kept() -> None:
    parts = [{"functionCall": {"name": "f", "args": {}, "id": "fc-1"}}, {"functionCall": {"name": "g"}}]
    (assistant,) = messages({"contents": [{"role": "model", "parts": parts}]})
    assert [call["id"] for call in assistant["tool_calls"]] == ["fc-1", "call_1"]
    assert [call["function"]["arguments"] for call in assistant["tool_calls"]] == ["{}", "{}"]


def function_response(name: str, response: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"functionResponse": {"name": name, "response": response, **extra}}


def test_parse_function_responses_bind_to_the_preceding_calls() -> None:
    calls = [{"functionCall": {"name": "lookup", "args": {"q": n}}} for n in ("a", "b")]
    calls.append({"functionCall": {"name": "other", "args": {}, "id": "x-9"}})
    body = {
        "contents": [
            {"role": "model", "parts": calls},
            {"role": "user", "parts": [function_response("lookup", {"r": 1}), function_response("other", {})]},
            {"role": "user", "parts": [function_response("lookup", {"r": 2}), {"text": "and then?"}]},
            {"role": "user", "parts": [function_response("lookup", {"r": 3})]},  # nothing left to answer
        ]
    }
    assert messages(body)[1:] == [
        {"role": "tool", "tool_call_id": "call_0", "content": '{"r":1}'},
        {"role": "tool", "tool_call_id": "x-9", "content": "{}"},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"r":2}'},
        {"role": "user", "content": "and then?"},
        {"role": "tool", "tool_call_id": "", "content": '{"r":3}', "name": "lookup"},
    ]


def test_parse_function_response_with_id_and_unbound() -> None:
    body = {
        "contents": [
            {"role": "user", "parts": [function_response("f", {"ok": True}), function_response("g", {}, id="abc")]}
        ]
    }
    assert messages(body) == [
        {"role": "tool", "tool_call_id": "", "content": '{"ok":true}', "name": "f"},
        {"role": "tool", "tool_call_id": "abc", "content": "{}"},
    ]


def test_parse_merges_consecutive_model_contents() -> None:
    """The SDK's chat echoes a streamed reply as one model content per chunk."""
    chunks = [
        {"role": "model", "parts": [{"text": "Thinking...", "thought": True}]},
        {"role": "model", "parts": [{"text": "Hel"}]},
        {"role": "model"},
        {"role": "model", "parts": [{"text": "lo", "thoughtSignature": SIG}]},
    ]
    (assistant,) = DIALECT.parse({"contents": chunks})
    assert assistant.message == {"role": "assistant", "content": "Hello"}
    assert assistant.native == {"gemini": [part for chunk in chunks for part in chunk.get("parts", [])]}


def test_parse_does_not_mutate_the_body() -> None:
    body = orjson.loads((FIXTURES / "reply.json").read_bytes())
    body = {"systemInstruction": {"parts": [{"text": "s"}]}, "contents": [body["candidates"][0]["content"]]}
    before = copy.deepcopy(body)
    DIALECT.parse(body)
    assert body == before


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"contents": {"role": "user"}}, "contents"),
        ({"contents": ["hi"]}, "contents[0]"),
        ({"contents": [{"role": "assistant", "parts": []}]}, "contents[0].role"),
        ({"contents": [{"role": ["user"], "parts": []}]}, "contents[0].role"),
        ({"contents": [{"role": "user", "parts": "hi"}]}, "contents[0].parts"),
        ({"contents": [{"parts": [{"text": "a"}, "b"]}]}, "contents[0].parts[1]"),
        ({"contents": [{"parts": [{"text": 1}]}]}, "contents[0].parts[0].text"),
        (
            {"contents": [{"role": "model", "parts": [{"functionCall": {"args": {}}}]}]},
            "contents[0].parts[0].functionCall",
        ),
        (
            {"contents": [{"parts": [{"function_call": {"name": "f", "args": []}}]}]},
            "contents[0].parts[0].functionCall",
        ),
        ({"contents": [{"parts": [function_response("f", "x")]}]}, "contents[0].parts[0].functionResponse"),  # type: ignore[arg-type]
        ({"contents": [{"parts": [{"inlineData": {"mimeType": "image/png"}}]}]}, "contents[0].parts[0].inlineData"),
        ({"contents": [{"parts": [{"fileData": {"mimeType": "image/png"}}]}]}, "contents[0].parts[0].fileData"),
        ({"systemInstruction": "Be brief.", "contents": []}, "systemInstruction"),
        ({"system_instruction": {"parts": "x"}}, "system_instruction"),
    ],
)
def test_parse_rejects_malformed_prompts(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ClientError) as caught:
        DIALECT.parse(body)
    assert caught.value.status == 400
    assert caught.value.param == param
    assert caught.value.message.startswith(param + " must")


# --- render --------------------------------------------------------------------------------------


def test_render_round_trips_a_parsed_body() -> None:
    body = {
        "systemInstruction": {"parts": [{"text": "Be brief."}], "role": "user"},
        "contents": [
            {"role": "user", "parts": [{"text": "weather and time?"}]},
            {"role": "model", "parts": [{"text": "plan", "thought": True}, *CALL_PARTS]},
            {
                "role": "user",
                "parts": [
                    function_response("get_weather", {"temp": 21}),
                    function_response("get_time", {"time": "09:00"}),
                    {"text": "thanks"},
                    {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}},
                ],
            },
            {"role": "model", "parts": [{"text": "It is 21 °C."}, {"functionCall": {"name": "log", "args": {}}}]},
        ],
        "generationConfig": {"temperature": 0.2},
        "tools": [{"functionDeclarations": [{"name": "get_weather"}]}],
    }
    parsed = DIALECT.parse(body)
    system = [canonical for canonical in parsed if canonical.message["role"] == "system"]
    rendered = DIALECT.render({"generationConfig": {"temperature": 0.2}, "tools": body["tools"]}, system, parsed[1:])
    assert rendered == body
    assert orjson.dumps(rendered["systemInstruction"]) == orjson.dumps(body["systemInstruction"])
    assert orjson.dumps(rendered["contents"][1]) == orjson.dumps(body["contents"][1])


def test_render_replaces_the_body_system_prompt() -> None:
    body = {
        "system_instruction": {"parts": [{"text": "old"}]},
        "contents": [{"role": "user", "parts": [{"text": "q"}]}],
    }
    before = copy.deepcopy(body)
    two = [
        Canonical({"role": "system", "content": "one"}),
        Canonical({"role": "system", "content": [{"type": "text", "text": "two"}]}),
    ]
    assert DIALECT.render(body, two, []) == {
        "contents": body["contents"],
        "systemInstruction": {"parts": [{"text": "one\ntwo"}]},
    }
    assert DIALECT.render(body, [], []) == {"contents": body["contents"]}
    assert body == before
    assert DIALECT.render(body, [], []) is not body


def test_render_history() -> None:
    history = [
        Canonical({"role": "system", "content": "dropped: not leading"}),
        Canonical(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "compare"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.JPG?size=large"}},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://generativelanguage.googleapis.com/v1beta/files/abc"},
                    },
                ],
            }
        ),
        Canonical({"role": "assistant", "content": None, "tool_calls": CALLS}),
        Canonical({"role": "tool", "tool_call_id": "call_1", "content": "noon"}),
        Canonical({"role": "tool", "tool_call_id": "call_0", "content": '{"temp": 21}'}),
        Canonical({"role": "tool", "tool_call_id": "", "content": "[1]", "name": "unbound"}),
        Canonical({"role": "user", "content": "so?"}),
        Canonical({"role": "assistant", "content": ""}),  # nothing to send: left out
    ]
    body = {"contents": [{"role": "user", "parts": [{"text": "next"}]}, {"role": "model", "parts": [{"text": "x"}]}]}
    rendered = DIALECT.render(body, [], history)
    assert rendered["contents"] == [
        {
            "role": "user",
            "parts": [
                {"text": "compare"},
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.JPG?size=large"}},
                {
                    "fileData": {
                        "mimeType": "application/octet-stream",
                        "fileUri": "https://generativelanguage.googleapis.com/v1beta/files/abc",
                    }
                },
            ],
        },
        {
            "role": "model",
            "parts": [
                {"functionCall": {"name": "get_weather", "args": WEATHER_ARGS}},
                {"functionCall": {"name": "get_time", "args": {"city": "東京"}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_time", "response": {"result": "noon"}}},
                {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
                {"functionResponse": {"name": "unbound", "response": {"result": "[1]"}}},
                {"text": "so?"},
                {"text": "next"},  # the body's first content merged in at the junction
            ],
        },
        body["contents"][1],
    ]
    assert rendered["contents"][-1] is body["contents"][1]
    assert body["contents"][0] == {"role": "user", "parts": [{"text": "next"}]}


def test_render_replays_native_model_content_verbatim() -> None:
    native = [{"text": "plan", "thought": True}, {"text": "", "thoughtSignature": SIG}, *CALL_PARTS]
    history = [
        Canonical({"role": "user", "content": "go"}),
        Canonical({"role": "assistant", "content": None, "tool_calls": CALLS}, native={"gemini": native}),
    ]
    rendered = DIALECT.render({"contents": []}, [], history)
    assert orjson.dumps(rendered["contents"][1]["parts"]) == orjson.dumps(native)


# --- recorded bodies, errors ------------------------------------------------------------------------


RECORDED = [
    Canonical({"role": "assistant", "content": "Hi there"}),
    Canonical({"role": "assistant", "content": ""}),
    Canonical(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [CALLS[0], {**CALLS[1], "id": "toolu_42"}],
        }
    ),
    Canonical(THINKING_REPLY.message, native=THINKING_REPLY.native),
]


@pytest.mark.parametrize("recorded", RECORDED)
def test_recorded_body_forms(recorded: Canonical) -> None:
    body, kind = DIALECT.recorded_body(recorded, MODEL, False, "")
    assert kind == b"application/json"
    reply = DIALECT.reply_from_body(orjson.loads(body))
    assert reply is not None
    assert orjson.dumps(reply.message) == orjson.dumps(recorded.message)
    assert reply.native == recorded.native
    assert reply.model == MODEL
    for query, expected_kind in (("alt=sse&key=abc", b"text/event-stream"), ("key=abc", b"application/json")):
        streamed, kind = DIALECT.recorded_body(recorded, MODEL, True, query)
        assert kind == expected_kind
        decoder = DIALECT.stream_decoder(kind)
        assert decoder is not None
        decoder.feed(streamed)
        assert decoder.done
        assert orjson.dumps(decoder.result().message) == orjson.dumps(recorded.message)
    assert streamed.startswith(b"[")


@pytest.mark.parametrize("recorded", RECORDED)
def test_recorded_body_validates_as_sdk_response(recorded: Canonical) -> None:
    types = pytest.importorskip("google.genai.types")
    body, _ = DIALECT.recorded_body(recorded, MODEL, False, "")
    response = types.GenerateContentResponse.model_validate(orjson.loads(body))
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    assert response.model_version == MODEL
    sse, _ = DIALECT.recorded_body(recorded, None, True, "alt=sse")
    assert sse.startswith(b"data: ")
    assert sse.endswith(b"\r\n\r\n")
    types.GenerateContentResponse.model_validate(orjson.loads(sse[6:]))
    (element,) = orjson.loads(DIALECT.recorded_body(recorded, None, True, "")[0])
    types.GenerateContentResponse.model_validate(element)


STATUS_NAMES = [
    (400, "INVALID_ARGUMENT"),
    (405, "INVALID_ARGUMENT"),
    (413, "INVALID_ARGUMENT"),
    (422, "INVALID_ARGUMENT"),
    (431, "INVALID_ARGUMENT"),
    (401, "UNAUTHENTICATED"),
    (403, "PERMISSION_DENIED"),
    (404, "NOT_FOUND"),
    (409, "ABORTED"),
    (429, "RESOURCE_EXHAUSTED"),
    (502, "UNAVAILABLE"),
    (503, "UNAVAILABLE"),
    (504, "DEADLINE_EXCEEDED"),
    (500, "INTERNAL"),
    (418, "INTERNAL"),
]


@pytest.mark.parametrize(("status", "name"), STATUS_NAMES)
def test_error_body_shape(status: int, name: str) -> None:
    error = ClientError(status, "Session s1 not found.", param="session_id", code="not_found")
    assert orjson.loads(DIALECT.error_body(error)) == {
        "error": {"code": status, "message": "Session s1 not found.", "status": name}
    }


# --- with the google-genai SDK as the client --------------------------------------------------------


Reply = tuple[int, bytes, bytes]  # status, body, content type


def sdk_client(replies: list[Reply], sent: list[tuple[str, str, dict[str, Any]]]) -> Any:
    """A google-genai client whose requests land in ``sent`` and are answered from ``replies``."""
    genai = pytest.importorskip("google.genai")
    httpx2 = pytest.importorskip("httpx2")
    answers = iter(replies)

    def handler(request: Any) -> Any:
        sent.append((request.url.path, request.url.query.decode(), orjson.loads(request.content)))
        status, body, kind = next(answers)
        return httpx2.Response(status, content=body, headers={"content-type": kind.decode()})

    options = genai.types.HttpOptions(
        httpx_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
        retry_options=genai.types.HttpRetryOptions(attempts=1),
    )
    return genai.Client(api_key="test-key", http_options=options)


def echoed_assistant(body: dict[str, Any]) -> Canonical:
    (assistant,) = [canonical for canonical in DIALECT.parse(body) if canonical.message["role"] == "assistant"]
    return assistant


def test_sdk_echo_of_a_whole_reply_parses_to_the_recorded_message() -> None:
    types = pytest.importorskip("google.genai.types")
    reply_body = (FIXTURES / "reply.json").read_bytes()
    sent: list[tuple[str, str, dict[str, Any]]] = []
    client = sdk_client([(200, reply_body, b"application/json")] * 2, sent)
    chat = client.chats.create(model=MODEL, config=types.GenerateContentConfig(system_instruction="Be brief."))
    chat.send_message("weather and time in Zürich?")
    chat.send_message(
        [
            types.Part.from_function_response(name="get_weather", response={"temp": 21}),
            types.Part.from_function_response(name="get_time", response={"time": "16:00"}),
        ]
    )
    path, _, body = sent[1]
    assert not DIALECT.is_stream(body, path, "")
    reply = DIALECT.reply_from_body(orjson.loads(reply_body))
    assert reply is not None
    assert orjson.dumps(echoed_assistant(body).message) == orjson.dumps(reply.message)
    assert messages(body)[0] == {"role": "system", "content": "Be brief."}
    assert messages(body)[-2:] == [
        {"role": "tool", "tool_call_id": "call_0", "content": '{"temp":21}'},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"time":"16:00"}'},
    ]


@pytest.mark.parametrize("name", ["thinking_text.sse", "function_calls.sse"])
def test_sdk_echo_of_a_streamed_reply_parses_to_the_decoded_message(name: str) -> None:
    stream = (FIXTURES / name).read_bytes()
    sent: list[tuple[str, str, dict[str, Any]]] = []
    client = sdk_client([(200, stream, b"text/event-stream")] * 2, sent)
    chat = client.chats.create(model=MODEL)
    assert list(chat.send_message_stream("hello"))
    list(chat.send_message_stream("more"))
    path, query, body = sent[1]
    assert DIALECT.is_stream(body, path, query)
    decoder, _ = feed(name, [stream])
    assert orjson.dumps(echoed_assistant(body).message) == orjson.dumps(decoder.result().message)


def test_sdk_echo_of_a_recorded_reply() -> None:
    recorded = RECORDED[2]
    sse, kind = DIALECT.recorded_body(recorded, MODEL, True, "alt=sse")
    sent: list[tuple[str, str, dict[str, Any]]] = []
    client = sdk_client([(200, sse, kind), (200, sse, kind)], sent)
    chat = client.chats.create(model=MODEL)
    calls = [chunk.function_calls for chunk in chat.send_message_stream("go")]
    assert [call.name for call in calls[0]] == ["get_weather", "get_time"]
    list(chat.send_message_stream("again"))
    assert orjson.dumps(echoed_assistant(sent[1][2]).message) == orjson.dumps(recorded.message)


@pytest.mark.parametrize(("status", "name"), [(404, "NOT_FOUND"), (409, "ABORTED"), (503, "UNAVAILABLE")])
def test_sdk_raises_on_the_proxy_error_body(status: int, name: str) -> None:
    errors = pytest.importorskip("google.genai.errors")
    body = DIALECT.error_body(ClientError(status, "Session s1 is busy."))
    client = sdk_client([(status, body, b"application/json")], [])
    expected = errors.ClientError if status < 500 else errors.ServerError
    with pytest.raises(expected) as caught:
        client.models.generate_content(model=MODEL, contents="hi")
    assert caught.value.code == status
    assert caught.value.status == name
    assert caught.value.message == "Session s1 is busy."

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest

from statefulproxy.dialects.openai_recorder import ChatStreamRecorder
from statefulproxy.dialects.openai_stream import (
    LEGACY_CALL_ID,
    AssistantReply,
    ChatStreamAccumulator,
    reply_from_completion,
)

STREAMS = Path(__file__).parent / "fixtures" / "streams"
LINE_ENDINGS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}

OPENAI_ID = "chatcmpl-AbC123"
OPENAI_MODEL = "gpt-4o-mini-2024-07-18"


def text_reply(content: str | None, **fields: Any) -> AssistantReply:
    reply = AssistantReply(
        message={"role": "assistant", "content": content},
        reasoning=None,
        usage=None,
        finish_reason="stop",
        model=OPENAI_MODEL,
        response_id=OPENAI_ID,
    )
    for key, value in fields.items():
        setattr(reply, key, value)
    return reply


# fixture -> the reply it records, or "failed" / "incomplete"
EXPECTED: dict[str, AssistantReply | str] = {
    "plain_text.sse": text_reply("Hello! How can I help you today?"),
    "parallel_tool_calls.sse": text_reply(
        None,
        message={
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_paris",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                },
                {
                    "id": "call_tokyo",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"city": "Tokyo"}'},
                },
            ],
        },
        finish_reason="tool_calls",
    ),
    "openrouter_comments.sse": text_reply(
        "The answer is 42.",
        usage={"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
        model="openai/gpt-4o-mini",
        response_id="gen-1764000000-abcdef",
    ),
    "azure_prompt_filter.sse": text_reply("Azure says hi.", model="gpt-4o-2024-11-20", response_id="chatcmpl-Azure42"),
    "include_usage.sse": text_reply(
        "Short answer.", usage={"prompt_tokens": 19, "completion_tokens": 3, "total_tokens": 22}
    ),
    "deepseek_reasoning.sse": text_reply(
        "2 + 2 = 4",
        reasoning="The user asks for 2+2. That is 4.",
        usage={
            "prompt_tokens": 10,
            "completion_tokens": 20,
            "total_tokens": 30,
            "prompt_cache_hit_tokens": 0,
            "prompt_cache_miss_tokens": 10,
        },
        model="deepseek-reasoner",
        response_id="5d1f0e3a-1b2c-4d5e-8f90-a1b2c3d4e5f6",
    ),
    "vllm_reasoning.sse": text_reply(
        "Green tea is nice.",
        reasoning="Thinking about tea.",
        model="Qwen/Qwen3-8B",
        response_id="chatcmpl-9f8e7d6c5b4a",
    ),
    "refusal.sse": text_reply(
        None, message={"role": "assistant", "content": None, "refusal": "I'm sorry, I can't help with that."}
    ),
    "error_after_content.sse": "failed",
    "cut_before_done.sse": "incomplete",
    "n2_interleaved.sse": text_reply("Red rose", finish_reason="length"),
    "multibyte_utf8.sse": text_reply(
        "Café crème à la française — 日本語のテキスト、中文字符 emoji 🎉👩‍💻🇫🇷 Ελληνικά ∑ ñ"
    ),
}


def load(name: str, ending: str) -> bytes:
    return (STREAMS / name).read_bytes().replace(b"\n", LINE_ENDINGS[ending])


def record(chunks: Iterable[bytes]) -> AssistantReply | str:
    recorder = ChatStreamRecorder()
    for chunk in chunks:
        recorder.feed(chunk)
    if recorder.failed:
        assert not recorder.done
        return "failed"
    if not recorder.done:
        return "incomplete"
    return recorder.result()


def accumulate(*payloads: Any) -> ChatStreamAccumulator:
    accumulator = ChatStreamAccumulator()
    for payload in payloads:
        accumulator.feed(payload if isinstance(payload, str) else orjson.dumps(payload).decode())
    return accumulator


def chunk(delta: Any, index: Any = 0, finish_reason: str | None = None, **top: Any) -> dict[str, Any]:
    return {
        "id": OPENAI_ID,
        "object": "chat.completion.chunk",
        "model": OPENAI_MODEL,
        "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason}],
        **top,
    }


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(EXPECTED) == sorted(path.name for path in STREAMS.glob("*.sse"))


@pytest.mark.parametrize("ending", LINE_ENDINGS)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_reply(name: str, ending: str) -> None:
    stream = load(name, ending)
    assert record([stream]) == EXPECTED[name]
    for offset in range(len(stream) + 1):
        assert record([stream[:offset], stream[offset:]]) == EXPECTED[name], offset
    assert record(stream[i : i + 1] for i in range(len(stream))) == EXPECTED[name]
    rng = random.Random(f"{name}-{ending}")
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(2, 12)))
        bounds = [0, *cuts, len(stream)]
        assert record(stream[a:b] for a, b in itertools.pairwise(bounds)) == EXPECTED[name], cuts


@pytest.mark.parametrize(("ending", "dispatch"), [("lf", b"\n\n"), ("crlf", b"\r\n\r"), ("cr", b"\r\r")])
def test_done_flips_on_the_chunk_holding_done(ending: str, dispatch: bytes) -> None:
    stream = load("plain_text.sse", ending)
    # The [DONE] event is dispatched by the first character of its blank line.
    done_at = stream.index(b"data: [DONE]") + len(b"data: [DONE]") + len(dispatch)
    for offset in range(len(stream) + 1):
        recorder = ChatStreamRecorder()
        recorder.feed(stream[:offset])
        assert recorder.done is (offset >= done_at), offset
        recorder.feed(stream[offset:])
        assert recorder.done
        assert not recorder.failed


def test_events_after_done_are_ignored() -> None:
    recorder = ChatStreamRecorder()
    recorder.feed(b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\ndata: [DONE]\n\ndata: not json\n\n')
    assert recorder.done
    recorder.feed(b'data: {"choices":[{"index":0,"delta":{"content":"b"}}]}\n\n')
    assert recorder.done
    assert recorder.result().message == {"role": "assistant", "content": "a"}


def test_sse_error_event_fails_the_stream() -> None:
    recorder = ChatStreamRecorder()
    recorder.feed(b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\nevent: error\ndata: {}\n\n')
    recorder.feed(b"data: [DONE]\n\n")
    assert recorder.failed
    assert not recorder.done


def test_other_named_events_are_ignored() -> None:
    recorder = ChatStreamRecorder()
    recorder.feed(b'event: ping\ndata: {"x": 1}\n\ndata: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n')
    recorder.feed(b"data: [DONE]\n\n")
    assert recorder.done
    assert recorder.result().message["content"] == "a"


def test_oversized_line_fails_the_recorder() -> None:
    recorder = ChatStreamRecorder()
    recorder.feed(b"data: " + b"x" * (16 * 1024 * 1024))
    assert recorder.failed
    recorder.feed(b"\n\ndata: [DONE]\n\n")
    assert recorder.failed
    assert not recorder.done


def test_accumulator_done_only_on_done_marker() -> None:
    accumulator = accumulate(chunk({"content": "hi"}, finish_reason="stop"))
    assert not accumulator.done
    assert not accumulator.failed
    with pytest.raises(RuntimeError):
        accumulator.result()
    accumulator.feed("[DONE]")
    assert accumulator.done
    assert accumulator.result().message == {"role": "assistant", "content": "hi"}
    assert accumulator.result().finish_reason == "stop"


def test_done_marker_prefix() -> None:
    assert accumulate(chunk({"content": "hi"}), "[DONE] ").done
    assert not accumulate(chunk({"content": "hi"}), " [DONE]").done


def test_blank_data_is_a_keep_alive() -> None:
    accumulator = accumulate("", "  ", chunk({"content": "hi"}), "[DONE]")
    assert accumulator.done
    assert accumulator.result().message["content"] == "hi"


def test_content_none_without_fragments_and_empty_string_kept() -> None:
    assert accumulate(chunk({"role": "assistant", "content": None}), "[DONE]").result().message == {
        "role": "assistant",
        "content": None,
    }
    assert accumulate(chunk({"role": "assistant", "content": ""}), "[DONE]").result().message["content"] == ""


def test_in_band_error_fails() -> None:
    accumulator = accumulate(chunk({"content": "a"}), {"error": {"message": "overloaded"}}, "[DONE]")
    assert accumulator.failed
    assert not accumulator.done


def test_error_null_is_not_an_error() -> None:
    accumulator = accumulate(chunk({"content": "a"}, error=None), "[DONE]")
    assert accumulator.done


@pytest.mark.parametrize("data", ["not json", "{", '{"choices": [}', "nan"])
def test_bad_json_fails(data: str) -> None:
    accumulator = accumulate(chunk({"content": "a"}), data, "[DONE]")
    assert accumulator.failed
    assert not accumulator.done


@pytest.mark.parametrize(
    "payload",
    [
        [],
        42,
        "a string",
        None,
        {"choices": {"index": 0}},
        {"choices": ["x"]},
        {"choices": [{"index": "0", "delta": {}}]},
        {"choices": [{"index": True, "delta": {}}]},
        {"choices": [{"index": None, "delta": {}}]},
        {"choices": [{"index": 0.0, "delta": {}}]},
        {"choices": [{"index": 0, "delta": []}]},
        {"choices": [{"index": 0, "delta": "text"}]},
        {"choices": [{"index": 0, "delta": {"content": 5}}]},
        {"choices": [{"index": 0, "delta": {"content": ["a"]}}]},
        {"choices": [{"index": 0, "delta": {"refusal": {}}}]},
        {"choices": [{"index": 0, "delta": {"reasoning_content": 1}}]},
        {"choices": [{"index": 0, "delta": {"reasoning": False}}]},
        {"choices": [{"index": 0, "delta": {"name": 3}}]},
        {"choices": [{"index": 0, "finish_reason": 1, "delta": {}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": {"index": 0}}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": ["call"]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": "0"}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": False}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": 7}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "type": 1}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": "f"}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"name": 1}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": {}}}]}}]},
        {"choices": [], "usage": [1, 2]},
        {"choices": [], "usage": 12},
        {"choices": [], "model": 4},
        {"choices": [], "id": ["x"]},
    ],
)
def test_wrong_types_fail_without_raising(payload: Any) -> None:
    accumulator = accumulate(chunk({"content": "a"}), payload, "[DONE]")
    assert accumulator.failed
    assert not accumulator.done
    recorder = ChatStreamRecorder()
    recorder.feed(b"data: " + orjson.dumps(payload) + b"\n\ndata: [DONE]\n\n")
    assert recorder.failed
    assert not recorder.done


def test_stream_without_done_is_not_done() -> None:
    accumulator = accumulate(chunk({"content": "a"}, finish_reason="stop"))
    assert not accumulator.done
    assert not accumulator.failed


def test_only_choice_zero_is_recorded() -> None:
    accumulator = accumulate(
        chunk({"content": "one"}, index=1),
        chunk({"content": "zero"}, index=0),
        chunk({"content": "!", "tool_calls": [{"index": 0, "id": "c", "function": {"name": "f"}}]}, index=2),
        # a wrongly typed delta of another choice is not looked at
        chunk({"content": 5}, index=3),
        chunk({}, index=1, finish_reason="length"),
        chunk({}, index=0, finish_reason="stop"),
        "[DONE]",
    )
    reply = accumulator.result()
    assert reply.message == {"role": "assistant", "content": "zero"}
    assert reply.finish_reason == "stop"


def test_choices_without_index_are_choice_zero() -> None:
    payload = {"choices": [{"delta": {"content": "x"}}]}
    assert accumulate(payload, "[DONE]").result().message["content"] == "x"


def test_tool_call_fragments_accumulate_by_index() -> None:
    reply = accumulate(
        chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "second", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "id": "a", "type": "function", "function": {"name": "first"}}]}),
        chunk(
            {
                "tool_calls": [
                    {"index": 0, "function": {"arguments": '{"x":'}},
                    {"index": 1, "function": {"arguments": "{}"}},
                    {"index": 0, "function": {"arguments": " 1}"}},
                ]
            }
        ),
        # a later fragment repeating id or name does not change them
        chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "first", "arguments": ""}}]}),
        "[DONE]",
    ).result()
    assert reply.message["tool_calls"] == [
        {"id": "a", "type": "function", "function": {"name": "first", "arguments": '{"x": 1}'}},
        {"id": "b", "type": "function", "function": {"name": "second", "arguments": "{}"}},
    ]
    assert reply.message["content"] is None


def test_tool_calls_without_index() -> None:
    # Seen from some OpenAI-compatible servers: no `index`; a new id starts a new call.
    reply = accumulate(
        chunk({"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": '{"a":'}}]}),
        chunk({"tool_calls": [{"function": {"arguments": "1}"}}]}),
        chunk({"tool_calls": [{"id": "b", "function": {"name": "g", "arguments": "{}"}}]}),
        "[DONE]",
    ).result()
    assert reply.message["tool_calls"] == [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}},
        {"id": "b", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]


def test_reasoning_in_both_fields_is_taken_once() -> None:
    # vLLM sent the same text as `reasoning_content` and `reasoning` while renaming the field.
    reply = accumulate(
        chunk({"reasoning_content": "Hm", "reasoning": "Hm"}),
        chunk({"reasoning_content": "m.", "reasoning": "m."}),
        chunk({"content": "ok"}),
        "[DONE]",
    ).result()
    assert reply.reasoning == "Hmm."


def test_empty_reasoning_is_none() -> None:
    reply = accumulate(chunk({"content": "ok", "reasoning_content": ""}), "[DONE]").result()
    assert reply.reasoning is None


def test_usage_is_the_last_non_null_with_int_values_only() -> None:
    reply = accumulate(
        chunk({"content": "a"}, usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}),
        chunk({}, usage=None),
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 3,
                "completion_tokens": 4,
                "total_tokens": 7,
                "cost": 0.5,
                "is_byok": False,
                "completion_tokens_details": {"reasoning_tokens": 1},
            },
        },
        chunk({}, usage=None),
        "[DONE]",
    ).result()
    assert reply.usage == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_name_and_refusal_only_when_present() -> None:
    reply = accumulate(chunk({"role": "assistant", "name": "bot", "content": "x", "refusal": None}), "[DONE]").result()
    assert reply.message == {"role": "assistant", "content": "x", "name": "bot"}


def test_first_non_empty_id_and_model() -> None:
    reply = accumulate(
        {"id": "", "model": "", "choices": []},
        chunk({"content": "x"}, id="first", model="m1"),
        chunk({}, id="second", model="m2"),
        "[DONE]",
    ).result()
    assert (reply.response_id, reply.model) == ("first", "m1")


# --- non-streamed ---------------------------------------------------------------------------


def completion(message: dict[str, Any], **top: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-XyZ",
        "object": "chat.completion",
        "created": 1764000000,
        "model": OPENAI_MODEL,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 9,
            "completion_tokens": 12,
            "total_tokens": 21,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        },
        "system_fingerprint": "fp_0123456789",
    }
    body.update(top)
    return body


def test_completion_typical_openai() -> None:
    body = completion(
        {"role": "assistant", "content": "Hello there.", "refusal": None, "annotations": [], "audio": None}
    )
    assert reply_from_completion(body) == AssistantReply(
        message={"role": "assistant", "content": "Hello there."},
        reasoning=None,
        usage={"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
        finish_reason="stop",
        model=OPENAI_MODEL,
        response_id="chatcmpl-XyZ",
    )


def test_completion_tool_calls() -> None:
    body = completion(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
                {"id": "call_2", "function": {"name": "g", "arguments": "{}"}},
            ],
            "refusal": None,
        }
    )
    body["choices"][0]["finish_reason"] = "tool_calls"
    reply = reply_from_completion(body)
    assert reply is not None
    assert reply.message == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
            {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
        ],
    }
    assert reply.finish_reason == "tool_calls"


def test_completion_empty_tool_calls_omitted() -> None:
    reply = reply_from_completion(completion({"role": "assistant", "content": "x", "tool_calls": []}))
    assert reply is not None
    assert reply.message == {"role": "assistant", "content": "x"}


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_completion_reasoning(field: str) -> None:
    reply = reply_from_completion(completion({"role": "assistant", "content": "4", field: "2+2 is 4."}))
    assert reply is not None
    assert reply.reasoning == "2+2 is 4."
    assert reply.message == {"role": "assistant", "content": "4"}


def test_completion_refusal() -> None:
    reply = reply_from_completion(completion({"role": "assistant", "content": None, "refusal": "No."}))
    assert reply is not None
    assert reply.message == {"role": "assistant", "content": None, "refusal": "No."}


def test_completion_picks_choice_zero() -> None:
    body = completion({"role": "assistant", "content": "zero"})
    body["choices"].insert(0, {"index": 1, "message": {"role": "assistant", "content": "one"}, "finish_reason": "stop"})
    reply = reply_from_completion(body)
    assert reply is not None
    assert reply.message["content"] == "zero"


def test_completion_without_usage() -> None:
    reply = reply_from_completion(completion({"role": "assistant", "content": "x"}, usage=None))
    assert reply is not None
    assert reply.usage is None


@pytest.mark.parametrize(
    "body",
    [
        None,
        "text",
        [completion({"content": "x"})],
        {"error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}},
        {**completion({"content": "x"}), "error": {"message": "bad"}},
        {"object": "chat.completion"},
        completion({"content": "x"}, choices=[]),
        completion({"content": "x"}, choices={"0": {}}),
        completion({"content": "x"}, choices=[{"index": 1, "message": {"content": "x"}}]),
        completion({"content": "x"}, choices=[{"index": True, "message": {"content": "x"}}]),
        completion({"content": "x"}, choices=[{"index": 0}]),
        completion({"content": "x"}, choices=[{"index": 0, "message": "x"}]),
        completion({"content": 42}),
        completion({"content": [{"type": "text", "text": "x"}]}),
        completion({"content": None, "tool_calls": {"id": "c"}}),
        completion({"content": None, "tool_calls": ["c"]}),
        completion({"content": None, "tool_calls": [{"id": "c", "function": "f"}]}),
        completion({"content": None, "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}]}),
        completion({"content": "x", "reasoning_content": 1}),
        completion({"content": "x"}, usage=[1]),
        completion({"content": "x"}, model=7),
    ],
)
def test_completion_malformed(body: Any) -> None:
    assert reply_from_completion(body) is None


def test_a_legacy_function_call_is_kept_as_a_tool_call() -> None:
    # issue 10, defect 8: it was stored as an empty message
    call = {"id": LEGACY_CALL_ID, "type": "function", "function": {"name": "lookup", "arguments": '{"q":"x"}'}}
    body = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "function_call": call["function"]}}]
    }
    reply = reply_from_completion(body)
    assert reply is not None
    assert reply.message == {"role": "assistant", "content": None, "tool_calls": [call]}
    accumulator = ChatStreamAccumulator()
    for delta in (
        {"role": "assistant", "function_call": {"name": "lookup", "arguments": ""}},
        {"function_call": {"arguments": '{"q":'}},
        {"function_call": {"arguments": '"x"}'}},
    ):
        accumulator.feed(orjson.dumps({"choices": [{"index": 0, "delta": delta}]}))
    accumulator.feed(b"[DONE]")
    assert accumulator.result().message["tool_calls"] == [call]

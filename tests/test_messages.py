from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai.types.chat import ChatCompletion, ParsedChatCompletionMessage

from statefulproxy.dialects.openai import validate_messages
from statefulproxy.dialects.openai_stream import reply_from_completion
from statefulproxy.errors import ClientError
from statefulproxy.sessions.messages import canonical, leading_system_count, minimal, title_from

TOOL_CALL: dict[str, Any] = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
}


# --- minimal(): the allow-list per role ---------------------------------------------------------


@pytest.mark.parametrize("role", ["system", "developer", "user"])
def test_plain_roles_keep_role_content_name(role: str) -> None:
    message = {
        "role": role,
        "content": "hi",
        "name": "alice",
        "id": "msg_1",
        "created_at": 1,
        "refusal": None,
        "annotations": [],
        "tool_calls": [TOOL_CALL],
        "reasoning_content": "thought",
    }
    assert minimal(message) == {"role": role, "content": "hi", "name": "alice"}


@pytest.mark.parametrize("role", ["system", "developer", "user"])
def test_plain_roles_omit_absent_or_null_name(role: str) -> None:
    assert minimal({"role": role, "content": "hi"}) == {"role": role, "content": "hi"}
    assert minimal({"role": role, "content": "hi", "name": None}) == {"role": role, "content": "hi"}


def test_user_content_parts_kept_as_they_are() -> None:
    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]
    assert minimal({"role": "user", "content": parts}) == {"role": "user", "content": parts}


def test_tool_message_keeps_only_tool_call_id_and_content() -> None:
    message = {"role": "tool", "tool_call_id": "call_1", "content": "18C", "name": "get_weather", "id": "x"}
    assert minimal(message) == {"role": "tool", "tool_call_id": "call_1", "content": "18C"}


def test_assistant_allow_list_drops_sdk_and_streaming_fields() -> None:
    message = {
        "role": "assistant",
        "content": "Sure.",
        "name": "bot",
        "refusal": None,
        "annotations": [{"type": "url_citation"}],
        "audio": None,
        "function_call": None,
        "parsed": {"a": 1},
        "id": "msg_9",
        "created_at": 5,
        "tool_calls": [{**TOOL_CALL, "index": 0, "function": {**TOOL_CALL["function"], "parsed_arguments": {}}}],
    }
    assert minimal(message) == {"role": "assistant", "content": "Sure.", "name": "bot", "tool_calls": [TOOL_CALL]}


def test_assistant_non_null_refusal_is_not_replayed() -> None:
    # notes/providers.md: strict providers reject `refusal`; the replayed form has no refusal key
    message = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    assert minimal(message) == {"role": "assistant", "content": ""}


def test_tool_call_type_defaults_to_function() -> None:
    call = {"id": "call_1", "function": {"name": "f", "arguments": "{}"}, "index": 3}
    out = minimal({"role": "assistant", "content": None, "tool_calls": [call]})
    assert out["tool_calls"] == [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]


@pytest.mark.parametrize("content", ["", None])
def test_assistant_empty_content_beside_tool_calls_is_null(content: str | None) -> None:
    out = minimal({"role": "assistant", "content": content, "tool_calls": [TOOL_CALL]})
    assert out == {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}


@pytest.mark.parametrize("content", ["", None])
def test_assistant_empty_content_without_tool_calls_is_empty_string(content: str | None) -> None:
    assert minimal({"role": "assistant", "content": content}) == {"role": "assistant", "content": ""}
    assert minimal({"role": "assistant", "content": content, "tool_calls": []}) == {"role": "assistant", "content": ""}


def test_empty_and_null_assistant_content_canonicalize_alike() -> None:
    with_calls = [{"role": "assistant", "content": c, "tool_calls": [TOOL_CALL]} for c in ("", None)]
    assert canonical(with_calls[0]) == canonical(with_calls[1])
    assert canonical({"role": "assistant", "content": ""}) == canonical({"role": "assistant", "content": None})
    assert canonical({"role": "assistant"}) == canonical({"role": "assistant", "content": ""})


REASONING_MESSAGE = {"role": "assistant", "content": "4", "reasoning_content": "2+2", "reasoning": "two plus two"}


def test_reasoning_dropped_by_default() -> None:
    assert minimal(REASONING_MESSAGE) == {"role": "assistant", "content": "4"}
    assert minimal(REASONING_MESSAGE, "none") == {"role": "assistant", "content": "4"}


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_kept_only_under_the_configured_field(field: Any) -> None:
    assert minimal(REASONING_MESSAGE, field) == {"role": "assistant", "content": "4", field: REASONING_MESSAGE[field]}


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_field_only_applies_to_assistant(field: Any) -> None:
    assert minimal({"role": "user", "content": "q", field: "x"}, field) == {"role": "user", "content": "q"}


def test_empty_reasoning_not_replayed() -> None:
    assert minimal({"role": "assistant", "content": "4", "reasoning": ""}, "reasoning") == {
        "role": "assistant",
        "content": "4",
    }


def test_minimal_is_idempotent() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "assistant", "content": None},
        {"role": "assistant", "content": "", "tool_calls": [{**TOOL_CALL, "index": 0}]},
        {"role": "tool", "tool_call_id": "c", "content": "x", "extra": 1},
        {"role": "user", "content": "u", "name": "n", "extra": 1},
    ]
    for message in messages:
        once = minimal(message)
        assert minimal(once) == once
        assert canonical(orjson.loads(canonical(message))) == canonical(message)


def test_canonical_is_orjson_of_minimal_with_stable_key_order() -> None:
    a = {"content": "x", "role": "user", "name": "n"}
    b = {"name": "n", "role": "user", "content": "x"}
    assert canonical(a) == canonical(b) == orjson.dumps(minimal(a))
    assert canonical(a) == b'{"role":"user","content":"x","name":"n"}'


# --- what a client echoes back matches what was recorded ---------------------------------------

COMPLETIONS: dict[str, dict[str, Any]] = {
    "text": {"role": "assistant", "content": "Hello! How can I help?", "refusal": None, "annotations": []},
    "tool_calls": {"role": "assistant", "content": None, "refusal": None, "tool_calls": [TOOL_CALL]},
    "refusal": {"role": "assistant", "content": None, "refusal": "I can't help with that."},
}


def completion(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1764000000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }


@pytest.mark.parametrize("kind", COMPLETIONS)
def test_sdk_echoed_assistant_message_canonicalizes_like_the_recorded_one(kind: str) -> None:
    body = completion(COMPLETIONS[kind])
    reply = reply_from_completion(body)
    assert reply is not None
    recorded = canonical(reply.message)  # what the proxy stores as the replay bytes

    sdk_message = ChatCompletion.model_validate(body).choices[0].message
    echoes = [
        sdk_message.model_dump(),
        sdk_message.model_dump(mode="json"),
        sdk_message.model_dump(exclude_unset=True),
        sdk_message.model_dump(exclude_none=True),
        ParsedChatCompletionMessage[Any].model_validate({**sdk_message.model_dump(), "parsed": None}).model_dump(),
    ]
    assert "refusal" in echoes[0]
    assert "audio" in echoes[0]
    assert "function_call" in echoes[0]
    assert "parsed" in echoes[-1]
    for echoed in echoes:
        assert canonical(echoed) == recorded, echoed


def test_sdk_streamed_tool_call_with_index_matches_recorded() -> None:
    recorded = canonical({"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]})
    echoed = {"role": "assistant", "content": "", "tool_calls": [{"index": 0, **TOOL_CALL}]}
    assert canonical(echoed) == recorded


# --- leading_system_count -----------------------------------------------------------------------


def test_leading_system_count() -> None:
    s, d, u = {"role": "system"}, {"role": "developer"}, {"role": "user"}
    assert leading_system_count([]) == 0
    assert leading_system_count([u, s]) == 0
    assert leading_system_count([s, d, u, s]) == 2
    assert leading_system_count([s, d]) == 2


# --- title_from ---------------------------------------------------------------------------------


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def test_title_short_message_is_whole() -> None:
    assert title_from([{"role": "system", "content": "be brief"}, user("What is 2+2?")]) == "What is 2+2?"


def test_title_collapses_whitespace() -> None:
    assert title_from([user("  What\n is\t2+2?  ")]) == "What is 2+2?"


def test_title_cut_at_word_boundary() -> None:
    text = "The quick brown fox jumps over the lazy dog and keeps running far away from here"
    title = title_from([user(text)])
    assert title == "The quick brown fox jumps over the lazy dog and keeps"
    assert title is not None
    assert len(title) <= 60
    assert text.startswith(title)
    assert text[len(title)] == " "


def test_title_exactly_sixty_characters_is_kept() -> None:
    text = "a" * 55 + " bcde"
    assert len(text) == 60
    assert title_from([user(text)]) == text


def test_title_word_ending_at_sixty_is_kept_whole() -> None:
    text = "a" * 54 + " bcdef more words"
    assert title_from([user(text)]) == "a" * 54 + " bcdef"


def test_title_single_long_word_is_hard_cut() -> None:
    assert title_from([user("x" * 100)]) == "x" * 60


@pytest.mark.parametrize("length", range(1, 140, 7))
def test_title_never_longer_than_sixty(length: int) -> None:
    words = ("lorem ipsum dolor sit amet consectetur " * 10)[:length]
    title = title_from([user(words)])
    assert title is not None
    assert 0 < len(title) <= 60
    assert " ".join(words.split()).startswith(title)


def test_title_from_content_parts() -> None:
    parts = [
        {"type": "text", "text": "Describe"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "text", "text": "this picture"},
    ]
    assert title_from([user(parts)]) == "Describe this picture"


def test_title_uses_first_user_message() -> None:
    messages = [{"role": "assistant", "content": "Hi there"}, user("first question"), user("second question")]
    assert title_from(messages) == "first question"


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "system", "content": "be brief"}],
        [{"role": "assistant", "content": "hello"}, {"role": "tool", "tool_call_id": "c", "content": "x"}],
        [user("   ")],
        [user([{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}])],
        [user(None)],
    ],
)
def test_title_none_without_user_text(messages: list[dict[str, Any]]) -> None:
    assert title_from(messages) is None


# --- validate_messages --------------------------------------------------------------------------


def test_validate_messages_returns_the_list() -> None:
    messages = [{"role": "user", "content": "hi"}]
    assert validate_messages(messages) is messages
    assert validate_messages([]) == []


@pytest.mark.parametrize("value", [None, "hi", {"role": "user"}, 3])
def test_validate_messages_not_a_list(value: object) -> None:
    with pytest.raises(ClientError) as info:
        validate_messages(value)
    assert info.value.status == 400
    assert info.value.param == "messages"


@pytest.mark.parametrize(
    ("bad", "index"),
    [("hello", 0), ({"content": "no role"}, 1), ({"role": 5}, 2), ({"role": None}, 1), (["role", "user"], 2)],
)
def test_validate_messages_names_the_bad_index(bad: object, index: int) -> None:
    messages: list[object] = [{"role": "user", "content": "ok"}] * index + [bad, {"role": "user", "content": "ok"}]
    with pytest.raises(ClientError) as info:
        validate_messages(messages)
    assert info.value.status == 400
    assert info.value.type == "invalid_request_error"
    assert info.value.param == f"messages[{index}]"
    assert f"messages[{index}]" in info.value.message


@pytest.mark.parametrize("tool_calls", [5, True, "call", [1], [{"id": "c"}, None]])
def test_tool_calls_that_are_not_an_array_of_objects_are_a_400_naming_them(tool_calls: object) -> None:
    with pytest.raises(ClientError) as caught:
        validate_messages([{"role": "assistant", "content": None, "tool_calls": tool_calls}])
    assert caught.value.status == 400
    assert caught.value.param == "messages[0].tool_calls"

"""The export line format (backup.py): what the API shows of a session, plus what it leaves out, read back exactly."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from statefulproxy.asgi.api_models import message_object, session_object
from statefulproxy.backup import export_line, parse_line
from statefulproxy.stores.base import ExpiresAfter, SessionLimits, SessionRecord, StoredMessage


def stored(replay: dict[str, Any], info: dict[str, Any]) -> StoredMessage:
    return StoredMessage(orjson.dumps(replay), orjson.dumps(info))


MESSAGES = [
    stored({"role": "system", "content": "be brief"}, {"id": "msg_1", "created_at": 10}),
    stored(
        {"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "ada"},
        {"id": "msg_2", "created_at": 11, "native": {"anthropic": {"cache_control": {"type": "ephemeral"}}}},
    ),
    stored(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            "reasoning_content": "Use f.",
        },
        {
            "id": "msg_3",
            "created_at": 12,
            "reasoning": "Use f.",
            "usage": {"prompt_tokens": 3},
            "finish_reason": "tool_calls",
            "model": "deepseek-chat",
            "native": {"gemini": [{"thoughtSignature": "c2ln"}]},
        },
    ),
    stored({"role": "tool", "tool_call_id": "c1", "content": "42"}, {"id": "msg_4", "created_at": 13}),
    stored(
        {"role": "assistant", "content": ""},
        {"id": "msg_5", "created_at": 14, "refusal": "No.", "reasoning": "", "finish_reason": "stop"},
    ),
    stored({"role": "user", "content": "again"}, {"id": "msg_6", "created_at": 15, "metadata": {"page": 2}}),
]
RECORD = SessionRecord(
    id="ticket-42",
    status="ended",
    title="Support",
    message_count=len(MESSAGES),
    created_at=100,
    last_active_at=200,
    expires_at=300,
    metadata={"team": "blue"},
    usage={"prompt_tokens": 3, "completion_tokens": 9},
    expires_after=ExpiresAfter("last_active_at", 100),
    limits=SessionLimits(5, 50),
    request_count=3,
    history_window=(10, 0),
    namespace="/document/d1",
)


def test_a_line_is_the_api_objects_plus_what_they_leave_out() -> None:
    line = orjson.loads(export_line(RECORD, MESSAGES))
    shown = {key: value for key, value in line.items() if key not in ("messages", "stored")}
    assert shown == session_object(RECORD)
    assert line["messages"] == [message_object(message) for message in MESSAGES]
    assert line["stored"][0] == {}
    assert line["stored"][2] == {
        "info": {
            "usage": {"prompt_tokens": 3},
            "finish_reason": "tool_calls",
            "model": "deepseek-chat",
            "native": {"gemini": [{"thoughtSignature": "c2ln"}]},
        },
        "replay": {"reasoning_content": "Use f."},
    }
    assert line["stored"][4] == {"info": {"reasoning": "", "finish_reason": "stop"}}


def test_reading_a_line_back_gives_the_same_session_and_bytes() -> None:
    session = parse_line(export_line(RECORD, MESSAGES))
    assert session.record == RECORD
    assert session.leading_system == 1
    assert [message.replay for message in session.messages] == [message.replay for message in MESSAGES]
    assert [orjson.loads(m.info) for m in session.messages] == [orjson.loads(m.info) for m in MESSAGES]
    assert [m.info for m in session.messages][:5] == [m.info for m in MESSAGES][:5]  # key order too
    assert export_line(session.record, session.messages) == export_line(RECORD, MESSAGES)


def test_a_line_without_stored_is_read_from_the_api_objects() -> None:
    line = orjson.loads(export_line(RECORD, MESSAGES[:2]))
    line.pop("stored")
    line["message_count"] = 2
    session = parse_line(orjson.dumps(line))
    assert [message_object(message) for message in session.messages] == line["messages"]
    assert session.messages[0].replay == MESSAGES[0].replay


def broken(change: dict[str, Any]) -> bytes:
    line = orjson.loads(export_line(RECORD, MESSAGES))
    line.update(change)
    return orjson.dumps(line)


def with_message(index: int, **fields: Any) -> dict[str, Any]:
    messages = orjson.loads(export_line(RECORD, MESSAGES))["messages"]
    messages[index] = {**messages[index], **fields}
    return {"messages": messages}


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"{", "not valid JSON"),
        (b"[]", 'not a session object (no "object": "session")'),
        (broken({"id": "no spaces"}), "'id' must be a session id"),
        (broken({"status": "gone"}), "'status' must be active, ended or expired"),
        (broken({"expires_at": 301}), "'expires_at' must be 300, its last_active_at + seconds"),
        (broken({"expires_after": None}), "'expires_at' must be null without 'expires_after'"),
        (broken({"metadata": {"n": 1}}), "'metadata' must be an object of strings"),
        (broken({"usage": {"n": "1"}}), "'usage' must be an object of integers"),
        (broken({"request_count": -1}), "'request_count' must be an integer of at least 0"),
        (broken({"namespace": ""}), "'namespace' must be a path or null"),
        (broken({"message_count": 5}), "'messages' must be a list of the session's 5 messages"),
        (broken({"stored": [{}]}), "'stored' must have one entry for each message"),
        (broken(with_message(0, id='msg_"1')), "messages[0].id must be a message id"),
        (broken(with_message(1, colour="red")), "messages[1] is not a message the proxy stores (unexpected colour)"),
        (
            broken(with_message(3, object="thing")),
            'messages[3] is not a message object (no "object": "session.message")',
        ),
        (broken(with_message(2, created_at="noon")), "'messages[2].created_at' must be an integer of at least 0"),
    ],
)
def test_a_bad_line_says_what_is_wrong(raw: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(error)}"):
        parse_line(raw)

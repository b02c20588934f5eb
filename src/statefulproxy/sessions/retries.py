"""Retries that must not record a turn twice (sans-I/O).

An SDK that lost the answer to a turn the proxy recorded sends the same request again
(``x-stainless-retry-count`` > 0). Appending it would put the turn in the history twice;
answering it from the history gives the client the reply it missed, with no upstream call.
A repeated message without the retry header is a new turn ("yes", "yes") and is recorded.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any

import orjson

from ..types import Headers
from .splice import TurnPlan

RETRY_HEADER = b"x-stainless-retry-count"


def is_retry(headers: Headers) -> bool:
    for name, value in headers:
        if name.lower() == RETRY_HEADER:
            return value.strip() not in (b"", b"0")
    return False


def recorded_reply(stored: Sequence[bytes], plan: TurnPlan) -> dict[str, Any] | None:
    """The assistant message recorded for this very request, if it was the last turn."""
    if len(stored) < 2 or plan.head:
        return None
    sent = plan.tail
    if plan.mode == "resume" and sent and list(stored[-len(sent) - 1 : -1]) == sent:
        pass  # the new messages are the last recorded ones
    elif plan.mode == "replace" and list(stored[:-1]) == sent:
        pass  # a full-array client resending the transcript up to the lost answer
    else:
        return None
    last: dict[str, Any] = orjson.loads(stored[-1])
    return last if last.get("role") == "assistant" else None


def completion_body(message: dict[str, Any], model: object, session_id: str) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-" + secrets.token_hex(12),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model if isinstance(model, str) else "",
            "choices": [{"index": 0, "message": message, "finish_reason": _finish_reason(message)}],
            "metadata": {"session_id": session_id},
        }
    )


def completion_stream(message: dict[str, Any], model: object) -> bytes:
    """The recorded message as one chat.completion.chunk stream, ``[DONE]`` included."""
    base = {
        "id": "chatcmpl-" + secrets.token_hex(12),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model if isinstance(model, str) else "",
    }
    delta: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        delta["tool_calls"] = [{"index": index, **call} for index, call in enumerate(message["tool_calls"])]
    chunks = [
        {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": _finish_reason(message)}]},
    ]
    return b"".join(b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks) + b"data: [DONE]\n\n"


def _finish_reason(message: dict[str, Any]) -> str:
    return "tool_calls" if message.get("tool_calls") else "stop"

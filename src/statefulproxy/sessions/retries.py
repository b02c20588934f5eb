"""Retries that must not record a turn twice (sans-I/O).

An SDK that lost the answer to a turn the proxy recorded sends the same request again
(``x-stainless-retry-count`` > 0). Appending it would put the turn in the history twice;
answering it from the history gives the client the reply it missed, with no upstream call.
A repeated message without the retry header is a new turn ("yes", "yes") and is recorded.
"""

from __future__ import annotations

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

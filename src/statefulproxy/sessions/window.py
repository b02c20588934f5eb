"""The history window: which suffix of a session's stored conversation is spliced upstream.

CONTRACT.md section 3: ``max_messages`` and ``max_tokens`` (``0``: no limit) limit what is sent,
never what is stored. The caller keeps the leading system/developer messages out of the count and
always sends them; the window itself starts at a user message, so an assistant tool call is never
separated from its tool results (they all follow the user message that led to them).

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

# notes/providers.md: a chars/4 estimate is the default for budget trimming (never tiktoken)
_BYTES_PER_TOKEN = 4


def window_start(roles: Sequence[str], tokens: Sequence[int], max_messages: int, max_tokens: int) -> int:
    """The index of the first conversation message to send: the longest suffix that starts at a user
    message and holds at most max_messages messages and max_tokens tokens (0: no limit).

    ``roles[i]`` and ``tokens[i]`` describe message ``i``; ``tokens`` is read only when ``max_tokens``
    is set. Returns ``len(roles)`` (send none of the history) when no user-started suffix fits.
    """
    if max_messages < 0 or max_tokens < 0:
        raise ValueError(f"history window limits must be >= 0, got {max_messages=} {max_tokens=}")
    if not max_messages and not max_tokens:
        return 0
    count = len(roles)
    if max_tokens and len(tokens) != count:
        raise ValueError(f"{len(tokens)} token counts for {count} messages")
    # Both totals only grow as the suffix lengthens, so the first suffix over a limit ends the search.
    start = count
    taken_tokens = 0
    lowest = count - max_messages if max_messages else 0
    for index in range(count - 1, max(lowest, 0) - 1, -1):
        if max_tokens:
            taken_tokens += tokens[index]
            if taken_tokens > max_tokens:
                break
        if roles[index] == "user":
            start = index
    return start


def message_tokens(replay: bytes, info: bytes) -> int:
    """Tokens one stored message counts for. `replay` is the compact JSON of the canonical message,
    `info` compact JSON of what the proxy keeps beside it (may hold "usage": {"completion_tokens": N, ...}
    for an assistant reply). The upstream's reported completion_tokens are used when info has them,
    else ceil(len(replay) / 4) (a chars/4 estimate, as notes/providers.md says). At least 1."""
    if b'"usage"' in info:
        reported = _reported_completion_tokens(info)
        if reported is not None:
            return max(reported, 1)
    return max(-(-len(replay) // _BYTES_PER_TOKEN), 1)


def _reported_completion_tokens(info: bytes) -> int | None:
    try:
        parsed = orjson.loads(info)
    except orjson.JSONDecodeError:
        return None
    usage = parsed.get("usage") if isinstance(parsed, dict) else None
    completion_tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    # bool is an int subclass: true is not a count
    if isinstance(completion_tokens, int) and not isinstance(completion_tokens, bool):
        return completion_tokens
    return None

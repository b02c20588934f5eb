from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from statefulproxy.sessions.window import message_tokens, window_start

Message = dict[str, Any]

USER = "user"
ASSISTANT = "assistant"
TOOL = "tool"

# user, a three-call tool chain, the final answer, then a short exchange
TOOL_CHAIN = [USER, ASSISTANT, TOOL, TOOL, TOOL, ASSISTANT, USER, ASSISTANT]


def ones(roles: list[str]) -> list[int]:
    return [1] * len(roles)


def start_by_messages(roles: list[str], max_messages: int) -> int:
    return window_start(roles, ones(roles), max_messages, 0)


def test_no_limits_sends_everything() -> None:
    assert window_start(TOOL_CHAIN, ones(TOOL_CHAIN), 0, 0) == 0
    # even when the history starts at a message the window never would
    assert window_start([ASSISTANT, TOOL, USER], [], 0, 0) == 0


def test_zero_max_messages_leaves_only_the_token_limit() -> None:
    roles = [USER, ASSISTANT] * 50
    assert window_start(roles, ones(roles), 0, 100) == 0
    assert window_start(roles, ones(roles), 0, 4) == 96


def test_zero_max_tokens_leaves_only_the_message_limit() -> None:
    roles = [USER, ASSISTANT] * 50
    assert window_start(roles, [10_000] * 100, 100, 0) == 0
    assert window_start(roles, [10_000] * 100, 4, 0) == 96


def test_tokens_are_not_read_without_a_token_limit() -> None:
    assert window_start([USER, ASSISTANT, USER, ASSISTANT], [], 2, 0) == 2


def test_suffix_of_exactly_max_messages_fits() -> None:
    roles = [USER, ASSISTANT, USER, ASSISTANT, USER, ASSISTANT]
    assert start_by_messages(roles, 4) == 2
    assert start_by_messages(roles, 3) == 4
    assert start_by_messages(roles, 6) == 0
    assert start_by_messages(roles, 7) == 0


def test_suffix_of_exactly_max_tokens_fits() -> None:
    roles = [USER, ASSISTANT, USER, ASSISTANT]
    tokens = [5, 7, 11, 13]
    assert window_start(roles, tokens, 0, 24) == 2
    assert window_start(roles, tokens, 0, 23) == 4
    assert window_start(roles, tokens, 0, 36) == 0
    assert window_start(roles, tokens, 0, 35) == 2


def test_both_limits_apply_and_the_tighter_wins() -> None:
    roles = [USER, ASSISTANT, USER, ASSISTANT, USER, ASSISTANT]
    tokens = [1, 1, 1, 1, 50, 50]
    assert window_start(roles, tokens, 4, 1000) == 2
    assert window_start(roles, tokens, 6, 100) == 4
    assert window_start(roles, tokens, 2, 99) == 6


def test_start_is_always_a_user_message() -> None:
    roles = [USER, ASSISTANT, TOOL, ASSISTANT, "system", ASSISTANT, USER, ASSISTANT, TOOL, ASSISTANT]
    for max_messages in range(1, len(roles) + 2):
        start = start_by_messages(roles, max_messages)
        assert start == len(roles) or roles[start] == USER, max_messages


def test_tool_chain_that_does_not_fit_is_dropped_whole() -> None:
    # the last 7 messages would start inside the tool chain: the window skips to the next user message
    for max_messages in range(2, len(TOOL_CHAIN)):
        assert start_by_messages(TOOL_CHAIN, max_messages) == 6, max_messages
    assert start_by_messages(TOOL_CHAIN, len(TOOL_CHAIN)) == 0


def test_tool_chain_dropped_whole_by_the_token_limit() -> None:
    tokens = [3, 40, 500, 500, 500, 60, 4, 6]
    assert window_start(TOOL_CHAIN, tokens, 0, 1612) == 6
    assert window_start(TOOL_CHAIN, tokens, 0, 1613) == 0


def test_never_starts_at_a_tool_or_assistant_message_even_when_it_would_fit() -> None:
    assert start_by_messages([USER, ASSISTANT, TOOL, ASSISTANT], 3) == 4
    assert window_start([USER, ASSISTANT, TOOL, ASSISTANT], [100, 1, 1, 1], 0, 3) == 4


def test_nothing_fits_sends_no_history() -> None:
    roles = [USER, ASSISTANT]
    assert start_by_messages(roles, 1) == 2
    assert window_start(roles, [5, 5], 0, 9) == 2
    assert window_start([USER], [10], 0, 9) == 1
    # a trailing user message alone fits
    assert window_start([USER, ASSISTANT, USER], [5, 5, 5], 0, 9) == 2


def test_empty_history() -> None:
    assert window_start([], [], 3, 3) == 0
    assert window_start([], [], 0, 0) == 0


def test_history_without_user_messages_sends_nothing() -> None:
    assert window_start([ASSISTANT, TOOL, ASSISTANT], [1, 1, 1], 10, 10) == 3


def test_negative_limits_are_rejected() -> None:
    with pytest.raises(ValueError, match="max_messages=-1"):
        window_start([USER], [1], -1, 0)
    with pytest.raises(ValueError, match="max_tokens=-1"):
        window_start([USER], [1], 0, -1)


def test_mismatched_token_counts_are_rejected() -> None:
    with pytest.raises(ValueError, match="1 token counts for 2 messages"):
        window_start([USER, ASSISTANT], [1], 0, 10)


ROLES = st.sampled_from(["user", "assistant", "tool", "system", "developer"])


@given(
    messages=st.lists(st.tuples(ROLES, st.integers(min_value=1, max_value=50)), max_size=40),
    max_messages=st.integers(min_value=0, max_value=45),
    max_tokens=st.integers(min_value=0, max_value=600),
)
def test_window_is_the_longest_user_started_suffix_within_both_limits(
    messages: list[tuple[str, int]], max_messages: int, max_tokens: int
) -> None:
    roles = [role for role, _ in messages]
    tokens = [count for _, count in messages]

    def fits(start: int) -> bool:
        return (not max_messages or len(roles) - start <= max_messages) and (
            not max_tokens or sum(tokens[start:]) <= max_tokens
        )

    start = window_start(roles, tokens, max_messages, max_tokens)

    if not max_messages and not max_tokens:
        assert start == 0
        return
    assert start == len(roles) or roles[start] == USER
    assert fits(start)
    longer_user_starts = [index for index in range(start) if roles[index] == USER]
    assert not any(fits(index) for index in longer_user_starts)


def info_with(**extra: Any) -> bytes:
    return orjson.dumps({"id": "m1", "created_at": 1700000000, **extra})


def test_reported_completion_tokens_are_used() -> None:
    replay = orjson.dumps({"role": "assistant", "content": "x" * 400})
    info = info_with(usage={"prompt_tokens": 900, "completion_tokens": 17, "total_tokens": 917})
    assert message_tokens(replay, info) == 17


def test_estimate_is_bytes_over_four_rounded_up() -> None:
    replay = orjson.dumps({"role": "user", "content": "hello there!"})
    assert len(replay) == 40
    assert message_tokens(replay, info_with()) == 10
    assert message_tokens(replay + b" ", info_with()) == 11
    assert message_tokens(replay[:39], info_with()) == 10


def test_estimate_counts_bytes_not_characters() -> None:
    replay = orjson.dumps({"role": "user", "content": "é" * 20})
    assert message_tokens(replay, info_with()) == -(-len(replay) // 4)
    assert len(replay) > 20 + len(b'{"role":"user","content":""}')


def test_at_least_one_token() -> None:
    assert message_tokens(b"", b"{}") == 1
    assert message_tokens(b"{}", b"{}") == 1
    assert message_tokens(b"{}", info_with(usage={"completion_tokens": 0})) == 1


@pytest.mark.parametrize(
    "info",
    [
        info_with(usage={"prompt_tokens": 3}),
        info_with(usage={"completion_tokens": "12"}),
        info_with(usage={"completion_tokens": True}),
        info_with(usage={"completion_tokens": 1.5}),
        info_with(usage=None),
        info_with(usage=[1, 2]),
        info_with(title='has "usage" in a string'),
        b'{"usage": not json',
        b'["usage"]',
    ],
)
def test_unusable_usage_falls_back_to_the_estimate(info: bytes) -> None:
    replay = orjson.dumps({"role": "assistant", "content": "a" * 100})
    assert message_tokens(replay, info) == -(-len(replay) // 4)


def test_counts_feed_the_window() -> None:
    stored = [
        (orjson.dumps({"role": "user", "content": "q" * 36}), info_with()),
        (orjson.dumps({"role": "assistant", "content": "a" * 800}), info_with(usage={"completion_tokens": 9})),
        (orjson.dumps({"role": "user", "content": "next"}), info_with()),
    ]
    roles = [orjson.loads(replay)["role"] for replay, _ in stored]
    tokens = [message_tokens(replay, info) for replay, info in stored]
    assert tokens == [16, 9, 8]
    assert window_start(roles, tokens, 0, 33) == 0
    assert window_start(roles, tokens, 0, 32) == 2

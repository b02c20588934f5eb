from __future__ import annotations

from typing import Any

import orjson
from hypothesis import assume, given
from hypothesis import strategies as st

from statefulproxy.sessions.messages import canonical, leading_system_count, minimal
from statefulproxy.sessions.splice import TurnPlan, plan_turn
from statefulproxy.stores.base import DROP_ALL

Message = dict[str, Any]

SYSTEM: Message = {"role": "system", "content": "You are terse."}
SYSTEM_2: Message = {"role": "system", "content": "You are verbose."}
DEVELOPER: Message = {"role": "developer", "content": "Answer in French."}
U1: Message = {"role": "user", "content": "What is 2+2?"}
A1: Message = {"role": "assistant", "content": "4"}
U2: Message = {"role": "user", "content": "And 3+3?"}
A2: Message = {"role": "assistant", "content": "6"}
U3: Message = {"role": "user", "content": "Thanks"}
CALL: Message = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a":3,"b":3}'}}],
}
RESULT: Message = {"role": "tool", "tool_call_id": "call_1", "content": "6"}


def stored(*messages: Message) -> list[bytes]:
    return [canonical(message) for message in messages]


def canon(*messages: Message) -> list[bytes]:
    return [canonical(message) for message in messages]


def forwarded(plan: TurnPlan) -> list[Message]:
    """The outgoing ``messages`` array, parsed the way chat.py builds it."""
    assert plan.forward is not None
    value = orjson.loads(b"[" + b",".join(plan.forward) + b"]")
    assert isinstance(value, list)
    return value


def plan(history: list[Message], sent: list[Message], reasoning_field: Any = "none") -> TurnPlan:
    replay = [canonical(message, reasoning_field) for message in history]
    return plan_turn(replay, leading_system_count(history), sent, reasoning_field)


def sdk_echo(message: Message) -> Message:
    """An assistant message as an SDK hands it back (openai's ChatCompletionMessage.model_dump())."""
    echoed = {**message, "refusal": None, "annotations": [], "audio": None, "function_call": None}
    if "tool_calls" in message:
        echoed["tool_calls"] = [{**call, "index": i} for i, call in enumerate(message["tool_calls"])]
    return echoed


# --- new ----------------------------------------------------------------------------------------


def test_new_session_records_everything_and_forwards_as_sent() -> None:
    sent = [SYSTEM, DEVELOPER, U1]
    result = plan_turn([], 0, sent)
    assert result == TurnPlan("new", None, [], canon(*sent), 0, 2)


def test_new_session_tail_is_canonical() -> None:
    sent = [U1, sdk_echo(A1), U2]
    result = plan_turn([], 0, sent)
    assert result.mode == "new"
    assert result.tail == canon(U1, A1, U2)
    assert result.tail_leading_system == 0


# --- full_array ---------------------------------------------------------------------------------


def test_full_array_records_only_the_tail() -> None:
    result = plan([SYSTEM, U1, A1], [SYSTEM, U1, A1, U2])
    assert result == TurnPlan("full_array", None, [], canon(U2), 0, 0, tail_start=3)


def test_full_array_equal_length_records_nothing_new() -> None:
    result = plan([SYSTEM, U1, A1, U2], [SYSTEM, U1, A1, U2])
    assert result == TurnPlan("full_array", None, [], [], 0, 0, tail_start=4)


def test_full_array_with_sdk_echoed_assistant_is_still_a_prefix() -> None:
    history = [SYSTEM, U1, CALL, RESULT, A2]
    sent = [SYSTEM, U1, sdk_echo(CALL), RESULT, sdk_echo(A2), U3]
    result = plan(history, sent)
    assert result.mode == "full_array"
    assert result.forward is None
    assert result.tail == canon(U3)
    assert result.drop_leading == 0
    assert result.head == []


def test_full_array_empty_string_content_beside_tool_calls_matches_null() -> None:
    result = plan([U1, CALL], [U1, {**CALL, "content": ""}, RESULT])
    assert result.mode == "full_array"
    assert result.tail == canon(RESULT)


def test_full_array_tail_with_tools_and_leading_system() -> None:
    result = plan([U1, A1], [U1, A1, DEVELOPER, SYSTEM, U2, CALL, RESULT])
    assert result.mode == "full_array"
    assert result.tail == canon(DEVELOPER, SYSTEM, U2, CALL, RESULT)
    assert result.tail_leading_system == 2
    assert result.tail_start == 2


def test_resume_window_skips_conversation_messages_but_keeps_system() -> None:
    result = plan_turn(canon(SYSTEM, U1, A1, U2, A2), 1, [U3], skip=2)
    assert result.mode == "resume"
    assert result.forward == [*canon(SYSTEM, U2, A2), orjson.dumps(U3)]
    assert result.tail == canon(U3)
    assert result.tail_start == 0


def test_resume_without_forward_lays_nothing_out() -> None:
    result = plan_turn(canon(SYSTEM, U1, A1), 1, [DEVELOPER, U2], forward=False)
    assert result.mode == "resume"
    assert result.forward is None
    assert result.head == canon(DEVELOPER)
    assert result.tail == canon(U2)
    assert result.tail_start == 1


def test_full_array_history_of_only_system_messages() -> None:
    result = plan([SYSTEM], [SYSTEM, U1])
    assert result == TurnPlan("full_array", None, [], canon(U1), 0, 0, tail_start=1)


def test_full_array_with_reasoning_replayed() -> None:
    thought = {**A1, "reasoning_content": "2+2 is 4"}
    result = plan([U1, thought], [U1, sdk_echo(thought), U2], "reasoning_content")
    assert result.mode == "full_array"
    assert result.tail == [canonical(U2, "reasoning_content")]


# --- resume -------------------------------------------------------------------------------------


def test_resume_no_assistant_sent_forwards_stored_then_sent() -> None:
    result = plan([SYSTEM, U1, A1], [U2])
    assert result.mode == "resume"
    assert forwarded(result) == [SYSTEM, U1, A1, U2]
    assert result.head == []
    assert result.drop_leading == 0
    assert result.tail == canon(U2)
    assert result.tail_leading_system == 0


def test_resume_forwards_stored_history_in_its_minimal_form() -> None:
    result = plan([U1, sdk_echo(CALL), RESULT, {**A2, "refusal": None}], [U2])
    assert forwarded(result) == [U1, CALL, RESULT, A2, U2]


def test_resume_forwards_sent_messages_as_sent() -> None:
    sent = {**U2, "name": "bob", "cache_control": {"type": "ephemeral"}}
    result = plan([U1, A1], [sent])
    assert forwarded(result) == [U1, A1, sent]
    assert result.tail == canon(sent)
    assert orjson.loads(result.tail[0]) == {"role": "user", "content": "And 3+3?", "name": "bob"}


def test_resume_tool_result_after_stored_tool_call() -> None:
    result = plan([U1, CALL], [RESULT])
    assert result.mode == "resume"
    assert forwarded(result) == [U1, CALL, RESULT]
    assert result.tail == canon(RESULT)


def test_resume_same_system_prompt_is_not_repeated() -> None:
    result = plan([SYSTEM, U1, A1], [SYSTEM, U2])
    assert result.mode == "resume"
    assert forwarded(result) == [SYSTEM, U1, A1, U2]
    assert result.head == []
    assert result.drop_leading == 0
    assert result.tail == canon(U2)


def test_resume_same_system_prompt_with_extra_fields_is_not_repeated() -> None:
    result = plan([SYSTEM, U1, A1], [{**SYSTEM, "id": "whatever", "name": None}, U2])
    assert forwarded(result) == [SYSTEM, U1, A1, U2]
    assert result.drop_leading == 0


def test_resume_changed_system_prompt_replaces_the_stored_one() -> None:
    result = plan([SYSTEM, U1, A1], [SYSTEM_2, U2])
    assert result.mode == "resume"
    assert forwarded(result) == [SYSTEM_2, U1, A1, U2]
    assert result.head == canon(SYSTEM_2)
    assert result.drop_leading == 1
    assert result.tail == canon(U2)
    assert result.tail_leading_system == 0


def test_resume_developer_replaces_system() -> None:
    result = plan([SYSTEM, U1, A1], [DEVELOPER, U2])
    assert forwarded(result) == [DEVELOPER, U1, A1, U2]
    assert result.head == canon(DEVELOPER)
    assert result.drop_leading == 1


def test_resume_replaces_all_stored_leading_system_messages() -> None:
    result = plan([SYSTEM, DEVELOPER, U1, A1], [SYSTEM_2, U2])
    assert forwarded(result) == [SYSTEM_2, U1, A1, U2]
    assert result.head == canon(SYSTEM_2)
    assert result.drop_leading == 2


def test_resume_subset_of_stored_system_messages_is_a_change() -> None:
    result = plan([SYSTEM, DEVELOPER, U1, A1], [SYSTEM, U2])
    assert forwarded(result) == [SYSTEM, U1, A1, U2]
    assert result.head == canon(SYSTEM)
    assert result.drop_leading == 2


def test_resume_several_system_messages_replace_one() -> None:
    result = plan([SYSTEM, U1, A1], [SYSTEM_2, DEVELOPER, U2])
    assert forwarded(result) == [SYSTEM_2, DEVELOPER, U1, A1, U2]
    assert result.head == canon(SYSTEM_2, DEVELOPER)
    assert result.drop_leading == 1


def test_resume_system_prompt_added_to_history_without_one() -> None:
    result = plan([U1, A1], [SYSTEM, U2])
    assert forwarded(result) == [SYSTEM, U1, A1, U2]
    assert result.head == canon(SYSTEM)
    assert result.drop_leading == 0


def test_resume_no_system_sent_keeps_the_stored_one() -> None:
    result = plan([SYSTEM, DEVELOPER, U1, A1], [U2])
    assert forwarded(result) == [SYSTEM, DEVELOPER, U1, A1, U2]
    assert result.head == []
    assert result.drop_leading == 0


def test_resume_system_message_after_user_is_not_a_replacement() -> None:
    result = plan([SYSTEM, U1, A1], [U2, SYSTEM_2])
    assert forwarded(result) == [SYSTEM, U1, A1, U2, SYSTEM_2]
    assert result.head == []
    assert result.tail == canon(U2, SYSTEM_2)
    assert result.tail_leading_system == 0


def test_resume_history_of_only_system_messages() -> None:
    result = plan([SYSTEM], [U1])
    assert result.mode == "resume"
    assert forwarded(result) == [SYSTEM, U1]
    assert result.head == []
    assert result.tail == canon(U1)

    changed = plan([SYSTEM], [SYSTEM_2, U1])
    assert changed.mode == "resume"
    assert forwarded(changed) == [SYSTEM_2, U1]
    assert changed.head == canon(SYSTEM_2)
    assert changed.drop_leading == 1


def test_resume_only_a_system_message_sent() -> None:
    result = plan([SYSTEM, U1, A1], [SYSTEM_2])
    assert forwarded(result) == [SYSTEM_2, U1, A1]
    assert result.head == canon(SYSTEM_2)
    assert result.drop_leading == 1
    assert result.tail == []


def test_resume_resent_first_user_message_is_appended() -> None:
    # the stored history [U1, A1] is not a prefix of [U1], and no assistant was sent: resume
    result = plan([U1, A1], [U1])
    assert result.mode == "resume"
    assert forwarded(result) == [U1, A1, U1]


# --- replace ------------------------------------------------------------------------------------


def test_replace_when_assistant_messages_diverge() -> None:
    sent = [SYSTEM, U1, {"role": "assistant", "content": "five"}, U2]
    result = plan([SYSTEM, U1, A1], sent)
    assert result == TurnPlan("replace", None, [], canon(*sent), DROP_ALL, 1)


def test_replace_shorter_array_with_assistant() -> None:
    sent = [U1, A1, U3]
    result = plan([SYSTEM, U1, A1, U2, A2], sent)
    assert result.mode == "replace"
    assert result.forward is None
    assert result.tail == canon(*sent)
    assert result.drop_leading == DROP_ALL
    assert result.tail_leading_system == 0


def test_replace_when_an_earlier_message_diverges() -> None:
    sent = [SYSTEM_2, DEVELOPER, U1, A1, U2]
    result = plan([SYSTEM, U1, A1], sent)
    assert result.mode == "replace"
    assert result.tail == canon(*sent)
    assert result.tail_leading_system == 2


def test_echo_without_the_replayed_reasoning_is_still_a_prefix() -> None:
    thought = {**A1, "reasoning_content": "2+2 is 4"}
    result = plan([U1, thought], [U1, A1, U2], "reasoning_content")
    assert result.mode == "full_array"
    assert result.tail == [canonical(U2, "reasoning_content")]


def test_reasoning_never_decides_whether_messages_are_the_same() -> None:
    thought = {**A1, "reasoning_content": "2+2 is 4"}
    other = {**A1, "reasoning_content": "something else"}
    assert plan([U1, thought], [U1, other, U2], "reasoning_content").mode == "full_array"
    changed = {**A1, "content": "5", "reasoning_content": "2+2 is 4"}
    assert plan([U1, thought], [U1, changed, U2], "reasoning_content").mode == "replace"


# --- properties ---------------------------------------------------------------------------------

TEXT = st.text(max_size=12)
CONTENT = st.one_of(
    st.none(), TEXT, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), max_size=2)
)
JUNK = st.dictionaries(
    st.sampled_from(["id", "created_at", "refusal", "annotations", "audio", "function_call", "parsed", "extra"]),
    st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), TEXT),  # what orjson.loads can produce
    max_size=3,
)
TOOL_CALLS = st.lists(
    st.fixed_dictionaries(
        {"id": TEXT, "type": st.just("function"), "function": st.fixed_dictionaries({"name": TEXT, "arguments": TEXT})},
        optional={"index": st.integers(0, 3)},
    ),
    max_size=2,
)


def _with(base: st.SearchStrategy[Message]) -> st.SearchStrategy[Message]:
    return st.builds(lambda junk, message: {**junk, **message}, JUNK, base)


PLAIN = _with(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "user"]), "content": CONTENT}, optional={"name": TEXT}
    )
)
ASSISTANT = _with(
    st.fixed_dictionaries(
        {"role": st.just("assistant"), "content": CONTENT},
        optional={"tool_calls": TOOL_CALLS, "name": TEXT, "reasoning_content": TEXT, "reasoning": TEXT},
    )
)
TOOL = _with(st.fixed_dictionaries({"role": st.just("tool"), "tool_call_id": TEXT, "content": CONTENT}))
MESSAGE = st.one_of(PLAIN, ASSISTANT, TOOL)
REASONING_FIELD = st.sampled_from(["none", "reasoning_content", "reasoning"])


@given(st.lists(MESSAGE, min_size=1, max_size=6), st.lists(MESSAGE, max_size=4), REASONING_FIELD)
def test_full_array_never_duplicates_history(history: list[Message], new: list[Message], field: Any) -> None:
    replay = [canonical(message, field) for message in history]
    for echoed in (history, [orjson.loads(b) for b in replay], [minimal(m, field) for m in history]):
        result = plan_turn(replay, leading_system_count(history), [*echoed, *new], field)
        assert result.mode == "full_array"
        assert result.forward is None
        assert result.head == []
        assert result.drop_leading == 0
        assert result.tail == [canonical(message, field) for message in new]
        assert result.tail_leading_system == leading_system_count(new)


USER_OR_TOOL = st.one_of(_with(st.fixed_dictionaries({"role": st.just("user"), "content": CONTENT})), TOOL)


@given(st.lists(MESSAGE, min_size=1, max_size=6), st.lists(USER_OR_TOOL, max_size=4))
def test_resume_forwards_history_then_sent(history: list[Message], sent: list[Message]) -> None:
    replay = stored(*history)
    assume(not (len(sent) >= len(replay) and canon(*sent[: len(replay)]) == replay))
    result = plan_turn(replay, leading_system_count(history), sent)
    assert result.mode == "resume"
    assert forwarded(result) == [minimal(m) for m in history] + sent
    assert result.tail == canon(*sent)
    assert result.head == []
    assert result.drop_leading == 0

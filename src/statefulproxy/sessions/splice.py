"""The splice decision: what to send upstream and what to record, per CONTRACT.md section 4.

Given the stored history (as canonical replay bytes) and the messages a request sent:

- new        nothing stored: forward as sent, record them all;
- full_array the stored history is a prefix of what was sent (clients and coding agents
             that resend the transcript): forward as sent, record only the new tail;
- resume     no assistant message was sent: stored history + the sent messages, with
             sent leading system/developer messages replacing the stored leading ones;
- replace    assistant messages that diverge from the stored history: forward as sent,
             the sent array becomes the history.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from ..stores.base import DROP_ALL
from .messages import ReasoningField, canonical, leading_system_count

SpliceMode = Literal["new", "full_array", "resume", "replace"]


@dataclass(slots=True)  # not frozen: built on every turn, and a frozen one pays a setattr per field
class TurnPlan:
    mode: SpliceMode
    forward: list[bytes] | None  # serialized messages of the outgoing `messages` array; None: as sent
    head: list[bytes]  # canonical messages that replace the stored leading system ones
    tail: list[bytes]  # canonical messages appended (before the reply)
    drop_leading: int
    tail_leading_system: int
    tail_start: int = 0  # where the recorded tail starts among the sent messages (``head`` is their start)


def plan_turn(
    stored: Sequence[bytes],
    stored_leading_system: int,
    sent: Sequence[dict[str, Any]],
    reasoning_field: ReasoningField = "none",
    *,
    skip: int = 0,
    forward: bool = True,
) -> TurnPlan:
    """Decide how a turn is spliced and recorded. ``sent`` is already validated.

    ``skip`` conversation messages (after the stored leading system ones) are left out of a
    resumed turn's forward: the history window. Without ``forward`` the caller lays the
    forward out itself and ``forward`` stays None.
    """

    def canon(messages: Sequence[dict[str, Any]]) -> list[bytes]:
        return [canonical(message, reasoning_field) for message in messages]

    def as_sent(messages: Sequence[dict[str, Any]]) -> list[bytes]:
        return [orjson.dumps(message) for message in messages] if forward else []

    if not stored:
        return TurnPlan("new", None, [], canon(sent), 0, leading_system_count(sent), 0)

    if _is_prefix(stored, sent, reasoning_field):
        tail = sent[len(stored) :]
        return TurnPlan("full_array", None, [], canon(tail), 0, leading_system_count(tail), len(stored))

    if not any(message["role"] == "assistant" for message in sent):
        sent_lead = leading_system_count(sent)
        rest = sent[sent_lead:]
        head = canon(sent[:sent_lead])
        conversation = stored[stored_leading_system + skip :]
        if not head or head == list(stored[:stored_leading_system]):
            # no system prompt sent, or the same one again: keep the stored one
            head, drop = [], 0
            system = list(stored[:stored_leading_system])
        else:
            drop = stored_leading_system
            system = as_sent(sent[:sent_lead]) if forward else []
        laid_out = [*system, *conversation, *as_sent(rest)] if forward else None
        return TurnPlan("resume", laid_out, head, canon(rest), drop, leading_system_count(rest), sent_lead)

    return TurnPlan("replace", None, [], canon(sent), DROP_ALL, leading_system_count(sent), 0)


def _is_prefix(stored: Sequence[bytes], sent: Sequence[dict[str, Any]], reasoning_field: ReasoningField) -> bool:
    count = len(stored)
    if len(sent) < count:
        return False
    # the last stored message is the likeliest to differ: check it before the rest
    if not _same(stored[count - 1], sent[count - 1], reasoning_field):
        return False
    return all(_same(stored[i], sent[i], reasoning_field) for i in range(count - 1))


def _same(stored: bytes, sent: dict[str, Any], reasoning_field: ReasoningField) -> bool:
    if canonical(sent, reasoning_field) == stored:
        return True
    if reasoning_field == "none" or sent["role"] != "assistant":
        return False
    # Reasoning is stored in the replayed form, but clients often echo assistant messages
    # without it: the same message all the same.
    without = orjson.loads(stored)
    without.pop(reasoning_field, None)
    return canonical(sent, "none") == orjson.dumps(without)

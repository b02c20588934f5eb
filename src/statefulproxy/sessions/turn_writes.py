"""What one chat turn writes to the store: its messages, usage, title hint and new-session fields."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from ..dialects.base import AssistantReply
from ..stores.base import NewSession, StoredMessage, TurnWrite
from .messages import ReasoningField, canonical, title_from
from .splice import TurnPlan


def turn_write(
    plan: TurnPlan,
    reply: AssistantReply,
    sent: list[dict[str, Any]],
    parsed_metadata: object,
    *,
    create: bool,
    new_id: Callable[[], bytes],
    reasoning_field: ReasoningField,
    natives: Sequence[dict[str, Any] | None] = (),
    turn_metadata: dict[str, Any] | None = None,
    namespace: str | None = None,
    dialect: str | None = None,
    lease_token: str | None = None,
) -> TurnWrite:
    """The write of a turn: ``plan``'s messages, then ``reply``'s, whose stored message is last.

    ``natives`` runs beside ``sent``: what a dialect keeps of each sent message (dialects.base.Canonical).
    ``turn_metadata`` is kept beside the turn's first new message (the simple chat API's extra fields).
    ``dialect`` (the wire format the turn came in) is kept beside the reply, with its usage.
    """
    # info is built by hand: a turn writes several, on the hot path
    created_at = b'","created_at":' + str(int(time.time())).encode()

    def stored(replay: bytes, native: dict[str, Any] | None = None, metadata: Any = None) -> StoredMessage:
        info = b'{"id":"' + new_id() + created_at
        if native:
            info += b',"native":' + orjson.dumps(native)
        if metadata:
            info += b',"metadata":' + orjson.dumps(metadata)
        return StoredMessage(replay, info + b"}")

    def native_of(index: int) -> dict[str, Any] | None:
        return natives[index] if index < len(natives) else None

    message = reply.message
    if reply.reasoning and reasoning_field != "none":
        message = {**message, reasoning_field: reply.reasoning}
    extra: dict[str, Any] = {
        key: value
        for key, value in (
            ("refusal", reply.message.get("refusal")),
            ("reasoning", reply.reasoning),
            ("usage", reply.usage),
            ("finish_reason", reply.finish_reason),
            ("model", reply.model),
            ("dialect", dialect),
            ("native", reply.native),
        )
        if value is not None
    }
    head = [stored(replay, native_of(index)) for index, replay in enumerate(plan.head)]
    tail = [
        stored(replay, native_of(plan.tail_start + index), turn_metadata if index == 0 else None)
        for index, replay in enumerate(plan.tail)
    ]
    answer = stored(canonical(message, reasoning_field))  # ids in history order: the reply's is last
    if extra:
        answer = StoredMessage(answer.replay, answer.info[:-1] + b"," + orjson.dumps(extra)[1:])
    return TurnWrite(
        head=head,
        tail=[*tail, answer],
        drop_leading=plan.drop_leading,
        tail_leading_system=plan.tail_leading_system,
        usage=reply.usage or {},
        # a session with history has its title: only a new or empty one needs the hint
        title_hint=title_from(sent) if create or plan.mode == "new" else None,
        create=NewSession(metadata=session_metadata(parsed_metadata), namespace=namespace, request_count=1)
        if create
        else None,
        lease_token=lease_token,
    )


def session_metadata(metadata: object) -> dict[str, str]:
    """The string pairs of a request's ``metadata``, less the session id, within OpenAI's limits."""
    if not isinstance(metadata, dict):
        return {}
    pairs = [
        (key, value)
        for key, value in metadata.items()
        if key != "session_id" and isinstance(value, str) and len(key) <= 64 and len(value) <= 512
    ]
    return dict(pairs[:16])

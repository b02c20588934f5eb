"""The turn service: one chat turn on a session, from admission to commit, for any dialect.

It knows nothing of ASGI or HTTP. ``begin`` reads the session and takes its lease in one
store round trip (answering a kept Idempotency-Key reply or an SDK retry from the store
instead), admits the turn (ended, expired, over a limit), decides the splice and the
history window, and lays out the body to forward. The ``Turn`` it returns commits the
reply (releasing the lease in the same atomic step) or, on every other exit, releases the
lease. Background lease releases are the service's own tasks, drained by ``aclose``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..dialects.base import AssistantReply, Canonical, Dialect
from ..errors import ClientError, StoreError, session_not_found
from ..metrics import Metrics
from ..settings import Settings
from ..stores.base import DROP_ALL, IdempotentReply, SessionSnapshot, Store
from .idempotency import IdempotencyKey
from .identity import MINTED_PREFIX, mint_session_id
from .leases import GoneWithin, LeaseKeeper, TurnLease
from .messages import MessageIds, ReasoningField
from .retries import recorded_reply
from .splice import TurnPlan, plan_turn
from .turn_writes import turn_write
from .window import message_tokens, window_start

logger = logging.getLogger("statefulproxy")

_USER_PREFIX = b'{"role":"user"'  # a canonical message's bytes start with its role
_NATIVE = b'"native"'


@dataclass(slots=True)  # not frozen: a frozen dataclass pays a setattr call per field, on every turn
class TurnRequest:
    """One session chat request, parsed. Not changed once built."""

    dialect: Dialect
    owner: str
    session_id: str | None  # None: a new session (store: true without an id)
    record: bool  # False: store: false, the history is spliced but nothing is written
    body: dict[str, Any]  # the request body less the fields the proxy consumed
    sent: list[Canonical]
    metadata: object  # the request's `metadata`, kept as a new session's metadata
    key: IdempotencyKey | None
    must_exist: bool  # a client secret's session: an unknown id is a 404, never created
    retry: bool  # the client says this is a retry of a request it sent before
    stream: bool
    query: str
    model: str | None
    reasoning_field: ReasoningField = "none"  # how the upstream takes stored reasoning back
    namespace: str | None = None  # the path prefix a new session is created under
    turn_metadata: dict[str, Any] | None = None  # kept beside the turn's first new message
    gone_within: GoneWithin | None = None  # waits on a busy session; True: client left


@dataclass(frozen=True, slots=True)
class Recorded:
    """A reply answered from the store: the upstream is not called, nothing is written."""

    session_id: str
    body: bytes
    content_type: bytes


class Turn:
    """A turn admitted and holding its session's lease until ``commit`` or ``release``."""

    def __init__(
        self,
        service: TurnService,
        request: TurnRequest,
        session_id: str,
        forward: bytes,
        plan: TurnPlan | None,
        snapshot: SessionSnapshot | None,
        lease: TurnLease | None,
    ) -> None:
        self.service = service
        self.request = request
        self.session_id = session_id
        self.forward = forward  # the body to send upstream
        self.plan = plan  # None: nothing is recorded
        self.snapshot = snapshot
        self.lease = lease

    async def commit(self, reply: AssistantReply) -> bool:
        """Record the turn with ``reply``; False when the session was deleted or ended meanwhile
        (nothing was written), StoreError if the store failed."""
        plan, request, service, lease = self.plan, self.request, self.service, self.lease
        if plan is None:
            return True  # a turn nobody asked to record (store: false) is what it should be
        try:
            write = turn_write(
                plan,
                reply,
                [item.message for item in request.sent],
                request.metadata,
                create=self.snapshot is None,
                new_id=service.message_ids.new,
                reasoning_field=request.reasoning_field,
                natives=[item.native for item in request.sent] if request.dialect.name != "openai" else (),
                turn_metadata=request.turn_metadata,
                namespace=request.namespace,
                dialect=request.dialect.name,
                lease_token=None if lease is None else lease.token,
            )
        except orjson.JSONEncodeError as exc:
            if not _too_deep(exc):
                raise
            logger.warning("reply nests too deeply to be stored; turn not recorded")
            return False
        if request.key is not None:
            # the message as recorded (refusal included), not its replay form
            kept = request.key.keep(_kept_message(reply))
            write = dataclasses.replace(
                write, idempotent=IdempotentReply(request.key.hashed, kept, service.settings.idempotency_ttl_ms)
            )
        metrics = service.metrics
        try:
            result = await service.store.commit(request.owner, self.session_id, write)
        except StoreError:
            metrics.turns_not_recorded["store_error"] += 1
            raise
        if lease is not None:
            lease.released = True  # the commit released it in the same step
        if result != "ok":
            metrics.turns_not_recorded[result] += 1
            logger.info("turn not recorded: session %s", result)
            return False
        metrics.turns_recorded += 1
        return True

    def keep_leased(self, still_wanted: Callable[[], bool]) -> None:
        """Keep the lease renewed while the turn runs and ``still_wanted()`` says so."""
        if self.lease is not None:
            self.lease.keep_renewed(still_wanted)

    async def release(self) -> None:
        """Stop renewing the lease and drop it unless the commit did. Safe to call twice."""
        if self.lease is not None:
            await self.lease.release()


class TurnService:
    """Runs session turns against ``store``; one per middleware."""

    def __init__(
        self, store: Store, settings: Settings, message_ids: MessageIds, metrics: Metrics | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        self.message_ids = message_ids
        self.metrics = metrics if metrics is not None else Metrics()  # turns recorded, and not
        self._background: set[asyncio.Task[None]] = set()
        self.leases = LeaseKeeper()  # renews the leases of long turns, from one timer

    async def begin(self, request: TurnRequest) -> Turn | Recorded:
        """Admit a turn: a Turn to run, or a Recorded reply to send. Raises ClientError or StoreError."""
        key, record, owner = request.key, request.record, request.owner
        session_id, minted = request.session_id, request.session_id is None
        lease: TurnLease | None = None
        try:
            if session_id is None:
                session_id = mint_session_id() if key is None else key.session_id(owner)
            if record:
                lease = self._lease(owner, session_id, request.gone_within)
                snapshot = await lease.load(None if key is None else key.hashed)
            else:
                snapshot = await self.store.load(owner, session_id)
        except StoreError as exc:
            if self.settings.on_store_error != "passthrough":
                raise
            logger.warning("session store unavailable, forwarding without history: %s", exc)
            return self.degraded(request)
        if snapshot is not None and snapshot.idempotent is not None and key is not None:
            return self._recorded(request, session_id, key.reply(snapshot.idempotent))  # no lease was taken
        if minted and key is not None and snapshot is not None:
            # The id derived from the key names a session whose reply under this key is gone (past
            # idempotency_ttl): this is no retry of that turn, and must not reopen that conversation.
            await _release(lease)
            session_id = mint_session_id()
            lease = self._lease(owner, session_id) if record else None
            snapshot = await lease.load() if lease is not None else None
        try:
            if snapshot is None and not minted and (session_id.startswith(MINTED_PREFIX) or request.must_exist):
                raise session_not_found(session_id, "session_id")
            if snapshot is not None:
                _admit(snapshot)
            plan, forward = self._splice(request, snapshot)
            if snapshot is not None and record and key is None and request.retry:
                found = recorded_reply(snapshot.replay, plan)
                if found is not None:
                    await _release(lease)
                    return self._recorded(request, session_id, {**found, **_native_of(snapshot.info()[-1])})
            self._check_size(session_id, snapshot, plan, forward, record)
        except BaseException:
            await _release(lease)
            raise
        return Turn(self, request, session_id, forward, plan if record else None, snapshot, lease)

    def _lease(self, owner: str, session_id: str, gone_within: GoneWithin | None = None) -> TurnLease:
        return TurnLease(self.store, owner, session_id, self.settings, self.spawn, gone_within, self.leases)

    def degraded(self, request: TurnRequest) -> Turn:
        """The turn when the store is down and ``on_store_error`` is passthrough: forwarded
        without its history, nothing recorded."""
        return Turn(self, request, request.session_id or mint_session_id(), _dumps(request.body), None, None, None)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` in the background until it ends or ``aclose`` drains it."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self, grace: float = 5.0) -> None:
        """Wait up to ``grace`` seconds for background work, then cancel what is left."""
        pending = set(self._background)
        if not pending:
            return
        _, still = await asyncio.wait(pending, timeout=grace)
        for task in still:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*still, return_exceptions=True)

    def _splice(self, request: TurnRequest, snapshot: SessionSnapshot | None) -> tuple[TurnPlan, bytes]:
        """How the turn is recorded, and the body to forward."""
        stored = snapshot.replay if snapshot else []
        lead = snapshot.leading_system if snapshot else 0
        sent = request.sent
        messages = [item.message for item in sent]
        if stored and any(message.get("tool_call_id") == "" for message in messages):
            sent = bind_tool_results(sent, stored)
            messages = [item.message for item in sent]
        openai = request.dialect.name == "openai"
        settings = self.settings
        windowed = snapshot is not None and (
            snapshot.window is not None or settings.max_history_messages or settings.max_history_tokens
        )
        skip = self._window_skip(snapshot, lead) if windowed and snapshot is not None else 0
        try:
            plan = plan_turn(stored, lead, messages, request.reasoning_field, skip=skip, forward=openai)
            body = request.body
            if plan.mode != "resume":
                return plan, _dumps(body)
            if openai:
                assert plan.forward is not None
                body = {**body, "messages": orjson.Fragment(b"[" + b",".join(plan.forward) + b"]")}
                return plan, _dumps(body)
            assert snapshot is not None
            history = _history(snapshot, lead + skip, len(stored))
            system = sent[: len(plan.head)] if plan.head else _history(snapshot, 0, lead)
            return plan, _dumps(request.dialect.render(body, system, history))
        except orjson.JSONEncodeError as exc:
            if not _too_deep(exc):
                raise
            raise ClientError(400, "The request body nests too deeply (at most 254 levels).", code="too_deep") from None

    def _check_size(
        self, session_id: str, snapshot: SessionSnapshot | None, plan: TurnPlan, forward: bytes, record: bool
    ) -> None:
        """Refuse a turn whose body, history spliced in, is over max_splice_bytes, or that would store
        more than max_session_messages messages: counted from the loaded history, no store round trip."""
        settings = self.settings
        if len(forward) > settings.max_splice_bytes:
            raise ClientError(
                413,
                f"The request with its session's history spliced in is {len(forward)} bytes, more than the "
                f"{settings.max_splice_bytes} this proxy forwards (max_splice_bytes).",
                code="splice_too_large",
            )
        cap = settings.max_session_messages
        if not record or not cap:
            return
        stored = len(snapshot.replay) if snapshot is not None else 0
        kept = 0 if plan.drop_leading == DROP_ALL else max(stored - plan.drop_leading, 0)
        count = len(plan.head) + kept + len(plan.tail) + 1  # and the reply
        if count > cap:
            raise ClientError(
                409,
                f"Session '{session_id}' would hold {count} messages, more than the {cap} a session may keep "
                "(max_session_messages): start a new session, or fork this one up to an earlier message.",
                code="session_full",
            )

    def _window_skip(self, snapshot: SessionSnapshot, lead: int) -> int:
        """How many stored conversation messages the history window leaves out."""
        max_messages, max_tokens = self.settings.max_history_messages, self.settings.max_history_tokens
        if snapshot.window is not None:
            max_messages, max_tokens = snapshot.window
        if not max_messages and not max_tokens:
            return 0
        conversation = snapshot.replay[lead:]
        roles = ["user" if replay.startswith(_USER_PREFIX) else "other" for replay in conversation]
        tokens: Sequence[int] = ()
        if max_tokens:
            info = snapshot.info()[lead:]
            tokens = [message_tokens(replay, extra) for replay, extra in zip(conversation, info, strict=True)]
        return window_start(roles, tokens, max_messages, max_tokens)

    def _recorded(self, request: TurnRequest, session_id: str, message: dict[str, Any]) -> Recorded:
        native = message.pop("native", None)
        body, content_type = request.dialect.recorded_body(
            Canonical(message, native), request.model, request.stream, request.query
        )
        return Recorded(session_id, body, content_type)


def bind_tool_results(sent: list[Canonical], stored: Sequence[bytes]) -> list[Canonical]:
    """Tool results a dialect could not bind to a call (Ollama and Gemini answer by name), bound to
    the calls of the last stored assistant message, by name and then in order."""
    calls: list[tuple[str, str]] = []
    for replay in reversed(stored):
        message = orjson.loads(replay)
        if message.get("role") == "assistant":
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                calls.append((str(call.get("id") or ""), str(function.get("name") or "")))
            break
    bound: list[Canonical] = []
    for item in sent:
        message = item.message
        if message.get("role") == "tool" and message.get("tool_call_id") == "" and calls:
            name = message.get("name")
            index = next((i for i, (_, called) in enumerate(calls) if called == name), 0)
            call_id, _ = calls.pop(index)
            message = {key: value for key, value in message.items() if key != "name"}
            message["tool_call_id"] = call_id
            item = Canonical(message, item.native)
        bound.append(item)
    return bound


def _history(snapshot: SessionSnapshot, start: int, stop: int) -> list[Canonical]:
    info = snapshot.info()
    return [
        Canonical(orjson.loads(snapshot.replay[index]), _native_of(info[index]).get("native"))
        for index in range(start, stop)
    ]


def _native_of(info: bytes) -> dict[str, Any]:
    if _NATIVE not in info:
        return {}
    native = orjson.loads(info).get("native")
    return {"native": native} if native else {}


async def _release(lease: TurnLease | None) -> None:
    if lease is not None:
        await lease.release()


def _kept_message(reply: AssistantReply) -> bytes:
    message = reply.message if reply.native is None else {**reply.message, "native": reply.native}
    return orjson.dumps(message)


def _dumps(body: dict[str, Any]) -> bytes:
    # Always re-serialised, even when unchanged: the upstream must read exactly what was
    # parsed and recorded (a body with duplicate keys reads differently elsewhere).
    return orjson.dumps(body)


def _too_deep(exc: orjson.JSONEncodeError) -> bool:
    # Past 254 levels orjson cannot write JSON back (past 1024 it cannot read it: a 400 too).
    # JSONEncodeError is a TypeError: anything but the recursion limit is a bug, not a 400.
    return "Recursion limit" in str(exc)


def _admit(snapshot: SessionSnapshot) -> None:
    """Refuse a turn on a read-only session or one over its request limits."""
    if snapshot.status != "active":
        raise ClientError(
            409, f"Session '{snapshot.id}' is {snapshot.status} and read-only.", code=f"session_{snapshot.status}"
        )
    if snapshot.retry_after is not None:
        per_minute = snapshot.limited_by == "max_requests_per_1_minute"
        raise ClientError(
            429,
            f"Session '{snapshot.id}' is over its {'per-minute request limit' if per_minute else 'request limit'}.",
            type="rate_limit_error",
            code="rate_limit_exceeded" if per_minute else "max_requests_exceeded",
            headers=[(b"retry-after", str(snapshot.retry_after).encode())],
        )

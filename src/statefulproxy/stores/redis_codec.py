"""What the Redis store writes and reads: argument encodings, records, errors, and the URL."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from typing import Any, cast

import orjson

from ..errors import StoreError
from .base import (
    ExpiresAfter,
    ExpiryAnchor,
    HistoryWindow,
    Lease,
    NewSession,
    SessionLimits,
    SessionRecord,
    SessionStatus,
    StoredMessage,
    TurnWrite,
    check_window,
)
from .resp import RespError

USAGE = "u:"  # meta field prefix of each usage counter


def session_record(session_id: str, flat: list[bytes], now: float) -> SessionRecord:
    """The record of a meta hash's HGETALL reply."""
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    expires_at = int(fields[b"expires_at"]) if fields.get(b"expires_at") else None
    status: SessionStatus = "active"
    if fields[b"status"] == b"ended":
        status = "ended"
    elif expires_at is not None and now >= expires_at:
        status = "expired"
    title, anchor = fields.get(b"title"), fields.get(b"anchor")
    after = ExpiresAfter(cast(ExpiryAnchor, anchor.decode()), int(fields[b"expires_after"])) if anchor else None
    return SessionRecord(
        id=session_id,
        status=status,
        title=None if title is None else title.decode(),
        message_count=int(fields[b"message_count"]),
        created_at=int(fields[b"created_at"]),
        last_active_at=int(fields[b"last_active_at"]),
        expires_at=expires_at,
        metadata=orjson.loads(fields[b"metadata"]),
        usage={k[len(USAGE) :].decode(): int(v) for k, v in fields.items() if k.startswith(USAGE.encode())},
        expires_after=after,
        limits=SessionLimits(_int(fields.get(b"rpm")), _int(fields.get(b"max_requests"))),
        request_count=int(fields.get(b"request_count") or 0),
        history_window=decode_window(fields.get(b"history_window")),
        namespace=(fields.get(b"namespace") or b"").decode() or None,
    )


def new_fields(new: NewSession, now: int) -> list[Any]:
    """The create fields of the scripts (see redis_scripts._CREATE_META)."""
    after, limits = new.expires_after, new.limits
    return [
        optional(new.title or None),
        orjson.dumps(new.metadata),
        "" if after is None else now + after.seconds,
        "" if after is None else after.anchor,
        "" if after is None else after.seconds,
        "" if limits.max_requests_per_1_minute is None else limits.max_requests_per_1_minute,
        "" if limits.max_requests is None else limits.max_requests,
        new.namespace or "",
        encode_window(new.history_window),
    ]


# The create fields of a commit that creates nothing: as many as new_fields() returns.
NO_NEW_FIELDS = ("-", "", "", "", "", "", "", "", "")


def encode_window(window: HistoryWindow | None) -> str:
    """A history window as the meta field holds it: "<max_messages>,<max_tokens>", or "" for none."""
    check_window(window)
    return "" if window is None else f"{window[0]},{window[1]}"


def decode_window(value: bytes | None) -> HistoryWindow | None:
    """The window of a meta field; None for none ("", or a session written before windows existed)."""
    if not value:
        return None
    max_messages, _, max_tokens = value.partition(b",")
    return int(max_messages), int(max_tokens)


def lease_args(lease: Lease | None) -> tuple[str, int] | tuple[()]:
    if lease is not None and lease.ttl_ms < 1:  # SET PX 0 is an error, and a lease without a TTL never goes
        raise ValueError(f"a lease needs a positive ttl_ms, not {lease.ttl_ms!r}")
    return () if lease is None else (lease.token, lease.ttl_ms)


def _int(value: bytes | None) -> int | None:
    return int(value) if value else None


class translate_errors:
    """Redis' errors as StoreError, named by ``operation``. A class, not a @contextmanager: every
    store call enters one, and a generator-based one costs several times as much."""

    __slots__ = ("operation",)

    def __init__(self, operation: str) -> None:
        self.operation = operation

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, traceback: object) -> None:
        if isinstance(exc, (RespError, OSError)):  # ConnectionError and TimeoutError are OSErrors
            raise StoreError(f"redis store: {self.operation} failed: {exc or type(exc).__name__}") from exc


def optional(text: str | None) -> str:
    # Lua cannot tell an absent argument from an empty one: "-" is None, "+..." a value.
    return "-" if text is None else "+" + text


def encode(messages: Sequence[StoredMessage]) -> list[bytes]:
    for message in messages:
        if b"\n" in message.replay:
            raise ValueError("replay bytes must be compact JSON without a raw newline")
    return [message.replay + b"\n" + message.info for message in messages]


def commit_args(
    write: TurnWrite, now: float, ttl_ms: int, session_id: str, cap: int, index_ttl_ms: int, flags: int = 0
) -> list[Any]:
    """The COMMIT script's ARGV for ``write`` (redis_scripts.COMMIT documents them)."""
    new = write.create
    args: list[Any] = [int(now), ttl_ms, write.drop_leading, write.tail_leading_system, optional(write.title_hint)]
    args += ["0", *NO_NEW_FIELDS] if new is None else [1 + new.request_count, *new_fields(new, args[0])]
    kept = write.idempotent
    args.append(optional(write.lease_token))
    args += ["-", "", "", ""] if kept is None else [kept.key, kept.value, round(now * 1000), kept.ttl_ms]
    args += [session_id, cap, index_ttl_ms, len(write.usage), flags]
    for name, tokens in write.usage.items():
        args += [USAGE + name, int(tokens)]
    args.append(len(write.head))
    args += encode(write.head)
    args += encode(write.tail)
    return args


@functools.lru_cache(maxsize=4096)  # a turn names its keys twice (load, commit); a hash and 7 strings each
def session_keys(prefix: str, owner: str, session_id: str) -> tuple[str, ...]:
    digest = hashlib.blake2b(f"{owner}\0{session_id}".encode(), digest_size=16).hexdigest()
    base = f"{prefix}:{{{digest}}}"
    return tuple(f"{base}:{name}" for name in ("meta", "msgs", "window", "lease", "kept", "kept_until", "ids"))

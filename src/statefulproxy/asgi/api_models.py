"""The management API's JSON: request bodies checked into records, records shown as objects.

Pure functions. Limits follow OpenAI's where it has them (metadata: at most 16 pairs,
keys up to 64 characters, values up to 512); unknown fields are refused, as OpenAI does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import orjson

from ..errors import ClientError
from ..sessions.identity import SESSION_ID_PATTERN
from ..stores.base import (
    UNCHANGED,
    ExpiresAfter,
    HistoryWindow,
    NewSession,
    SessionLimits,
    SessionRecord,
    SessionStatus,
    StoredMessage,
    Unchanged,
)

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_TITLE = 256
MAX_EXPIRY_SECONDS = 365 * 24 * 3600
MAX_CLIENT_SECRET_SECONDS = 7 * 24 * 3600
DEFAULT_CLIENT_SECRET_SECONDS = 600
SECRET_RPM = 20  # the per-minute limit of a session created with a client secret, unless it sets one
SECRET_DIALECTS = ("openai", "anthropic", "ollama", "gemini")
MAX_COUNT = 2**31 - 1  # any count a client sets: JSON allows integers too big to write back

Order = Literal["asc", "desc"]


@dataclass(frozen=True, slots=True)
class CreateRequest:
    new: NewSession
    client_secret_seconds: int | None  # None: no client secret asked for
    client_secret_grant: dict[str, Any] = dataclasses.field(default_factory=dict)  # dialect, model, max_tokens pins


@dataclass(frozen=True, slots=True)
class UpdateRequest:
    title: str | None  # None: leave as is
    metadata: dict[str, str] | None  # None: leave as is
    history_window: HistoryWindow | Unchanged | None  # None: remove it


@dataclass(frozen=True, slots=True)
class MessagesQuery:
    """A message listing's query: ``after`` / ``before`` are message ids, ``page`` counts pages of ``limit``."""

    limit: int
    order: Order
    page: int
    after: str | None
    before: str | None


@dataclass(frozen=True, slots=True)
class ListQuery:
    limit: int
    order: Order
    after: str | None
    before: str | None
    status: SessionStatus | None
    metadata: dict[str, str]


def session_object(record: SessionRecord) -> dict[str, Any]:
    expires_after = record.expires_after
    return {
        "id": record.id,
        "object": "session",
        "title": record.title,
        "status": record.status,
        "message_count": record.message_count,
        "created_at": record.created_at,
        "last_active_at": record.last_active_at,
        "expires_at": record.expires_at,
        "expires_after": None if expires_after is None else dataclasses.asdict(expires_after),
        "rate_limits": {"max_requests_per_1_minute": record.limits.max_requests_per_1_minute},
        "max_requests": record.limits.max_requests,
        "request_count": record.request_count,
        "history_window": _window_object(record.history_window),
        "namespace": record.namespace,
        "metadata": record.metadata,
        "usage": record.usage,
    }


def _window_object(window: HistoryWindow | None) -> dict[str, int] | None:
    return None if window is None else {"max_messages": window[0], "max_tokens": window[1]}


def message_object(message: StoredMessage) -> dict[str, Any]:
    info = orjson.loads(message.info)
    replay = orjson.loads(message.replay)
    # reasoning is shown once, as `reasoning`, whatever field the upstream replays it in
    replay.pop("reasoning_content", None)
    replay.pop("reasoning", None)
    out: dict[str, Any] = {"id": info["id"], "object": "session.message", **replay, "created_at": info["created_at"]}
    for kept in ("refusal", "reasoning", "metadata"):
        if info.get(kept):
            out[kept] = info[kept]
    return out


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object; no body at all is an empty one."""
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ClientError(400, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ClientError(400, "The request body must be a JSON object.")
    return body


def parse_create(body: Mapping[str, Any]) -> CreateRequest:
    _only(
        body, ("title", "metadata", "expires_after", "rate_limits", "max_requests", "history_window", "client_secret")
    )
    limits = SessionLimits(
        max_requests_per_1_minute=_rate_limits(body.get("rate_limits")),
        max_requests=_optional_int(body.get("max_requests"), "max_requests", 1, MAX_COUNT),
    )
    new = NewSession(
        title=_title(body.get("title")),
        metadata=parse_metadata(body.get("metadata"), "metadata") if body.get("metadata") is not None else {},
        expires_after=_expires_after(body.get("expires_after")),
        limits=limits,
        history_window=_history_window(body.get("history_window")),
    )
    seconds, grant = _client_secret(body)
    if seconds is not None and limits.max_requests_per_1_minute is None:
        # a browser holds the secret: a session it may drive gets a rate limit unless one was set
        new = dataclasses.replace(new, limits=dataclasses.replace(limits, max_requests_per_1_minute=SECRET_RPM))
    return CreateRequest(new, seconds, grant)


def parse_update(body: Mapping[str, Any]) -> UpdateRequest:
    """What to change; a ``history_window`` of null removes the window, an absent one keeps it."""
    _only(body, ("title", "metadata", "history_window"))
    metadata = body.get("metadata")
    return UpdateRequest(
        title=_title(body.get("title")),
        metadata=None if metadata is None else parse_metadata(metadata, "metadata"),
        history_window=_history_window(body["history_window"]) if "history_window" in body else UNCHANGED,
    )


def parse_fork(body: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(up_to_message_id, title)."""
    _only(body, ("up_to_message_id", "title"))
    up_to = body.get("up_to_message_id")
    if up_to is not None and not isinstance(up_to, str):
        raise ClientError(400, "'up_to_message_id' must be a message id.", param="up_to_message_id")
    return up_to, _title(body.get("title"))


def parse_metadata(value: object, param: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ClientError(400, f"'{param}' must be an object of string values.", param=param)
    if len(value) > 16:
        raise ClientError(400, f"'{param}' may hold at most 16 pairs.", param=param)
    for key, item in value.items():
        if len(key) > 64 or not isinstance(item, str) or len(item) > 512:
            raise ClientError(
                400, f"'{param}' keys must be at most 64 characters, values strings of at most 512.", param=param
            )
    return dict(value)


def parse_list_query(query: Sequence[tuple[str, str]]) -> ListQuery:
    params: dict[str, str] = {}
    metadata: dict[str, str] = {}
    for key, value in query:
        if key.startswith("metadata[") and key.endswith("]"):
            if key == "metadata[]":
                raise ClientError(400, "'metadata[KEY]=VALUE' filters need a key.", param="metadata")
            metadata[key[len("metadata[") : -1]] = value
        else:
            params[key] = value
    status = params.get("status")
    if status is not None and status not in ("active", "ended", "expired"):
        raise ClientError(400, "'status' must be one of active, ended, expired.", param="status")
    return ListQuery(
        limit=int_param(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        order=order_param(params, "desc"),
        after=_cursor(params, "after"),
        before=_cursor(params, "before"),
        status=cast(SessionStatus | None, status),
        metadata=metadata,
    )


def paginate(items: Sequence[dict[str, Any]], query: Mapping[str, str]) -> dict[str, Any]:
    """An OpenAI list envelope over ``items`` (oldest first) per limit/order/after/before/page."""
    parsed = parse_messages_query(query)
    ids = [item["id"] for item in items]

    def position(cursor: str | None, param: str) -> int | None:
        if cursor is not None and cursor not in ids:
            raise no_cursor(cursor, param)
        return None if cursor is None else ids.index(cursor)

    start, stop, has_more = page_slice(
        parsed, len(items), position(parsed.after, "after"), position(parsed.before, "before")
    )
    page = list(items[start:stop])
    if parsed.order == "desc":
        page.reverse()
    return list_envelope(page, has_more)


def parse_messages_query(query: Mapping[str, str]) -> MessagesQuery:
    limit = int_param(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    order = order_param(query, "asc")
    page = int_param(query, "page", 0, 0, 1 << 31) if "page" in query else 0
    return MessagesQuery(limit, order, page, query.get("after"), query.get("before"))


def page_slice(query: MessagesQuery, total: int, after_at: int | None, before_at: int | None) -> tuple[int, int, bool]:
    """The page as ``history[start:stop]`` (oldest first: reversed for ``desc``) and whether more follow,
    given the history's length and the cursors' positions in it.

    In listing order the page starts at ``page * limit``, or just after ``after``, and ends before
    ``before``; ``before`` alone pages backwards (the ``limit`` items closest to it), and then "more"
    lies before the page.
    """

    def in_order(position: int) -> int:
        return position if query.order == "asc" else total - 1 - position

    start, end = query.page * query.limit, total
    if after_at is not None:
        start = in_order(after_at) + 1
    if before_at is not None:
        end = in_order(before_at)
        if after_at is None:
            start = max(start, end - query.limit)
    first = min(start, total)
    count = max(min(end, start + query.limit, total) - first, 0)
    has_more = start > 0 if before_at is not None and after_at is None else start + count < end
    if query.order == "asc":
        return first, first + count, has_more
    return total - first - count, total - first, has_more


def no_cursor(item_id: str, param: str) -> ClientError:
    return ClientError(400, f"No message with id '{item_id}' to page from.", param=param)


def list_envelope(page: Sequence[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": list(page),
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": has_more,
    }


def int_param(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) < 100) or not low <= int(raw) <= high:
        raise ClientError(400, f"'{name}' must be an integer from {low} to {high}.", param=name)
    return int(raw)


def order_param(query: Mapping[str, str], default: Order) -> Order:
    order = query.get("order", default)
    if order not in ("asc", "desc"):
        raise ClientError(400, "'order' must be 'asc' or 'desc'.", param="order")
    return cast(Order, order)


def _cursor(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    if value is not None and SESSION_ID_PATTERN.fullmatch(value) is None:
        raise ClientError(400, f"'{name}' must be a session id.", param=name)
    return value


def _only(body: Mapping[str, Any], allowed: Sequence[str]) -> None:
    for key in body:
        if key not in allowed:
            raise ClientError(400, f"Unrecognized request argument supplied: {key}", param=key)


def _title(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_TITLE:
        raise ClientError(400, f"'title' must be a string of at most {MAX_TITLE} characters.", param="title")
    return value


def _optional_int(value: object, param: str, low: int, high: int | None) -> int | None:
    if value is None:
        return None
    if type(value) is float and value.is_integer():  # 5.0 is an integer to JSON Schema, as to OpenAI
        value = int(value)
    if type(value) is not int or value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise ClientError(400, f"'{param}' must be an integer {bound}.", param=param)
    return value


def _required_int(value: object, param: str, low: int, high: int | None) -> int:
    number = _optional_int(value, param, low, high)
    if number is None:
        raise ClientError(400, f"'{param}' is required.", param=param)
    return number


def _expires_after(value: object) -> ExpiresAfter | None:
    if value is None:
        return None
    param = "expires_after"
    if not isinstance(value, dict) or set(value) != {"anchor", "seconds"}:
        raise ClientError(400, '\'expires_after\' must be {"anchor": ..., "seconds": ...}.', param=param)
    anchor = value["anchor"]
    if anchor not in ("created_at", "last_active_at"):
        raise ClientError(400, "'expires_after.anchor' must be created_at or last_active_at.", param=param)
    return ExpiresAfter(anchor, _required_int(value["seconds"], "expires_after.seconds", 1, MAX_EXPIRY_SECONDS))


def _history_window(value: object) -> HistoryWindow | None:
    if value is None:
        return None
    param = "history_window"
    if not isinstance(value, dict) or set(value) - {"max_messages", "max_tokens"}:
        raise ClientError(400, '\'history_window\' must be {"max_messages": n, "max_tokens": n}.', param=param)
    max_messages = _optional_int(value.get("max_messages"), f"{param}.max_messages", 0, MAX_COUNT)
    max_tokens = _optional_int(value.get("max_tokens"), f"{param}.max_tokens", 0, MAX_COUNT)
    return max_messages or 0, max_tokens or 0  # an omitted limit is no limit


def _rate_limits(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"max_requests_per_1_minute"}:
        raise ClientError(400, "'rate_limits' must be {\"max_requests_per_1_minute\": n}.", param="rate_limits")
    return _optional_int(value.get("max_requests_per_1_minute"), "rate_limits.max_requests_per_1_minute", 1, MAX_COUNT)


def _client_secret(body: Mapping[str, Any]) -> tuple[int | None, dict[str, Any]]:
    """(seconds, pins) of a requested client secret; (None, {}) when none is asked for."""
    if "client_secret" not in body or body["client_secret"] is None:
        return None, {}
    value = body["client_secret"]
    param = "client_secret"
    if not isinstance(value, dict) or set(value) - {"expires_after", "dialect", "model", "max_tokens"}:
        message = '\'client_secret\' must be {"expires_after": seconds, "dialect", "model", "max_tokens"}.'
        raise ClientError(400, message, param=param)
    expires_after = value.get("expires_after", DEFAULT_CLIENT_SECRET_SECONDS)
    if isinstance(expires_after, dict):  # OpenAI's form: {"anchor": "created_at", "seconds": n}
        if expires_after.get("anchor", "created_at") != "created_at" or set(expires_after) - {"anchor", "seconds"}:
            raise ClientError(400, "'client_secret.expires_after' anchors at created_at.", param=param)
        expires_after = expires_after.get("seconds")
    seconds = _required_int(expires_after, "client_secret.expires_after", 1, MAX_CLIENT_SECRET_SECONDS)
    dialect = value.get("dialect")
    if dialect is None:
        dialect = "openai"
    elif not isinstance(dialect, str) or dialect not in SECRET_DIALECTS:
        raise ClientError(400, f"'client_secret.dialect' must be one of {', '.join(SECRET_DIALECTS)}.", param=param)
    model = value.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise ClientError(400, "'client_secret.model' must be a non-empty string.", param=param)
    max_tokens = _optional_int(value.get("max_tokens"), "client_secret.max_tokens", 1, MAX_COUNT)
    return seconds, {"dialect": dialect, "model": model, "max_tokens": max_tokens}

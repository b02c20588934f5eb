"""The management API's lists: the query models of its two listings, paging, and the objects it shows.

Pure. ``SessionsQuery`` and ``MessagesQuery`` are the listings' query parameters, declared once
(the route table names them; the OpenAPI document and their validation are made from them).
Limits follow OpenAI's where it has them; the session objects are built as dicts, in the field
order clients see (and the admin CLI and backups write).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import msgspec
import orjson
from msgspec import Meta

from ..errors import ClientError
from ..sessions.identity import SESSION_ID_PATTERN
from ..stores.base import HistoryWindow, SessionRecord, SessionStatus, StoredMessage
from .api_codec import QueryDecoder, refuse

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_TITLE = 256
MAX_PAGE = 1 << 31

Order = Literal["asc", "desc"]
SessionId = Annotated[str, Meta(pattern=f"^{SESSION_ID_PATTERN.pattern}$"), refuse("'{name}' must be a session id.")]
Title = Annotated[str, Meta(max_length=MAX_TITLE)]
_Limit = Annotated[int, Meta(ge=1, le=MAX_LIMIT, description="Page size.")]
_Order = Annotated[Order, refuse("'order' must be 'asc' or 'desc'."), Meta(description="By creation time.")]
_FilterKey = Annotated[str, Meta(min_length=1), refuse("'metadata[KEY]=VALUE' filters need a key.")]


class SessionsQuery(msgspec.Struct, kw_only=True):
    """GET {prefix}: the owner's sessions, newest first by default."""

    limit: _Limit = DEFAULT_LIMIT
    order: _Order = "desc"
    after: Annotated[SessionId, Meta(description="A session id: the page starts after it (in this order).")] | None = (
        None
    )
    before: Annotated[SessionId, Meta(description="A session id: the page ends before it (in this order).")] | None = (
        None
    )
    status: Annotated[SessionStatus, Meta(description="Only sessions in this status.")] | None = None
    q: Annotated[Title, Meta(description="Only sessions whose title holds this text, in any case.")] | None = None
    metadata: Annotated[
        dict[_FilterKey, str],
        Meta(description="`metadata[KEY]=VALUE`: only sessions whose metadata has all these pairs."),
    ] = {}


class MessagesQuery(msgspec.Struct, kw_only=True):
    """GET {prefix}/{id}/messages: ``after`` / ``before`` are message ids, ``page`` counts pages of ``limit``."""

    limit: _Limit = DEFAULT_LIMIT
    order: _Order = "asc"
    page: Annotated[
        int,
        Meta(
            ge=0,
            le=MAX_PAGE,
            description="Zero-based page number, `limit` messages a page (for clients built on page numbers).",
        ),
    ] = 0
    # message ids are the proxy's own: any string is looked up
    after: Annotated[str, Meta(description="A message id: the page starts after it (in this order).")] | None = None
    before: Annotated[str, Meta(description="A message id: the page ends before it (in this order).")] | None = None
    include: (
        Annotated[
            Literal["reply_details"],
            Meta(description="`reply_details`: each reply's usage, model, finish_reason and its turn's dialect."),
        ]
        | None
    ) = None


_MESSAGES_QUERY = QueryDecoder(MessagesQuery)


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


# what ``include=reply_details`` adds to a reply's message object
REPLY_DETAILS = ("usage", "model", "finish_reason", "dialect")


def message_object(message: StoredMessage, details: bool = False) -> dict[str, Any]:
    info = orjson.loads(message.info)
    replay = orjson.loads(message.replay)
    # reasoning is shown once, as `reasoning`, whatever field the upstream replays it in
    replay.pop("reasoning_content", None)
    replay.pop("reasoning", None)
    out: dict[str, Any] = {"id": info["id"], "object": "session.message", **replay, "created_at": info["created_at"]}
    for kept in ("refusal", "reasoning", "metadata", *(REPLY_DETAILS if details else ())):
        if info.get(kept):
            out[kept] = info[kept]
    return out


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
    return _MESSAGES_QUERY.decode(query.items())


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

"""The management API under ``/v1/sessions`` (CONTRACT.md section 5), scoped to the caller.

A session of another credential is a 404 exactly like one that does not exist.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl

import orjson

from .errors import ClientError, StoreError
from .identity import SESSION_ID_PATTERN
from .replies import send_error, send_failure, send_object
from .stores.base import SessionRecord, Store, StoredMessage
from .types import Headers, Receive, Scope, Send

logger = logging.getLogger("statefulproxy")

_ROUTE = re.compile(r"/(?P<id>[^/]+)(?P<action>/messages|/end)?/?")
DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def session_object(record: SessionRecord) -> dict[str, Any]:
    return {"id": record.id, "object": "session", **{k: v for k, v in dataclasses.asdict(record).items() if k != "id"}}


def message_object(message: StoredMessage) -> dict[str, Any]:
    info = orjson.loads(message.info)
    replay = orjson.loads(message.replay)
    out: dict[str, Any] = {"id": info["id"], "object": "session.message", **replay, "created_at": info["created_at"]}
    for kept in ("refusal", "reasoning"):
        if info.get(kept):
            out[kept] = info[kept]
    return out


class ManagementAPI:
    """A pure ASGI app for the session endpoints; ``rest`` is the path after the prefix."""

    def __init__(self, store: Store, scope_for: Callable[[Headers], Awaitable[str]]) -> None:
        self.store = store
        self.scope_for = scope_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send, rest: str) -> None:
        try:
            status, body = await self._handle(scope, rest)
        except ClientError as error:
            await send_error(send, error)
            return
        except StoreError as exc:
            logger.error("session store unavailable: %s", exc)
            await send_failure(send, 503, "The session store is unavailable.", "store_error", "store_unavailable")
            return
        await send_object(send, status, body)

    async def _handle(self, scope: Scope, rest: str) -> tuple[int, Any]:
        match = _ROUTE.fullmatch(rest)
        if match is None:
            raise ClientError(404, f"Unknown path '{scope['path']}'.", type="not_found_error", code="not_found")
        session_id, action, method = match["id"], match["action"], scope["method"]
        if SESSION_ID_PATTERN.fullmatch(session_id) is None:
            raise _not_found(session_id)
        owner = await self.scope_for(scope["headers"])
        if action is None and method == "GET":
            return 200, session_object(await _found(self.store.get(owner, session_id), session_id))
        if action is None and method == "DELETE":
            if not await self.store.delete(owner, session_id):
                raise _not_found(session_id)
            return 200, {"id": session_id, "object": "session.deleted", "deleted": True}
        if action == "/end" and method == "POST":
            return 200, session_object(await _found(self.store.end(owner, session_id), session_id))
        if action == "/messages" and method == "GET":
            messages = await _found(self.store.messages(owner, session_id), session_id)
            return 200, paginate([message_object(m) for m in messages], dict(parse_qsl(scope["query_string"].decode())))
        raise ClientError(405, f"Method {method} is not allowed on '{scope['path']}'.", code="method_not_allowed")


def paginate(items: Sequence[dict[str, Any]], query: dict[str, str]) -> dict[str, Any]:
    """An OpenAI list envelope over ``items`` (oldest first) per limit/order/after/before/page."""
    limit = _int_param(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    order = query.get("order", "asc")
    if order not in ("asc", "desc"):
        raise ClientError(400, "'order' must be 'asc' or 'desc'.", param="order")
    ordered = list(items) if order == "asc" else list(reversed(items))
    start, end = 0, len(ordered)
    if "page" in query:
        start = _int_param(query, "page", 0, 0, 1 << 31) * limit
    if "after" in query:
        start = _index_of(ordered, query["after"], "after") + 1
    if "before" in query:
        end = _index_of(ordered, query["before"], "before")
        start = max(start, end - limit) if "after" not in query else start
    page = ordered[start : min(end, start + limit)]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        # paging backwards (`before` alone), "more" lies before the page
        "has_more": start > 0 if "before" in query and "after" not in query else start + len(page) < end,
    }


def _int_param(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) < 100) or not low <= int(raw) <= high:
        raise ClientError(400, f"'{name}' must be an integer from {low} to {high}.", param=name)
    return int(raw)


def _index_of(items: Sequence[dict[str, Any]], item_id: str, param: str) -> int:
    for index, item in enumerate(items):
        if item["id"] == item_id:
            return index
    raise ClientError(400, f"No message with id '{item_id}' to page from.", param=param)


async def _found(result: Awaitable[Any], session_id: str) -> Any:
    value = await result
    if value is None:
        raise _not_found(session_id)
    return value


def _not_found(session_id: str) -> ClientError:
    return ClientError(404, f"No session found with id '{session_id}'.", type="not_found_error", code="not_found")

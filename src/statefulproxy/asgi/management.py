"""The management API under ``/v1/sessions`` (CONTRACT.md section 5), scoped to the caller.

A session of another credential is a 404 exactly like one that does not exist. A request
authenticated by a session's client secret (a ``Grant``) may read that one session only.
Served for a namespace (a path prefix such as ``/document/d1``), it sees that namespace's
sessions only: any other session is a 404 too.

A page of messages reads only that page from the store (a cursor's position comes from the
store's index of message ids), so paging a long session costs what the page costs; a page of
unusually large messages is parsed in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl

import orjson

from ..dialects.base import SYSTEM_ROLES
from ..errors import ClientError, StoreError
from ..sessions.identity import SESSION_ID_PATTERN, Grant, client_secret_hash, mint_client_secret, mint_session_id
from ..stores.base import NewSession, SessionRecord, Store, StoredMessage
from ..types import Receive, Scope, Send
from .api_models import (
    list_envelope,
    message_object,
    no_cursor,
    page_slice,
    parse_body,
    parse_create,
    parse_fork,
    parse_list_query,
    parse_messages_query,
    parse_update,
    session_object,
)
from .openapi import OPENAPI_PATH_SUFFIX, openapi_document
from .replies import send_error, send_failure, send_object
from .request_body import read_body

logger = logging.getLogger("statefulproxy")

_SESSION_ROUTE = re.compile(r"/(?P<id>[^/]+)(?P<action>/messages|/end|/cancel|/fork)?/?")
MAX_MANAGEMENT_BODY = 1024 * 1024
# a page of messages bigger than this is parsed in a thread, not on the event loop
PARSE_IN_THREAD_BYTES = 1024 * 1024


class ManagementAPI:
    """A pure ASGI app for the session endpoints; ``rest`` is the path after the prefix."""

    def __init__(
        self,
        store: Store,
        owner_for: Callable[[Scope], Awaitable[str]],
        prefix: str,
        upstream_api_key: str | None,
    ) -> None:
        self.store = store
        self.owner_for = owner_for
        self.upstream_api_key = upstream_api_key
        self.openapi = openapi_document(prefix)

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        rest: str,
        grant: Grant | None = None,
        *,
        namespace: str | None = None,
    ) -> None:
        """Answer one request; with ``namespace``, as the API served under that prefix."""
        try:
            status, body = await self._handle(scope, receive, rest, grant, namespace)
        except ClientError as error:
            await send_error(send, error)
            return
        except StoreError as exc:
            logger.error("session store unavailable: %s", exc)
            await send_failure(send, 503, "The session store is unavailable.", "store_error", "store_unavailable")
            return
        await send_object(send, status, body)

    async def _handle(
        self, scope: Scope, receive: Receive, rest: str, grant: Grant | None, namespace: str | None
    ) -> tuple[int, Any]:
        method: str = scope["method"]
        if rest == OPENAPI_PATH_SUFFIX:  # public, client secrets included
            if method != "GET":
                raise _not_allowed(method, scope, "openapi")
            return 200, self.openapi
        if rest in ("", "/"):
            if grant is not None:
                raise _forbidden()
            owner = await self.owner_for(scope)
            if method == "POST":
                return await self._create(owner, await _read_body(receive), namespace)
            if method == "GET":
                return await self._list(owner, scope["query_string"], namespace)
            raise _not_allowed(method, scope, "collection")
        match = _SESSION_ROUTE.fullmatch(rest)
        if match is None:
            raise ClientError(404, f"Unknown path '{scope['path']}'.", type="not_found_error", code="not_found")
        session_id, action = match["id"], match["action"]
        if SESSION_ID_PATTERN.fullmatch(session_id) is None:
            raise _not_found(session_id)
        if grant is not None:
            # a client secret reads its own session and nothing else
            if session_id != grant.session_id or method != "GET" or action not in (None, "/messages"):
                raise _forbidden()
            owner = grant.owner
        else:
            owner = await self.owner_for(scope)
        return await self._session_call(owner, session_id, action, method, scope, receive, namespace)

    async def _session_call(
        self,
        owner: str,
        session_id: str,
        action: str | None,
        method: str,
        scope: Scope,
        receive: Receive,
        namespace: str | None,
    ) -> tuple[int, Any]:
        if method not in _ALLOWED[action].split(", "):
            raise _not_allowed(method, scope, action)
        store = self.store
        # Under a namespace every call first finds the session in it. Its namespace never changes,
        # so the call that follows acts on a session of this namespace (or on none: a 404).
        known = None if namespace is None else await self._get_in(namespace, owner, session_id)
        if action is None:
            if method == "GET":
                return 200, session_object(known or _found(await store.get(owner, session_id), session_id))
            if method == "POST":
                update = parse_update(parse_body(await _read_body(receive)))
                record = await store.update(
                    owner,
                    session_id,
                    title=update.title,
                    metadata=update.metadata,
                    history_window=update.history_window,
                )
                return 200, session_object(_found(record, session_id))
            if not await store.delete(owner, session_id):
                raise _not_found(session_id)
            return 200, {"id": session_id, "object": "session.deleted", "deleted": True}
        if action == "/messages":
            if method == "GET":
                return 200, await self._messages(owner, session_id, scope["query_string"])
            _writable(known or _found(await store.get(owner, session_id), session_id))
            return 200, session_object(_found(await store.clear(owner, session_id), session_id))
        if action == "/fork":
            return 201, await self._fork(owner, session_id, await _read_body(receive), known)
        return 200, session_object(_found(await store.end(owner, session_id), session_id))  # /end, /cancel

    async def _get_in(self, namespace: str, owner: str, session_id: str) -> SessionRecord:
        """The session if it is in ``namespace`` ("": in none); else a 404, as for a missing one."""
        record = await self.store.get(owner, session_id)
        if record is None or (record.namespace or "") != namespace:
            raise _not_found(session_id)
        return record

    async def _create(self, owner: str, raw: bytes, namespace: str | None) -> tuple[int, Any]:
        request = parse_create(parse_body(raw))
        if request.client_secret_seconds is not None and self.upstream_api_key is None:
            raise ClientError(
                400,
                "Client secrets need an upstream key: set upstream_api_key, or upstream_api_key_env to the name "
                "of an environment variable holding it.",
                param="client_secret",
                code="upstream_api_key_not_configured",
            )
        new = request.new if namespace is None else dataclasses.replace(request.new, namespace=namespace or None)
        record = await self._create_unique(owner, new)
        body = session_object(record)
        if request.client_secret_seconds is not None:
            token = mint_client_secret()
            seconds = request.client_secret_seconds
            grant = orjson.dumps(request.client_secret_grant)
            await self.store.put_client_secret(client_secret_hash(token.encode()), owner, record.id, seconds, grant)
            body["client_secret"] = {"value": token, "expires_at": int(time.time()) + seconds}
        return 201, body

    async def _list(self, owner: str, query_string: bytes, namespace: str | None) -> tuple[int, Any]:
        query = parse_list_query(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
        page = await self.store.list_sessions(
            owner,
            limit=query.limit,
            order=query.order,
            after=query.after,
            before=query.before,
            status=query.status,
            metadata=query.metadata,
            namespace=namespace,
        )
        if page is None:
            cursor = query.after if query.after is not None else query.before
            raise ClientError(400, f"No session with id '{cursor}' to page from.", param="after")
        records, has_more = page
        return 200, list_envelope([session_object(record) for record in records], has_more)

    async def _messages(self, owner: str, session_id: str, query_string: bytes) -> dict[str, Any]:
        """One page of the history: the cursors found in the store's id index, then only the page read."""
        query = parse_messages_query(dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)))
        store = self.store
        if query.after is None and query.before is None:  # one read: desc pages count back from the end
            start = query.page * query.limit
            bounds = (start, start + query.limit) if query.order == "asc" else (-start - query.limit, -start or None)
            page = _found(await store.messages_page(owner, session_id, *bounds), session_id)
            messages, has_more = page.messages, start + len(page.messages) < page.total
        else:
            cursors = [cursor for cursor in (query.after, query.before) if cursor is not None]
            positions, total = _found(await store.message_positions(owner, session_id, cursors), session_id)
            found = iter(positions)
            after_at = None if query.after is None else next(found)
            before_at = None if query.before is None else next(found)
            for cursor, at, param in ((query.after, after_at, "after"), (query.before, before_at, "before")):
                if cursor is not None and at is None:
                    raise no_cursor(cursor, param)
            start, stop, has_more = page_slice(query, total, after_at, before_at)
            messages = []
            if stop > start:
                messages = _found(await store.messages_page(owner, session_id, start, stop), session_id).messages
        if query.order == "desc":
            messages.reverse()
        return list_envelope(await _message_objects(messages), has_more)

    async def _fork(self, owner: str, session_id: str, raw: bytes, source: SessionRecord | None) -> dict[str, Any]:
        up_to, title = parse_fork(parse_body(raw))
        source = source or _found(await self.store.get(owner, session_id), session_id)
        if up_to is None:
            messages = _found(await self.store.messages(owner, session_id), session_id)
        else:
            (at,), _ = _found(await self.store.message_positions(owner, session_id, [up_to]), session_id)
            if at is None:
                raise ClientError(400, f"No message with id '{up_to}' in this session.", param="up_to_message_id")
            messages = _found(await self.store.messages_page(owner, session_id, 0, at + 1), session_id).messages
        leading = 0
        for message in messages:
            if message_object(message)["role"] not in SYSTEM_ROLES:
                break
            leading += 1
        new = NewSession(
            title=title if title is not None else source.title,
            metadata=dict(source.metadata),
            history_window=source.history_window,
            namespace=source.namespace,  # a fork stays where its source is
        )
        return session_object(await self._create_unique(owner, new, messages, leading))

    async def _create_unique(self, owner: str, new: NewSession, *args: Any) -> SessionRecord:
        # 128 random bits: a collision is not expected, but it must never overwrite a session
        for _ in range(3):
            record = await self.store.create(owner, mint_session_id(), new, *args)
            if record is not None:
                return record
        raise StoreError("could not mint a free session id")


async def _message_objects(messages: Sequence[StoredMessage]) -> list[dict[str, Any]]:
    if sum(len(message.replay) + len(message.info) for message in messages) > PARSE_IN_THREAD_BYTES:
        return await asyncio.to_thread(lambda: [message_object(message) for message in messages])
    return [message_object(message) for message in messages]


async def _read_body(receive: Receive) -> bytes:
    return await read_body(receive, MAX_MANAGEMENT_BODY)


def _found(value: Any, session_id: str) -> Any:
    if value is None:
        raise _not_found(session_id)
    return value


def _writable(record: SessionRecord) -> None:
    if record.status != "active":
        raise ClientError(
            409, f"Session '{record.id}' is {record.status} and read-only.", code=f"session_{record.status}"
        )


_ALLOWED = {
    "collection": "GET, POST",
    "openapi": "GET",
    None: "GET, POST, DELETE",
    "/messages": "GET, DELETE",
    "/end": "POST",
    "/cancel": "POST",
    "/fork": "POST",
}


def _not_allowed(method: str, scope: Scope, route: str | None) -> ClientError:
    return ClientError(
        405,
        f"Method {method} is not allowed on '{scope['path']}'.",
        code="method_not_allowed",
        headers=[(b"allow", _ALLOWED[route].encode())],
    )


def _not_found(session_id: str) -> ClientError:
    return ClientError(404, f"No session found with id '{session_id}'.", type="not_found_error", code="not_found")


def _forbidden() -> ClientError:
    return ClientError(
        403,
        "A client secret may only chat on and read its own session.",
        type="permission_error",
        code="client_secret_scope",
    )

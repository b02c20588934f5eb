"""The management API under ``/v1/sessions`` (CONTRACT.md section 5), scoped to the caller.

Dispatched by the route table (routes_table.py): a route's query and body are decoded by its
models before its handler runs, and a handler answers with its route's status.

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
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson

from ..dialects.base import SYSTEM_ROLES
from ..errors import ClientError, StoreError, session_not_found
from ..sessions.identity import SESSION_ID_PATTERN, Grant, client_secret_hash, mint_client_secret, mint_session_id
from ..stores.base import NewSession, SessionRecord, Store, StoredMessage
from ..types import Receive, Scope, Send
from .api_codec import BodyDecoder, QueryDecoder
from .api_models import (
    MessagesQuery,
    SessionsQuery,
    list_envelope,
    message_object,
    no_cursor,
    page_slice,
    session_object,
)
from .api_types import CreateSessionRequest, ForkSessionRequest, UpdateSessionRequest
from .openapi import openapi_document
from .replies import send_error, send_failure, send_object
from .request_body import read_body
from .routes_table import ROUTES, PathItem, Route, match
from .session_listing import list_sessions

logger = logging.getLogger("statefulproxy")

MAX_MANAGEMENT_BODY = 1024 * 1024
# a page of messages bigger than this is parsed in a thread, not on the event loop
PARSE_IN_THREAD_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Call:
    """One request to one route: whose, on which session, its query and body decoded."""

    owner: str
    session_id: str  # "" on the collection
    namespace: str | None
    known: SessionRecord | None  # under a namespace: the session, already found in it
    query: Any  # the route's query model, or None
    body: Any  # the route's body model, or None


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
        handlers: dict[str, Callable[[Call], Awaitable[Any]]] = {
            "createSession": self._create,
            "listSessions": self._list,
            "getOpenAPIDocument": self._document,
            "getSession": self._get,
            "updateSession": self._update,
            "deleteSession": self._delete,
            "listMessages": self._messages,
            "clearMessages": self._clear,
            "endSession": self._end,
            "cancelSession": self._end,
            "forkSession": self._fork,
        }
        assert set(handlers) == {route.operation_id for route in ROUTES}, "a handler for each route"
        self.handlers = handlers
        self.bodies = {route.body: BodyDecoder(route.body) for route in ROUTES if route.body is not None}
        self.queries = {route.query: QueryDecoder(route.query) for route in ROUTES if route.query is not None}

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
        found = match(rest)
        if found is None:
            raise ClientError(404, f"Unknown path '{scope['path']}'.", code="not_found")
        item, session_id = found
        route = item.routes.get(method)
        owner = ""
        if not item.public:  # the document is anyone's, client secrets included
            if session_id is not None and SESSION_ID_PATTERN.fullmatch(session_id) is None:
                raise session_not_found(session_id)
            if grant is not None:
                # a client secret reads its own session and nothing else
                if route is None or not route.client_secret or session_id != grant.session_id:
                    raise _forbidden()
                owner = grant.owner
            else:
                owner = await self.owner_for(scope)
        if route is None:
            raise _not_allowed(method, scope, item)
        # Under a namespace every call first finds the session in it. Its namespace never changes,
        # so the call that follows acts on a session of this namespace (or on none: a 404).
        known = None
        if namespace is not None and session_id is not None:
            known = await self._get_in(namespace, owner, session_id)
        call = Call(
            owner=owner,
            session_id=session_id or "",
            namespace=namespace,
            known=known,
            query=self._query(route, scope["query_string"]),
            body=None if route.body is None else self.bodies[route.body].decode(await _read_body(receive)),
        )
        return route.status, await self.handlers[route.operation_id](call)

    def _query(self, route: Route, query_string: bytes) -> Any:
        if route.query is None:
            return None
        return self.queries[route.query].decode(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))

    async def _get_in(self, namespace: str, owner: str, session_id: str) -> SessionRecord:
        """The session if it is in ``namespace`` ("": in none); else a 404, as for a missing one."""
        record = await self.store.get(owner, session_id)
        if record is None or (record.namespace or "") != namespace:
            raise session_not_found(session_id)
        return record

    # --- the handlers, by operation id

    async def _document(self, call: Call) -> Any:
        return self.openapi

    async def _create(self, call: Call) -> dict[str, Any]:
        request: CreateSessionRequest = call.body
        secret = request.client_secret
        if secret is not None and self.upstream_api_key is None:
            raise ClientError(
                400,
                "Client secrets need an upstream key: set upstream_api_key, or upstream_api_key_env to the name "
                "of an environment variable holding it.",
                param="client_secret",
                code="upstream_api_key_not_configured",
            )
        new = request.new_session()
        if call.namespace is not None:
            new = dataclasses.replace(new, namespace=call.namespace or None)
        record = await self._create_unique(call.owner, new)
        body = session_object(record)
        if secret is not None:
            token = mint_client_secret()
            seconds = secret.seconds()
            grant = orjson.dumps(secret.grant())
            await self.store.put_client_secret(
                client_secret_hash(token.encode()), call.owner, record.id, seconds, grant
            )
            body["client_secret"] = {"value": token, "expires_at": int(time.time()) + seconds}
        return body

    async def _list(self, call: Call) -> dict[str, Any]:
        query: SessionsQuery = call.query
        page = await list_sessions(self.store, call.owner, query, call.namespace)
        if page is None:
            cursor = query.after if query.after is not None else query.before
            raise ClientError(400, f"No session with id '{cursor}' to page from.", param="after")
        records, has_more = page
        return list_envelope([session_object(record) for record in records], has_more)

    async def _get(self, call: Call) -> dict[str, Any]:
        return session_object(call.known or self._found(await self.store.get(call.owner, call.session_id), call))

    async def _update(self, call: Call) -> dict[str, Any]:
        update: UpdateSessionRequest = call.body
        record = await self.store.update(
            call.owner,
            call.session_id,
            title=update.title,
            metadata=update.metadata,
            history_window=update.window(),
        )
        return session_object(self._found(record, call))

    async def _delete(self, call: Call) -> dict[str, Any]:
        if not await self.store.delete(call.owner, call.session_id):
            raise session_not_found(call.session_id)
        return {"id": call.session_id, "object": "session.deleted", "deleted": True}

    async def _clear(self, call: Call) -> dict[str, Any]:
        _writable(call.known or self._found(await self.store.get(call.owner, call.session_id), call))
        return session_object(self._found(await self.store.clear(call.owner, call.session_id), call))

    async def _end(self, call: Call) -> dict[str, Any]:
        return session_object(self._found(await self.store.end(call.owner, call.session_id), call))

    async def _messages(self, call: Call) -> dict[str, Any]:
        """One page of the history: the cursors found in the store's id index, then only the page read."""
        query: MessagesQuery = call.query
        store, owner, session_id = self.store, call.owner, call.session_id
        if query.after is None and query.before is None:  # one read: desc pages count back from the end
            start = query.page * query.limit
            bounds = (start, start + query.limit) if query.order == "asc" else (-start - query.limit, -start or None)
            page = self._found(await store.messages_page(owner, session_id, *bounds), call)
            messages, has_more = page.messages, start + len(page.messages) < page.total
        else:
            cursors = [cursor for cursor in (query.after, query.before) if cursor is not None]
            positions, total = self._found(await store.message_positions(owner, session_id, cursors), call)
            found = iter(positions)
            after_at = None if query.after is None else next(found)
            before_at = None if query.before is None else next(found)
            for cursor, at, param in ((query.after, after_at, "after"), (query.before, before_at, "before")):
                if cursor is not None and at is None:
                    raise no_cursor(cursor, param)
            start, stop, has_more = page_slice(query, total, after_at, before_at)
            messages = []
            if stop > start:
                messages = self._found(await store.messages_page(owner, session_id, start, stop), call).messages
        if query.order == "desc":
            messages.reverse()
        return list_envelope(await _message_objects(messages, query.include is not None), has_more)

    async def _fork(self, call: Call) -> dict[str, Any]:
        request: ForkSessionRequest = call.body
        store, owner, session_id, up_to = self.store, call.owner, call.session_id, request.up_to_message_id
        source = call.known or self._found(await store.get(owner, session_id), call)
        if up_to is None:
            messages = self._found(await store.messages(owner, session_id), call)
        else:
            (at,), _ = self._found(await store.message_positions(owner, session_id, [up_to]), call)
            if at is None:
                raise ClientError(400, f"No message with id '{up_to}' in this session.", param="up_to_message_id")
            messages = self._found(await store.messages_page(owner, session_id, 0, at + 1), call).messages
        leading = 0
        for message in messages:
            if message_object(message)["role"] not in SYSTEM_ROLES:
                break
            leading += 1
        new = NewSession(
            title=request.title if request.title is not None else source.title,
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

    @staticmethod
    def _found(value: Any, call: Call) -> Any:
        if value is None:
            raise session_not_found(call.session_id)
        return value


async def _message_objects(messages: Sequence[StoredMessage], details: bool) -> list[dict[str, Any]]:
    if sum(len(message.replay) + len(message.info) for message in messages) > PARSE_IN_THREAD_BYTES:
        return await asyncio.to_thread(lambda: [message_object(message, details) for message in messages])
    return [message_object(message, details) for message in messages]


async def _read_body(receive: Receive) -> bytes:
    return await read_body(receive, MAX_MANAGEMENT_BODY)


def _writable(record: SessionRecord) -> None:
    if record.status != "active":
        raise ClientError(
            409, f"Session '{record.id}' is {record.status} and read-only.", code=f"session_{record.status}"
        )


def _not_allowed(method: str, scope: Scope, item: PathItem) -> ClientError:
    return ClientError(
        405,
        f"Method {method} is not allowed on '{scope['path']}'.",
        code="method_not_allowed",
        headers=[(b"allow", item.allowed.encode())],
    )


def _forbidden() -> ClientError:
    return ClientError(
        403,
        "A client secret may only chat on and read its own session.",
        type="permission_error",
        code="client_secret_scope",
    )

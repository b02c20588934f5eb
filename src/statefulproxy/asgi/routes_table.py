"""The management API's routes, each declared once (CONTRACT.md section 5).

A route names its method, its path under the API's prefix, its operation, and the models of its
query, body and answer. The management API dispatches by this table, decodes and refuses by its
models, and the OpenAPI document is generated from it: nothing about a route is said twice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from .api_models import MessagesQuery, SessionsQuery
from .api_types import (
    CreatedSession,
    CreateSessionRequest,
    ForkSessionRequest,
    MessageList,
    Session,
    SessionDeleted,
    SessionList,
    UpdateSessionRequest,
)

Method = Literal["GET", "POST", "DELETE"]
_METHODS: tuple[Method, ...] = ("GET", "POST", "DELETE")
OPENAPI_PATH = "/openapi.json"


@dataclass(frozen=True, slots=True)
class Route:
    method: Method
    path: str  # under the prefix; "{session_id}" is a session id
    operation_id: str  # also names the management API's handler
    summary: str
    status: int  # of a success
    response: Any  # the type of a success's body
    body: type[Any] | None = None  # a msgspec model
    query: type[Any] | None = None  # a msgspec model
    errors: tuple[int, ...] = ()
    client_secret: bool = False  # a session's client secret may call it, on its own session
    public: bool = False  # anyone may call it: no credential, no owner


_READ = (401, 403, 404, 503)

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "",
        "createSession",
        "Create a session",
        201,
        CreatedSession,
        body=CreateSessionRequest,
        errors=(400, 401, 403, 413, 429, 503),
    ),
    Route(
        "GET",
        "",
        "listSessions",
        "List the caller's sessions, newest first",
        200,
        SessionList,
        query=SessionsQuery,
        errors=(400, 401, 403, 503),
    ),
    Route("GET", OPENAPI_PATH, "getOpenAPIDocument", "This document", 200, dict[str, Any], public=True),
    Route("GET", "/{session_id}", "getSession", "Get a session", 200, Session, errors=_READ, client_secret=True),
    Route(
        "POST",
        "/{session_id}",
        "updateSession",
        "Update a session's title, metadata and/or history window",
        200,
        Session,
        body=UpdateSessionRequest,
        errors=(400, 401, 403, 404, 413, 503),
    ),
    Route(
        "DELETE",
        "/{session_id}",
        "deleteSession",
        "Delete a session and all its messages",
        200,
        SessionDeleted,
        errors=_READ,
    ),
    Route(
        "GET",
        "/{session_id}/messages",
        "listMessages",
        "A session's messages, oldest first",
        200,
        MessageList,
        query=MessagesQuery,
        errors=(400, *_READ),
        client_secret=True,
    ),
    Route(
        "DELETE",
        "/{session_id}/messages",
        "clearMessages",
        "Clear the history, keep the session",
        200,
        Session,
        errors=(401, 403, 404, 409, 503),
    ),
    Route(
        "POST", "/{session_id}/end", "endSession", "End a session: read-only from now on", 200, Session, errors=_READ
    ),
    Route("POST", "/{session_id}/cancel", "cancelSession", "Alias of `/end`", 200, Session, errors=_READ),
    Route(
        "POST",
        "/{session_id}/fork",
        "forkSession",
        "A new active session holding a copy of the history, up to a message",
        201,
        Session,
        body=ForkSessionRequest,
        errors=(400, 401, 403, 404, 413, 429, 503),
    ),
)

# the shared error answers: status -> (component name, description)
ERRORS: Mapping[int, tuple[str, str]] = MappingProxyType(
    {
        400: ("BadRequest", "The request is malformed: bad JSON, an unknown or invalid field or query parameter."),
        401: ("Unauthorized", "The credential is not accepted (an unknown or expired client secret)."),
        403: ("Forbidden", "A client secret used beyond the one session it opens."),
        404: ("NotFound", "No such session for this credential (another credential's session is a 404 too)."),
        405: ("MethodNotAllowed", "The path exists but not with this method."),
        409: ("Conflict", "The session is ended or expired (read-only), or full (`session_full`)."),
        413: ("PayloadTooLarge", "The body (a chat turn's, history spliced in) is larger than the proxy accepts."),
        429: ("RateLimited", "Over a rate limit or the session cap: nothing done. Retry after `Retry-After` seconds."),
        503: ("StoreUnavailable", "The session store did not answer."),
    }
)


@dataclass(frozen=True, slots=True)
class PathItem:
    """The routes of one path, by method."""

    path: str
    pattern: re.Pattern[str]
    routes: Mapping[str, Route] = field(default_factory=dict)
    public: bool = False

    @property
    def allowed(self) -> str:
        """The ``Allow`` header of a 405 here."""
        return ", ".join(method for method in _METHODS if method in self.routes)


def path_items(routes: Sequence[Route]) -> tuple[PathItem, ...]:
    """The table by path, literal paths first (``/openapi.json`` is not a session id). A path with a
    parameter, and the collection, match with a trailing slash too; the document's path exactly."""
    by_path: dict[str, dict[str, Route]] = {}
    for route in routes:
        by_path.setdefault(route.path, {})[route.method] = route
    items = []
    for path, methods in sorted(by_path.items(), key=lambda item: "{" in item[0]):
        public = all(route.public for route in methods.values())
        pattern = re.escape(path).replace(re.escape("{session_id}"), "(?P<session_id>[^/]+)")
        items.append(
            PathItem(path, re.compile(pattern if public else pattern + "/?"), MappingProxyType(methods), public)
        )
    return tuple(items)


PATH_ITEMS = path_items(ROUTES)


def match(rest: str) -> tuple[PathItem, str | None] | None:
    """The path item ``rest`` (the path under the prefix) falls under, and its session id."""
    for item in PATH_ITEMS:
        found = item.pattern.fullmatch(rest)
        if found is not None:
            return item, found.groupdict().get("session_id")
    return None

"""The OpenAPI 3.1 document of the management API (CONTRACT.md section 5), as plain data.

Built fresh on each call (no shared mutable state) for the prefix the API is mounted at; paths are absolute.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

OPENAPI_PATH_SUFFIX = "/openapi.json"

API_VERSION = "1.0.0"
SESSION_ID_PATTERN = "^[A-Za-z0-9._:-]{1,128}$"
MAX_LIMIT = 100
DEFAULT_LIMIT = 20
MAX_TITLE_LENGTH = 256
MAX_EXPIRY_SECONDS = 365 * 24 * 3600
MAX_CLIENT_SECRET_SECONDS = 7 * 24 * 3600
MAX_COUNT = 2**31 - 1
_COUNT = {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_COUNT}
_INT = {"type": "integer"}

Schema = dict[str, Any]

_ERRORS = MappingProxyType(
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


def openapi_document(prefix: str = "/v1/sessions") -> dict[str, Any]:
    """The OpenAPI 3.1.0 document for the management API mounted at ``prefix``."""
    session = f"{prefix}/{{session_id}}"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "statefulproxy session management API",
            "version": API_VERSION,
            "description": (
                "Server-side conversation sessions, scoped to the caller's credential: `Authorization: Bearer`, "
                "else `x-api-key`, else `api-key`; a request with none uses the anonymous scope. "
                "Timestamps are unix seconds. Errors use the OpenAI shape; `components.responses` also describes "
                "the errors a chat request on a session can get (409 ended, expired or full, 429 over a limit)."
            ),
        },
        "security": [{"bearer": []}, {"x-api-key": []}, {"api-key": []}, {}],
        "paths": {
            prefix: {
                "post": _operation(
                    "createSession",
                    "Create a session",
                    201,
                    "CreatedSession",
                    body=("CreateSessionRequest", False),
                    errors=(400, 401, 403, 413, 429, 503),
                ),
                "get": _operation(
                    "listSessions",
                    "List the caller's sessions, newest first",
                    200,
                    "SessionList",
                    parameters=_list_parameters("desc", "session", *_session_filters()),
                    errors=(400, 401, 403, 503),
                ),
            },
            prefix + OPENAPI_PATH_SUFFIX: {
                "get": {
                    "operationId": "getOpenAPIDocument",
                    "summary": "This document",
                    "security": [{}],
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            session: {
                "parameters": [_session_id()],
                "get": _operation("getSession", "Get a session", 200, "Session", errors=(401, 403, 404, 503)),
                "post": _operation(
                    "updateSession",
                    "Update a session's title, metadata and/or history window",
                    200,
                    "Session",
                    body=("UpdateSessionRequest", False),
                    errors=(400, 401, 403, 404, 413, 503),
                ),
                "delete": _operation(
                    "deleteSession",
                    "Delete a session and all its messages",
                    200,
                    "SessionDeleted",
                    errors=(401, 403, 404, 503),
                ),
            },
            session + "/messages": {
                "parameters": [_session_id()],
                "get": _operation(
                    "listMessages",
                    "A session's messages, oldest first",
                    200,
                    "MessageList",
                    parameters=_list_parameters("asc", "message", _page()),
                    errors=(400, 401, 403, 404, 503),
                ),
                "delete": _operation(
                    "clearMessages",
                    "Clear the history, keep the session",
                    200,
                    "Session",
                    errors=(401, 403, 404, 409, 503),
                ),
            },
            session + "/end": {
                "parameters": [_session_id()],
                "post": _operation(
                    "endSession", "End a session: read-only from now on", 200, "Session", errors=(401, 403, 404, 503)
                ),
            },
            session + "/cancel": {
                "parameters": [_session_id()],
                "post": _operation("cancelSession", "Alias of `/end`", 200, "Session", errors=(401, 403, 404, 503)),
            },
            session + "/fork": {
                "parameters": [_session_id()],
                "post": _operation(
                    "forkSession",
                    "A new active session holding a copy of the history, up to a message",
                    201,
                    "Session",
                    body=("ForkSessionRequest", False),
                    errors=(400, 401, 403, 404, 413, 429, 503),
                ),
            },
        },
        "components": {
            "schemas": _schemas(),
            "responses": {
                name: _error_response(description, status == 429) for status, (name, description) in _ERRORS.items()
            },
            "headers": {
                "Retry-After": {
                    "description": "Seconds to wait before retrying.",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 0},
                }
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key, or a `spcs_` secret."},
                "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                "api-key": {"type": "apiKey", "in": "header", "name": "api-key"},
            },
        },
    }


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"oneOf": [schema, {"type": "null"}]}


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _strict(required: list[str], **properties: Schema) -> Schema:
    return {"type": "object", "additionalProperties": False, "required": required, "properties": properties}


def _operation(
    operation_id: str,
    summary: str,
    status: int,
    schema: str,
    *,
    body: tuple[str, bool] | None = None,
    parameters: list[Schema] | None = None,
    errors: tuple[int, ...] = (),
) -> Schema:
    responses: Schema = {str(status): {"description": summary, "content": _json(_ref(schema))}}
    for error in errors:
        responses[str(error)] = {"$ref": f"#/components/responses/{_ERRORS[error][0]}"}
    operation: Schema = {"operationId": operation_id, "summary": summary}
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        name, required = body
        operation["requestBody"] = {"required": required, "content": _json(_ref(name))}
    operation["responses"] = responses
    return operation


def _error_response(description: str, retry_after: bool) -> Schema:
    response: Schema = {"description": description, "content": _json(_ref("Error"))}
    if retry_after:
        response["headers"] = {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}
    return response


def _session_id() -> Schema:
    return {"name": "session_id", "in": "path", "required": True, "schema": _session_id_schema()}


def _session_id_schema() -> Schema:
    return {"type": "string", "pattern": SESSION_ID_PATTERN}


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _list_parameters(order: str, item: str, *extra: Schema) -> list[Schema]:
    # session ids have a pattern; message ids are the proxy's own and any string is looked up
    cursor: Schema = {"type": "string", "pattern": SESSION_ID_PATTERN} if item == "session" else {"type": "string"}
    return [
        _query(
            "limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}, "Page size."
        ),
        _query("order", {"type": "string", "enum": ["asc", "desc"], "default": order}, "By creation time."),
        _query("after", cursor, f"A {item} id: the page starts after it (in this order)."),
        _query("before", cursor, f"A {item} id: the page ends before it (in this order)."),
        *extra,
    ]


def _session_filters() -> list[Schema]:
    return [
        _query("status", {"type": "string", "enum": ["active", "ended", "expired"]}, "Only sessions in this status."),
        {
            "name": "metadata",
            "in": "query",
            "style": "deepObject",
            "explode": True,
            "description": "`metadata[KEY]=VALUE`: only sessions whose metadata has all these pairs.",
            "schema": {"type": "object", "propertyNames": {"minLength": 1}, "additionalProperties": {"type": "string"}},
        },
    ]


def _page() -> Schema:
    description = "Zero-based page number, `limit` messages a page (for clients built on page numbers)."
    return _query("page", {"type": "integer", "minimum": 0, "maximum": 1 << 31}, description)


def _list(item: str) -> Schema:
    return _strict(
        ["object", "data", "first_id", "last_id", "has_more"],
        object={"const": "list"},
        data={"type": "array", "items": _ref(item)},
        first_id={"type": ["string", "null"]},
        last_id={"type": ["string", "null"]},
        has_more={"type": "boolean"},
    )


def _session_properties() -> dict[str, Schema]:
    return {
        "id": _session_id_schema(),
        "object": {"const": "session"},
        "title": {"type": ["string", "null"]},
        "status": {"type": "string", "enum": ["active", "ended", "expired"]},
        "message_count": {"type": "integer", "minimum": 0},
        "created_at": {"type": "integer"},
        "last_active_at": {"type": "integer"},
        "expires_at": {"type": ["integer", "null"], "description": "When it expires or expired; null when never."},
        "expires_after": _nullable(_ref("ExpiresAfter")),
        "rate_limits": _ref("RateLimits"),
        "max_requests": _COUNT,
        "request_count": {"type": "integer", "minimum": 0},
        "history_window": _nullable(_ref("HistoryWindow")),
        "namespace": {"type": ["string", "null"], "description": "The path prefix it was created under, if any."},
        "metadata": _ref("Metadata"),
        "usage": _ref("Usage"),
    }


def _schemas() -> dict[str, Schema]:
    session = _session_properties()
    title = {"type": ["string", "null"], "maxLength": MAX_TITLE_LENGTH}
    secret_seconds = {"type": "integer", "minimum": 1, "maximum": MAX_CLIENT_SECRET_SECONDS}
    function = _strict(["name", "arguments"], name={"type": "string"}, arguments={"type": "string"})
    limit = {"type": "integer", "minimum": 0, "maximum": MAX_COUNT}
    # null or an omitted limit is 0, no limit; null as the whole window: none (update: remove it)
    limit_or_null = {**limit, "type": ["integer", "null"]}
    window_request = _nullable(_strict([], max_messages=limit_or_null, max_tokens=limit_or_null))
    tool_call = _strict(["id", "type", "function"], id={"type": "string"}, type={"type": "string"}, function=function)
    return {
        "Session": _strict(list(session), **session),
        "CreatedSession": {
            **_strict(list(session), **session, client_secret=_ref("ClientSecret")),
            "description": "A new session; `client_secret` is present when one was requested, and shown only here.",
        },
        "SessionList": _list("Session"),
        "SessionDeleted": _strict(
            ["id", "object", "deleted"],
            id={"type": "string"},
            object={"const": "session.deleted"},
            deleted={"const": True},
        ),
        "Message": _strict(
            ["id", "object", "role", "content", "created_at"],
            id={"type": "string"},
            object={"const": "session.message"},
            role={"type": "string"},
            content={
                "oneOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "object"}},
                    {"type": "null"},
                ]
            },
            created_at={"type": "integer"},
            name={"type": "string"},
            tool_calls={"type": "array", "items": tool_call},
            tool_call_id={"type": "string"},
            refusal={"type": "string"},
            reasoning={"type": "string"},
        ),
        "MessageList": _list("Message"),
        "Usage": {
            "type": "object",
            "description": "Token totals the upstream reported for this session's turns.",
            "additionalProperties": {"type": "integer"},
        },
        "Metadata": {
            "type": "object",
            "maxProperties": 16,
            "propertyNames": {"maxLength": 64},
            "additionalProperties": {"type": "string", "maxLength": 512},
        },
        "ExpiresAfter": _strict(
            ["anchor", "seconds"],
            anchor={"type": "string", "enum": ["created_at", "last_active_at"]},
            seconds={"type": "integer", "minimum": 1, "maximum": MAX_EXPIRY_SECONDS},
        ),
        "HistoryWindow": {
            **_strict(["max_messages", "max_tokens"], max_messages=limit, max_tokens=limit),
            "description": "What is spliced upstream (never what is stored), 0 no limit; null: the settings' window.",
        },
        "RateLimits": _strict(["max_requests_per_1_minute"], max_requests_per_1_minute=_COUNT),
        "ClientSecret": _strict(
            ["value", "expires_at"], value={"type": "string", "pattern": "^spcs_"}, expires_at=_INT
        ),
        # null stands for an absent field (OpenAI's way); client_secret.expires_after defaults to 600 s
        "CreateSessionRequest": _strict(
            [],
            title=title,
            metadata=_nullable(_ref("Metadata")),
            expires_after=_nullable(_ref("ExpiresAfter")),
            rate_limits=_nullable(
                _strict([], max_requests_per_1_minute={"type": ["integer", "null"], "minimum": 1, "maximum": MAX_COUNT})
            ),
            max_requests=_COUNT,
            history_window=window_request,
            client_secret=_nullable(
                _strict(
                    [],
                    expires_after={
                        "oneOf": [
                            secret_seconds,
                            _strict(["seconds"], anchor={"const": "created_at"}, seconds=secret_seconds),
                        ]
                    },
                    dialect={"enum": ["openai", "anthropic", "ollama", "gemini", None]},
                    model={"type": ["string", "null"], "minLength": 1},
                    max_tokens={**_COUNT},
                )
            ),
        ),
        "UpdateSessionRequest": {
            **_strict([], title=title, metadata=_nullable(_ref("Metadata")), history_window=window_request),
            "description": "Only the fields present change; a `history_window` of null removes the window.",
        },
        "ForkSessionRequest": _strict([], up_to_message_id={"type": ["string", "null"]}, title=title),
        "Error": _strict(
            ["error"],
            error=_strict(
                ["message", "type", "param", "code"],
                message={"type": "string"},
                type={"type": "string"},
                param={"type": ["string", "null"]},
                code={"type": ["string", "null"]},
            ),
        ),
    }

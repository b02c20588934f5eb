"""The exceptions statefulproxy raises, and the error replies it sends.

    StatefulProxyError
    ├── ConfigError          bad settings; raised at startup, names the offending key
    ├── StoreError           the session store failed (redis errors are translated to this)
    ├── SessionBusy          another turn holds the session's lease
    ├── ClientGone           the client disconnected while its turn waited: nobody to answer
    ├── UpstreamError        the upstream could not be reached or timed out
    │   └── UpstreamTimeout
    └── ClientError          the request is wrong; carries the HTTP status and OpenAI error fields
        (400, 404, 409, 413, ...: type invalid_request_error, as OpenAI's own)

Every error a client sees uses the OpenAI shape
``{"error": {"message", "type", "param", "code"}}`` (or its dialect's). A fault every API can
meet (a body that is not JSON, an unknown session, a body too large) is made by one function
below, so the chat path, the management API and the simple chat API word it alike.
"""

from __future__ import annotations

import orjson


class StatefulProxyError(Exception):
    """Base class of every statefulproxy exception."""


class ConfigError(StatefulProxyError):
    """A setting is missing or invalid. The message names the key."""


class StoreError(StatefulProxyError):
    """The session store did not answer or answered with an error."""


class SessionBusy(StatefulProxyError):
    """Another turn holds the session's lease."""


class ClientGone(StatefulProxyError):
    """The client went away while its turn waited for the session: the turn is dropped."""


class UpstreamError(StatefulProxyError):
    """The upstream could not be reached."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time."""


class ClientError(StatefulProxyError):
    """A request the proxy refuses. Rendered as an OpenAI-shaped error reply."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or []


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def invalid_json() -> ClientError:
    """400 for a request body that is not JSON at all."""
    return ClientError(400, "The request body is not valid JSON.", code="invalid_json")


def not_an_object() -> ClientError:
    """400 for a request body that is JSON, but not an object."""
    return ClientError(400, "The request body must be a JSON object.", code="invalid_body")


def session_not_found(session_id: str, param: str | None = None) -> ClientError:
    """404 for a session that does not exist, or is another credential's (indistinguishable)."""
    # OpenAI answers an unknown object so: 404, invalid_request_error ("No such File object: ...",
    # "No assistant found with id '...'."); its SDK picks NotFoundError by the status alone.
    return ClientError(404, f"No session found with id '{session_id}'.", param=param, code="not_found")


def body_too_large(limit: int, setting: str | None = None, *, decoded: bool = False) -> ClientError:
    """413 for a body over ``limit`` bytes; ``setting`` names the setting that sets the limit, if one does."""
    body = "The decoded request body" if decoded else "The request body"
    cap = f"the {limit} bytes this endpoint accepts" if setting is None else f"{setting} ({limit} bytes)"
    return ClientError(413, f"{body} is larger than {cap}.", code="request_too_large")

"""The exceptions statefulproxy raises, and the error replies it sends.

    StatefulProxyError
    ├── ConfigError          bad settings; raised at startup, names the offending key
    ├── StoreError           the session store failed (redis errors are translated to this)
    ├── SessionBusy          another turn holds the session's lease
    ├── ClientGone           the client disconnected while its turn waited: nobody to answer
    ├── UpstreamError        the upstream could not be reached or timed out
    │   └── UpstreamTimeout
    └── ClientError          the request is wrong; carries the HTTP status and OpenAI error fields
        (400 invalid_request_error, 404 not_found, 409 conflict, 413 too large, ...)

Every error a client sees uses the OpenAI shape
``{"error": {"message", "type", "param", "code"}}``.
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

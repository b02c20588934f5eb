"""CORS for browser clients (issue 13): the proxy answers preflights to its own paths and names the allowed origin.

Only the paths the proxy serves itself take part: the management API (under its prefix or a
namespace's), the chat paths of every dialect, the simple chat API and the session browser. A
preflight to one of them is answered here and never forwarded: the upstream does not know the
proxy's paths, and a provider's answer would not speak for them. A preflight to any other path
is the upstream's, as before.

Only the origins of ``cors_origins`` are allowed. ``*`` allows any origin, never with credentials
(Fetch standard, "CORS protocol and credentials"); a listed origin is echoed back with them.

Cost: the app compares the method with ``OPTIONS`` on every request; with ``cors_origins`` set, a
request also has its headers scanned once for ``Origin``. Nothing else reaches the hot path.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable

from ..dialects import dialect_for_path
from ..errors import ClientError
from ..routes import match_namespace, match_route
from ..settings import Settings
from ..types import Headers, Message, Scope, Send
from .replies import send_error

_ORIGIN = b"origin"
_REQUEST_METHOD = b"access-control-request-method"
_REQUEST_HEADERS = b"access-control-request-headers"
_REQUEST_PRIVATE_NETWORK = b"access-control-request-private-network"
_ALLOW_METHODS = b"GET, HEAD, POST, DELETE, OPTIONS"
# what a browser client may read of the proxy's answers besides the CORS-safelisted headers
_EXPOSE = b"x-session-id, x-session-replayed, x-request-id, retry-after"
_HEADER_LIST = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:[ \t]*,[ \t]*[!#$%&'*+\-.^_`|~0-9A-Za-z]+)*")
MAX_AGE = b"600"  # seconds a browser may cache a preflight's answer (Chromium caps it at 7200)


class CorsPolicy:
    """Which origins may call the proxy's own paths from a page, and the headers that say so."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = bool(settings.cors_origins)
        self.listed = frozenset(origin.encode() for origin in settings.cors_origins if origin != "*")
        self.any_origin = "*" in settings.cors_origins
        self.ui_prefix = settings.ui_prefix if settings.ui else None
        self.sessions_prefix = settings.sessions_prefix
        self.simple_prefix = settings.simple_chat_prefix
        self.namespaces = settings.session_namespaces
        self.routes = settings.route_table

    def serves(self, path: str) -> bool:
        """Whether ``path`` is one of the proxy's own: the browser, the management API or a chat path."""
        if dialect_for_path(path) is not None:
            return True
        if self.ui_prefix is not None and _under(path, self.ui_prefix):
            return True
        found = match_route(self.routes, path)
        if found is not None:
            route, path = found
            if route.chat_path(path) is not None:
                return True
        if self.simple_prefix is not None and _under(path, self.simple_prefix):
            return True
        namespace = match_namespace(self.namespaces, path) if self.namespaces else None
        if namespace is not None:
            return _under(namespace[1], "/sessions")
        return _under(path, self.sessions_prefix)

    def allow(self, origin: bytes) -> Headers | None:
        """The headers that allow ``origin`` (without Vary), or None when it is not allowed."""
        if origin in self.listed:
            return [(b"access-control-allow-origin", origin), (b"access-control-allow-credentials", b"true")]
        if self.any_origin:
            return [(b"access-control-allow-origin", b"*")]
        return None

    async def answer_preflight(self, scope: Scope, send: Send) -> bool:
        """Answer ``scope`` if it is a preflight to one of the proxy's paths; False, and nothing sent, if not."""
        origin = method = None
        requested = b""
        private_network = False
        for name, value in scope["headers"]:
            if name == _REQUEST_METHOD:
                method = value
            elif name == _ORIGIN:
                origin = value
            elif name == _REQUEST_HEADERS:
                requested = value.strip()
            elif name == _REQUEST_PRIVATE_NETWORK:
                private_network = value.strip().lower() == b"true"
        if method is None or not self.serves(scope["path"]):
            return False
        allowed = None if origin is None else self.allow(origin)
        if allowed is None:
            shown = "none" if origin is None else repr(origin.decode("latin-1")[:200])
            await send_error(
                send,
                ClientError(
                    403,
                    f"Cross-origin requests from origin {shown} are not allowed (cors_origins).",
                    type="permission_error",
                    code="cors_origin_not_allowed",
                    headers=[(b"vary", b"Origin")],
                ),
            )
            return True
        headers = [
            *allowed,
            (b"access-control-allow-methods", _ALLOW_METHODS),
            (b"access-control-max-age", MAX_AGE),
            (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
            (b"content-length", b"0"),
        ]
        if requested and _HEADER_LIST.fullmatch(requested):
            headers.append((b"access-control-allow-headers", requested))  # the listed origin is trusted with them
        if private_network:  # Chromium's Private Network Access: a public page calling a proxy on a private address
            headers.append((b"access-control-allow-private-network", b"true"))
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return True

    def sending_allowed(self, scope: Scope, send: Send) -> Send:
        """``send``, naming the allowed origin on the answer of a cross-origin request to the proxy's paths.

        The answer's own ``Access-Control-*`` headers (an upstream's) are replaced, so a chat reply
        never carries two origins, nor a provider's ``*``, for a page the proxy does not allow.
        """
        origin = None
        for name, value in scope["headers"]:
            if name == _ORIGIN:
                origin = value
                break
        if origin is None or not self.serves(scope["path"]):
            return send
        allowed = self.allow(origin) or []
        added: Headers = [*allowed, (b"vary", b"Origin")]
        if allowed:
            added.append((b"access-control-expose-headers", _EXPOSE))

        def send_with_origin(message: Message) -> Awaitable[None]:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", ())
                    if not name.lower().startswith(b"access-control-")
                ]
                message = {**message, "headers": headers + added}
            return send(message)

        return send_with_origin


def _under(path: str, prefix: str) -> bool:
    return path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/")

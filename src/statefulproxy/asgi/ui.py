"""The session browser under ``ui_prefix`` (issue 13): the package's static files, served with a strict policy.

The files live in ``statefulproxy/ui/`` and are read once, when the app is built; a request is
answered from that table, so no path a client sends ever reaches the file system (no traversal).
Every page is served with a Content-Security-Policy that allows no inline script or style and
connects only to the proxy itself (and the ``cors_origins``), and may not be framed. The widget
script is the exception: other sites load it, so it may be read cross-origin.

``config.json`` tells the pages where the proxy's API is; it is made from the settings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from ..errors import ClientError
from ..settings import Settings
from ..types import Headers, Receive, Scope, Send
from .replies import send_error

UI_FILES: Final = Path(__file__).resolve().parent.parent / "ui"
WIDGET: Final = "widget.js"
CONTENT_TYPES: Final = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".json": b"application/json",
    ".webmanifest": b"application/manifest+json",
}
_COMMON: Final[Headers] = [
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-cache"),  # revalidated every time: the ETag makes that a 304
]


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    headers: Headers  # content type and policy, without length and ETag
    etag: bytes


class UIApp:
    """A pure ASGI app for the paths under ``ui_prefix``."""

    def __init__(self, settings: Settings, version: str = "", files: Path = UI_FILES) -> None:
        self.prefix = settings.ui_prefix
        connect = " ".join(["'self'", *(origin for origin in settings.cors_origins if origin != "*")])
        policy = (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
            f"connect-src {connect}; font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'"
        )
        page: Headers = [
            *_COMMON,
            (b"content-security-policy", policy.encode()),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"cross-origin-resource-policy", b"same-origin"),
        ]
        embeddable: Headers = [*_COMMON, (b"cross-origin-resource-policy", b"cross-origin")]
        self.assets: dict[str, Asset] = {}
        for path in sorted(files.iterdir()):
            content_type = CONTENT_TYPES.get(path.suffix)
            if content_type is None or not path.is_file():
                continue
            policy_headers = embeddable if path.name == WIDGET else page
            self.assets["/" + path.name] = _asset(path.read_bytes(), [(b"content-type", content_type), *policy_headers])
        config = {
            "sessions_prefix": settings.sessions_prefix,
            "chat_path": "/v1/chat/completions",
            "session_header": settings.session_headers[0],
            "ui_prefix": settings.ui_prefix,
            "version": version,
        }
        self.assets["/config.json"] = _asset(orjson.dumps(config), [(b"content-type", CONTENT_TYPES[".json"]), *page])
        self.assets["/"] = self.assets["/index.html"]

    def owns(self, path: str) -> bool:
        prefix = self.prefix
        return path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            error = ClientError(
                405,
                f"Method {method} is not allowed here.",
                code="method_not_allowed",
                headers=[(b"allow", b"GET, HEAD")],
            )
            await send_error(send, error)
            return
        rest = scope["path"][len(self.prefix) :]
        if rest == "":  # the pages' relative links need the slash
            query: bytes = scope.get("query_string", b"")
            location = (self.prefix + "/").encode() + (b"?" + query if query else b"")
            headers = [(b"location", location), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 308, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        asset = self.assets.get(rest)
        if asset is None:
            await send_error(send, ClientError(404, f"No file '{scope['path']}'.", code="not_found"))
            return
        headers = [*asset.headers, (b"etag", asset.etag)]
        if _matches(scope["headers"], asset.etag):
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        headers.append((b"content-length", str(len(asset.body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else asset.body})


def _asset(body: bytes, headers: Headers) -> Asset:
    return Asset(body, headers, b'"' + hashlib.sha256(body).hexdigest()[:24].encode() + b'"')


def _matches(headers: Headers, etag: bytes) -> bool:
    """Whether the request's If-None-Match names ``etag`` (weakly compared, RFC 9110 13.1.2)."""
    for name, value in headers:
        if name == b"if-none-match":
            for tag in value.split(b","):
                tag = tag.strip()
                if tag == b"*" or tag.removeprefix(b"W/") == etag:
                    return True
    return False

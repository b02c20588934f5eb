"""The proxy: request-head checks, then SessionMiddleware around the passthrough app; health endpoints, lifespan."""

from __future__ import annotations

import json
import logging
import os

from .asgi.guards import check_request_head
from .asgi.middleware import SessionMiddleware
from .asgi.passthrough import PassthroughApp
from .asgi.replies import send_error, send_failure, send_object
from .errors import ClientError, ConfigError, StoreError
from .routes import CHAT_DIALECT_KEY, ROUTE_KEY, match_route
from .settings import CLIENT_TIMEOUTS_STATE, Settings, load_settings
from .stores import MemoryStore, Store, store_from_url
from .types import Receive, Scope, Send
from .upstream import UpstreamClient, UpstreamTimeouts

logger = logging.getLogger("statefulproxy")


class ProxyApp:
    """The ASGI app ``statefulproxy`` serves. Opens and closes its clients in the lifespan."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        if not settings.route_table:
            raise ConfigError(
                "upstream: required (--upstream, STATEFULPROXY_UPSTREAM or `upstream` in the config file), "
                "unless `routes` are set"
            )
        self.settings = settings
        self.routes = settings.route_table
        only = self.routes[0] if len(self.routes) == 1 else None
        self.only_route = only if only is not None and not only.prefix and not only.chat_paths else None
        self.upstream = UpstreamClient(
            timeouts=UpstreamTimeouts(connect=settings.connect_timeout, read=settings.read_timeout),
            max_connections=settings.upstream_max_connections,
        )
        self.store = (
            store
            if store is not None
            else store_from_url(
                settings.store,
                ttl=settings.session_ttl,
                timeout=settings.store_timeout,
                key_prefix=settings.store_prefix,
                max_sessions_per_owner=settings.max_sessions_per_owner,
                memory_max_sessions=settings.memory_max_sessions,
            )
        )
        self.sessions = SessionMiddleware(PassthroughApp(self.upstream), self.store, settings=settings)
        self.healthz = settings.health_prefix + "/healthz"
        self.readyz = settings.health_prefix + "/readyz"
        self.max_headers = settings.max_headers
        self.max_header_bytes = settings.max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # before anything reads the request: nothing of a refused one is forwarded or stored
            error = check_request_head(scope["headers"], self.max_headers, self.max_header_bytes)
            if error is not None:
                await send_error(send, error)
                return
            path = scope["path"]
            if path == self.healthz:
                await send_object(send, 200, {"status": "ok"})
            elif path == self.readyz:
                await self._ready(send)
            else:
                await self._route(scope, receive, send)
        elif scope["type"] == "lifespan":
            if "state" in scope:  # for the server's slow-client timers (server.py)
                timeouts = (self.settings.client_header_timeout, self.settings.client_body_timeout)
                scope["state"][CLIENT_TIMEOUTS_STATE] = timeouts
            await self._lifespan(receive, send)
        # websockets are not proxied: returning without accepting closes them

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.only_route is not None:  # --upstream alone: nothing to match
            scope[ROUTE_KEY] = self.only_route
            await self.sessions(scope, receive, send)
            return
        found = match_route(self.routes, scope["path"])
        if found is None:
            message = f"No route for '{scope['path']}'."
            await send_error(send, ClientError(404, message, type="not_found_error", code="no_route"))
            return
        route, rest = found
        chat = route.chat_path(rest)
        if chat is not None:
            scope = {
                **scope,
                "path": chat.upstream_path,
                "raw_path": chat.upstream_path.encode(),
                CHAT_DIALECT_KEY: chat.dialect,
            }
        elif route.prefix:
            raw: bytes = scope.get("raw_path") or scope["path"].encode()
            prefix = route.prefix.encode()
            scope = {**scope, "path": rest, "raw_path": raw[len(prefix) :] if raw.startswith(prefix) else rest.encode()}
        scope[ROUTE_KEY] = route
        await self.sessions(scope, receive, send)

    async def _ready(self, send: Send) -> None:
        if await self.store.ping():
            await send_object(send, 200, {"status": "ready"})
        else:
            await send_failure(send, 503, "The session store does not answer.", "store_error", "store_unavailable")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.settings.scope_secret is None and not isinstance(self.store, MemoryStore):
                    logger.warning(
                        "scope_secret is not set: owners are keyed by a secret kept in the shared store, and "
                        "sessions are orphaned if the store loses it; set scope_secret on every replica"
                    )
                try:
                    await self.upstream.open()
                    await self.store.open()
                except StoreError as exc:
                    # not fatal: /readyz says so, session requests get 503, the rest flows,
                    # and the store client reconnects by itself when the store is back
                    logger.error("session store unavailable at startup: %s", exc)
                except Exception as exc:  # any other startup failure stops the server, with its reason
                    await self.upstream.aclose()
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.sessions.service.aclose()
                await self.upstream.aclose()
                await self.store.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings) -> ProxyApp:
    """The proxy app for ``settings``; nothing connects until its lifespan starts."""
    return ProxyApp(settings)


# the command line a worker process rebuilds its settings from (with the environment it inherits)
WORKER_ARGS_ENV = "STATEFULPROXY_WORKER_ARGS"


def app_from_environment() -> ProxyApp:
    """The app of one ``--workers`` process: the CLI's flags are in ``WORKER_ARGS_ENV``."""
    cli = json.loads(os.environ[WORKER_ARGS_ENV])
    return create_app(load_settings(cli, os.environ))

"""The proxy: request-head checks, then SessionMiddleware around the passthrough app; health endpoints, lifespan."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from .asgi.cors import CorsPolicy
from .asgi.exchange import Exchange
from .asgi.guards import check_request_head
from .asgi.middleware import SessionMiddleware
from .asgi.observe import RequestObserver
from .asgi.passthrough import PassthroughApp
from .asgi.replies import send_error, send_failure, send_object
from .asgi.ui import UIApp
from .dialects import DIALECTS
from .errors import ClientError, ConfigError, StoreError
from .logs import Incidents, background_failure_handler, log_startup
from .metrics import SESSION, STATELESS, Metrics, MetricsServer
from .mock_upstream import MockUpstream, uses_mock
from .routes import CHAT_DIALECT_KEY, ROUTE_KEY, match_route
from .settings import CLIENT_TIMEOUTS_STATE, Settings, load_settings
from .shutdown import GracefulShutdown
from .stores import MemoryStore, Store, store_from_url
from .stores.metered import MeteredStore
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
        self.mock_upstream = MockUpstream() if uses_mock(self.routes) else None  # --upstream mock://
        self.upstream = UpstreamClient(
            timeouts=UpstreamTimeouts(connect=settings.connect_timeout, read=settings.read_timeout),
            max_connections=settings.upstream_max_connections,
        )
        inner = (
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
        self.metrics = metrics = Metrics(process=True, version=_version())
        self.store: Store = MeteredStore(inner, metrics)
        self.sessions = SessionMiddleware(PassthroughApp(self.upstream), self.store, settings=settings, metrics=metrics)
        self.draining = draining = self.sessions.draining
        self.shutdown = GracefulShutdown(draining, settings.shutdown_timeout)
        self.observer = RequestObserver(metrics, log_requests=settings.access_log)
        metrics.gauge("statefulproxy_session_turns_in_flight", "Session turns running.", lambda: draining.turns)
        metrics.gauge(
            "statefulproxy_leases_active", "Session leases held by this process's turns.", lambda: draining.leases
        )
        metrics.gauge("statefulproxy_shutting_down", "1 once a SIGTERM was received.", lambda: int(draining.started))
        if isinstance(inner, MemoryStore):  # a Redis store would need a scan: not counted
            metrics.gauge(
                "statefulproxy_sessions",
                "Sessions in the memory store, expired ones not yet swept included.",
                inner.__len__,
            )
        self.metrics_server = (
            MetricsServer(metrics, settings.host, settings.metrics_port) if settings.metrics_port is not None else None
        )
        self.memory_store = isinstance(inner, MemoryStore)
        self.healthz = settings.health_prefix + "/healthz"
        self.readyz = settings.health_prefix + "/readyz"
        self.metrics_path = settings.health_prefix + "/metrics"
        self.max_headers = settings.max_headers
        self.max_header_bytes = settings.max_header_bytes
        self.cors = CorsPolicy(settings)  # the session browser's and other pages' requests (issue 13)
        self.ui = UIApp(settings, _version()) if settings.ui else None
        self._exception_handler: Callable[..., Any] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # before anything reads the request: nothing of a refused one is forwarded or stored
            error = check_request_head(scope["headers"], self.max_headers, self.max_header_bytes)
            if error is not None:
                self.metrics.count(STATELESS, None, error.status, None, 0.0)
                await send_error(send, error)
                return
            path = scope["path"]
            if path == self.healthz:
                await send_object(send, 200, {"status": "ok"})
                return
            if path == self.readyz:
                await self._ready(send)
                return
            if path == self.metrics_path:
                await self._scrape(scope, send)
                return
            if scope["method"] == "OPTIONS" and await self.cors.answer_preflight(scope, send):
                return
            if self.cors.enabled:
                send = self.cors.sending_allowed(scope, send)
            if self.ui is not None and path.startswith(self.ui.prefix) and self.ui.owns(path):
                await self.ui(scope, receive, send)
                return
            exchange, send = self.observer.begin(scope, send)
            task = asyncio.current_task()
            assert task is not None
            requests = self.shutdown.requests
            requests.add(task)
            try:
                await self._route(scope, receive, send)
            except asyncio.CancelledError:
                if not self.shutdown.cutting:
                    raise
                task.uncancel()
                await self._cut(exchange, send)
            finally:
                requests.discard(task)
                self.observer.finish(exchange, scope)
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
        if self.draining.started:
            await send_failure(send, 503, "The proxy is shutting down.", "server_error", "shutting_down")
        elif await self.store.ping():
            await send_object(send, 200, {"status": "ready"})
        else:
            await send_failure(send, 503, "The session store does not answer.", "store_error", "store_unavailable")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                log_startup(self.settings, _version())
                loop = asyncio.get_running_loop()
                self._exception_handler = loop.get_exception_handler()
                loop.set_exception_handler(background_failure_handler(Incidents()))
                if self.settings.scope_secret is None and not self.memory_store:
                    logger.warning(
                        "scope_secret is not set: owners are keyed by a secret kept in the shared store, and "
                        "sessions are orphaned if the store loses it; set scope_secret on every replica"
                    )
                try:
                    if self.mock_upstream is not None:  # serve it first, and send its routes' requests to it
                        self.routes = await self.mock_upstream.start(self.routes)
                        self.only_route = self.routes[0] if self.only_route is not None else None
                    await self.upstream.open()
                    if self.metrics_server is not None:
                        await self._serve_metrics(self.metrics_server)
                    await self.store.open()
                except StoreError as exc:
                    # not fatal: /readyz says so, session requests get 503, the rest flows,
                    # and the store client reconnects by itself when the store is back
                    logger.error("session store unavailable at startup: %s", exc)
                except Exception as exc:  # any other startup failure stops the server, with its reason
                    await self.upstream.aclose()
                    if self.mock_upstream is not None:
                        await self.mock_upstream.aclose()
                    if self.metrics_server is not None:
                        await asyncio.to_thread(self.metrics_server.stop)
                    loop.set_exception_handler(self._exception_handler)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                self.shutdown.install()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown.aclose()
                await self.sessions.service.aclose()  # background lease releases
                await self.upstream.aclose()
                await self.store.aclose()
                if self.mock_upstream is not None:
                    await self.mock_upstream.aclose()
                if self.metrics_server is not None:
                    await asyncio.to_thread(self.metrics_server.stop)
                asyncio.get_running_loop().set_exception_handler(self._exception_handler)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _serve_metrics(self, server: MetricsServer) -> None:
        try:
            await asyncio.to_thread(server.start)
        except OSError as exc:
            raise ConfigError(f"metrics_port {server.port}: {exc.strerror or exc}") from None

    async def _scrape(self, scope: Scope, send: Send) -> None:
        accept = next((value for name, value in scope["headers"] if name == b"accept"), b"")
        body, content_type = self.metrics.exposition(accept.decode("latin-1"))
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _cut(self, exchange: Exchange, send: Send) -> None:
        """End a request cut at shutdown: not completed, so a client never takes it for a whole reply."""
        exchange.cut = True
        if exchange.kind == SESSION:
            self.metrics.turns_not_recorded["cut"] += 1
        if exchange.status == 0:  # nothing was sent yet: say why
            dialect = next((found for name, found in DIALECTS.items() if name == exchange.dialect), None)
            message = "The proxy shut down before this request finished; send it again."
            await send_failure(send, 503, message, "server_error", "shutting_down", dialect)


def _version() -> str:
    from statefulproxy import __version__  # the package's own, set in __init__ (which imports this module)

    return __version__


def create_app(settings: Settings) -> ProxyApp:
    """The proxy app for ``settings``; nothing connects until its lifespan starts."""
    app = ProxyApp(settings)
    settle_gc()
    return app


def settle_gc() -> None:
    """Tune the garbage collector for a long-running server process (not for the middleware).

    What is alive now (modules, settings, clients) is kept out of every later collection, and the
    youngest generation is collected less often: a turn leaves no reference cycles
    (tests/test_no_cyclic_garbage.py), so collections find next to nothing and only cost time
    (measured: 5-8% of the proxy's CPU per request).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 100)


# the command line a worker process rebuilds its settings from (with the environment it inherits)
WORKER_ARGS_ENV = "STATEFULPROXY_WORKER_ARGS"


def app_from_environment() -> ProxyApp:
    """The app of one ``--workers`` process: the CLI's flags are in ``WORKER_ARGS_ENV``."""
    cli = json.loads(os.environ[WORKER_ARGS_ENV])
    return create_app(load_settings(cli, os.environ))

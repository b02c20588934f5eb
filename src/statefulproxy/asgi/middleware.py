"""SessionMiddleware: server-side conversation sessions around any ASGI app.

A pure ASGI middleware. Chat requests of any dialect (``POST .../chat/completions``,
``.../v1/messages``, ``.../api/chat``, ``...:generateContent``) that carry a session identity
reach the wrapped app with their history spliced in, and its answer is recorded;
``/v1/sessions...`` is the management API; everything else goes to the app untouched. The
proxy is this middleware around a passthrough app.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..dialects import DIALECTS, dialect_for_path
from ..dialects.base import Dialect
from ..errors import ClientError, StoreError
from ..metrics import MANAGEMENT, Metrics
from ..routes import CHAT_DIALECT_KEY, match_namespace
from ..sessions.identity import Grant, client_secret_hash, client_secret_of, credential, owner_of
from ..sessions.messages import MessageIds
from ..sessions.service import TurnService
from ..settings import Settings, resolve_upstream_api_key, settings_from_mapping
from ..stores import Store, store_from_url
from ..types import ASGIApp, Message, Receive, Scope, Send
from .chat import ChatTurn, TurnContext
from .draining import Draining
from .exchange import noted
from .management import ManagementAPI
from .replies import send_error, send_failure
from .simple_chat import SimpleChatAPI


class SessionMiddleware:
    """Adds server-side sessions to ``app``.

    ``store`` is a store URL (``memory://``, ``redis://...``) or a Store instance; any other
    setting of ``config.example.yaml`` may be given as a keyword argument, or all of them as
    ``settings``. Stores connect on first use, so mounting needs no lifespan; on a lifespan
    shutdown a store the middleware made itself is closed. Turns are counted in ``metrics``
    (``self.metrics.registry`` is a prometheus_client registry to expose).
    """

    def __init__(
        self,
        app: ASGIApp,
        store: str | Store = "memory://",
        *,
        settings: Settings | None = None,
        environ: Mapping[str, str] | None = None,
        metrics: Metrics | None = None,
        **options: Any,
    ) -> None:
        if settings is None:
            settings = settings_from_mapping(
                {**options, "store": store} if isinstance(store, str) else options, source="SessionMiddleware"
            )
        self.app = app
        self.settings = settings
        self.owns_store = isinstance(store, str)
        self.store: Store = (
            store_from_url(
                settings.store,
                ttl=settings.session_ttl,
                timeout=settings.store_timeout,
                key_prefix=settings.store_prefix,
                max_sessions_per_owner=settings.max_sessions_per_owner,
                memory_max_sessions=settings.memory_max_sessions,
            )
            if isinstance(store, str)
            else store
        )
        self.header_names = frozenset(name.encode("latin-1") for name in settings.session_headers)
        self.prefix = settings.sessions_prefix
        self.namespaces = settings.session_namespaces
        upstream_key = resolve_upstream_api_key(settings, os.environ if environ is None else environ)
        self.management = ManagementAPI(self.store, self.owner_for, self.prefix, upstream_key)
        self._secret: bytes | None = settings.scope_secret.encode() if settings.scope_secret else None
        self.metrics = metrics if metrics is not None else Metrics()
        self.draining = Draining()  # the app's graceful shutdown starts it
        self.service = TurnService(self.store, settings, MessageIds(), self.metrics)
        self.simple_prefix = settings.simple_chat_prefix
        self.turns = TurnContext(
            app=app,
            settings=settings,
            header_names=self.header_names,
            owner_for=self.owner_for,
            service=self.service,
            upstream_key=None if upstream_key is None else upstream_key.encode("latin-1"),
            metrics=self.metrics,
            draining=self.draining,
        )
        self.simple_chat = SimpleChatAPI(self.turns, self.store, self.owner_for)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            token = client_secret_of(scope["headers"])
            if token is None:
                await self._dispatch(scope, receive, send, None)
            else:
                send = noted(scope, send)  # a browser's request: its replies are the proxy's own
                grant = await self._grant(token, send)
                if grant is not None:
                    await self._dispatch(scope, receive, send, grant)
        elif scope["type"] == "lifespan":
            await self.app(scope, receive, self._closing(send))
        else:
            await self.app(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, grant: Grant | None) -> None:
        path: str = scope["path"]
        namespace = None
        if self.namespaces:
            found = match_namespace(self.namespaces, path)
            if found is not None:
                namespace, path = found
        simple = self.simple_prefix
        if simple is not None and grant is None and namespace is None and (rest := _under(path, simple)) is not None:
            await self.simple_chat(scope, receive, noted(scope, send, MANAGEMENT), rest)
            return
        rest = _under(path, self.prefix if namespace is None else "/sessions")
        if rest is not None:
            send = noted(scope, send, MANAGEMENT)
            if namespace is None:
                await self.management(scope, receive, send, rest, grant)
            else:
                await self.management(scope, receive, send, rest, grant, namespace=namespace)
            return
        if namespace is not None:  # the namespace is the proxy's: the upstream sees the path below it
            raw: bytes = scope.get("raw_path") or scope["path"].encode()
            prefix = namespace.encode()
            scope = {**scope, "path": path, "raw_path": raw[len(prefix) :] if raw.startswith(prefix) else path.encode()}
        dialect = self._chat_dialect(scope)
        if dialect is not None:
            await ChatTurn(self.turns, scope, receive, send, grant, dialect, namespace).run()
        elif grant is None:
            await self.app(scope, receive, send)
        else:
            message = "A client secret may only chat on and read its own session."
            await send_error(send, ClientError(403, message, type="permission_error", code="client_secret_scope"))

    async def owner_secret(self) -> bytes:
        # the store's secret is asked for every time: a shared store re-reads it now and then (stores/base.py)
        return self._secret if self._secret is not None else await self.store.owner_secret()

    async def owner_for(self, scope: Scope) -> str:
        """The owner of a session request's credential; 401 for none when one is required."""
        found = credential(scope["headers"], scope["query_string"])
        if found is None and self.settings.require_credential:
            raise ClientError(
                401,
                "A session request needs a credential (Authorization, x-api-key, api-key, x-goog-api-key or ?key=).",
                type="authentication_error",
                code="credential_required",
            )
        return owner_of(found, await self.owner_secret())

    async def _grant(self, token: bytes, send: Send) -> Grant | None:
        """What a browser's client secret opens (one session, to chat on and read), or None, answered."""
        try:
            found = await self.store.client_secret(client_secret_hash(token))
        except StoreError:
            await send_failure(send, 503, "The session store is unavailable.", "store_error", "store_unavailable")
            return None
        if found is None:
            error = ClientError(401, "Invalid or expired client secret.", type="authentication_error")
            await send_error(send, error)
            return None
        return Grant.from_record(*found)

    async def aclose(self) -> None:
        """Drain the turn service's background work, and close the store if the middleware made it."""
        await self.service.aclose()
        if self.owns_store:
            await self.store.aclose()

    @staticmethod
    def _chat_dialect(scope: Scope) -> Dialect | None:
        if scope["method"] != "POST":
            return None
        named = scope.get(CHAT_DIALECT_KEY)  # an exact chat path of a route
        return DIALECTS[named] if named is not None else dialect_for_path(scope["path"])

    def _closing(self, send: Send) -> Send:
        async def send_closing(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.aclose()
            await send(message)

        return send_closing


def _under(path: str, prefix: str) -> str | None:
    """The rest of ``path`` when it lies under ``prefix``, else None."""
    if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
        return path[len(prefix) :]
    return None

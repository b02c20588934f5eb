"""SessionMiddleware: server-side conversation sessions around any ASGI app.

A pure ASGI middleware. Chat requests (``POST .../chat/completions``) that carry a
session identity reach the wrapped app with their history spliced in, and its answer is
recorded; ``/v1/sessions...`` is the management API; everything else goes to the app
untouched. The proxy is this middleware around a passthrough app.
"""

from __future__ import annotations

from typing import Any

from .chat import ChatTurn, MessageIds, is_chat_request
from .identity import credential, scope_of
from .management import ManagementAPI
from .settings import Settings, settings_from_mapping
from .stores import Store, store_from_url
from .types import ASGIApp, Headers, Message, Receive, Scope, Send


class SessionMiddleware:
    """Adds server-side sessions to ``app``.

    ``store`` is a store URL (``memory://``, ``redis://...``) or a Store instance; any other
    setting of ``config.example.yaml`` may be given as a keyword argument, or all of them as
    ``settings``. Stores connect on first use, so mounting needs no lifespan; on a lifespan
    shutdown a store the middleware made itself is closed.
    """

    def __init__(
        self, app: ASGIApp, store: str | Store = "memory://", *, settings: Settings | None = None, **options: Any
    ) -> None:
        if settings is None:
            settings = settings_from_mapping(
                {**options, "store": store} if isinstance(store, str) else options, source="SessionMiddleware"
            )
        self.app = app
        self.settings = settings
        self.owns_store = isinstance(store, str)
        self.store: Store = (
            store_from_url(settings.store, ttl=settings.session_ttl) if isinstance(store, str) else store
        )
        self.header_names = frozenset(name.encode("latin-1") for name in settings.session_headers)
        self.prefix = settings.sessions_prefix
        self.management = ManagementAPI(self.store, self.scope_for)
        self._secret: bytes | None = settings.scope_secret.encode() if settings.scope_secret else None
        self.message_ids = MessageIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(self.prefix) and (len(path) == len(self.prefix) or path[len(self.prefix)] == "/"):
                await self.management(scope, receive, send, path[len(self.prefix) :])
            elif is_chat_request(scope):
                turn = ChatTurn(
                    self.app,
                    self.store,
                    self.settings,
                    self.header_names,
                    self.scope_secret,
                    self.message_ids,
                    scope,
                    receive,
                    send,
                )
                await turn.run()
            else:
                await self.app(scope, receive, send)
        elif scope["type"] == "lifespan" and self.owns_store:
            await self.app(scope, receive, self._closing_store(send))
        else:
            await self.app(scope, receive, send)

    async def scope_secret(self) -> bytes:
        if self._secret is None:
            self._secret = await self.store.scope_secret()
        return self._secret

    async def scope_for(self, headers: Headers) -> str:
        return scope_of(credential(headers), await self.scope_secret())

    def _closing_store(self, send: Send) -> Send:
        async def send_closing_store(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.store.aclose()
            await send(message)

        return send_closing_store

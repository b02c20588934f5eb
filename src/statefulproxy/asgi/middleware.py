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

from ..dialects import dialect_for_path
from ..dialects.base import Dialect
from ..errors import ClientError, StoreError
from ..sessions.identity import Grant, client_secret_hash, client_secret_of, credential, owner_of
from ..sessions.messages import MessageIds
from ..sessions.service import TurnService
from ..settings import Settings, resolve_upstream_api_key, settings_from_mapping
from ..stores import Store, store_from_url
from ..types import ASGIApp, Message, Receive, Scope, Send
from .chat import ChatTurn, TurnContext
from .management import ManagementAPI
from .replies import send_error, send_failure


class SessionMiddleware:
    """Adds server-side sessions to ``app``.

    ``store`` is a store URL (``memory://``, ``redis://...``) or a Store instance; any other
    setting of ``config.example.yaml`` may be given as a keyword argument, or all of them as
    ``settings``. Stores connect on first use, so mounting needs no lifespan; on a lifespan
    shutdown a store the middleware made itself is closed.
    """

    def __init__(
        self,
        app: ASGIApp,
        store: str | Store = "memory://",
        *,
        settings: Settings | None = None,
        environ: Mapping[str, str] | None = None,
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
            store_from_url(settings.store, ttl=settings.session_ttl, timeout=settings.store_timeout)
            if isinstance(store, str)
            else store
        )
        self.header_names = frozenset(name.encode("latin-1") for name in settings.session_headers)
        self.prefix = settings.sessions_prefix
        upstream_key = resolve_upstream_api_key(settings, os.environ if environ is None else environ)
        self.management = ManagementAPI(self.store, self.owner_for, self.prefix, upstream_key)
        self._secret: bytes | None = settings.scope_secret.encode() if settings.scope_secret else None
        self.service = TurnService(self.store, settings, MessageIds())
        self.turns = TurnContext(
            app=app,
            settings=settings,
            header_names=self.header_names,
            owner_for=self.owner_for,
            service=self.service,
            upstream_key=None if upstream_key is None else upstream_key.encode("latin-1"),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            token = client_secret_of(scope["headers"])
            if token is not None:
                await self._with_client_secret(token, scope, receive, send)
                return
            rest = self._management_path(scope["path"])
            dialect = self._chat_dialect(scope)
            if rest is not None:
                await self.management(scope, receive, send, rest)
            elif dialect is not None:
                await ChatTurn(self.turns, scope, receive, send, None, dialect).run()
            else:
                await self.app(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.app(scope, receive, self._closing(send))
        else:
            await self.app(scope, receive, send)

    async def owner_secret(self) -> bytes:
        if self._secret is None:
            self._secret = await self.store.owner_secret()
        return self._secret

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

    async def _with_client_secret(self, token: bytes, scope: Scope, receive: Receive, send: Send) -> None:
        """A browser's request: it may chat on and read one session, and reach nothing else."""
        try:
            found = await self.store.client_secret(client_secret_hash(token))
        except StoreError:
            await send_failure(send, 503, "The session store is unavailable.", "store_error", "store_unavailable")
            return
        if found is None:
            error = ClientError(401, "Invalid or expired client secret.", type="authentication_error")
            await send_error(send, error)
            return
        grant = Grant(*found)
        rest = self._management_path(scope["path"])
        dialect = self._chat_dialect(scope)
        if rest is not None:
            await self.management(scope, receive, send, rest, grant)
        elif dialect is not None:
            await ChatTurn(self.turns, scope, receive, send, grant, dialect).run()
        else:
            message = "A client secret may only chat on and read its own session."
            await send_error(send, ClientError(403, message, type="permission_error", code="client_secret_scope"))

    def _management_path(self, path: str) -> str | None:
        prefix = self.prefix
        if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
            return path[len(prefix) :]
        return None

    async def aclose(self) -> None:
        """Drain the turn service's background work, and close the store if the middleware made it."""
        await self.service.aclose()
        if self.owns_store:
            await self.store.aclose()

    @staticmethod
    def _chat_dialect(scope: Scope) -> Dialect | None:
        return dialect_for_path(scope["path"]) if scope["method"] == "POST" else None

    def _closing(self, send: Send) -> Send:
        async def send_closing(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.aclose()
            await send(message)

        return send_closing

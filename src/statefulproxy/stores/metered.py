"""A store that times its commands and counts their failures for ``/metrics``, around any store.

Each command's histogram is looked up once, here; a command then costs two clock reads and one
observation. Failures are StoreErrors (the store's own answers, such as SessionBusy or a
ClientError for a full owner, are timed but are no failures).
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from time import perf_counter
from typing import Literal, TypeVar

from ..errors import StoreError
from ..metrics import Histogram, Metrics
from .base import (
    UNCHANGED,
    CommitResult,
    HistoryWindow,
    Lease,
    MessagePage,
    NewSession,
    RestoredSession,
    SessionRecord,
    SessionSnapshot,
    SessionStatus,
    Store,
    StoredMessage,
    TurnWrite,
    Unchanged,
)

T = TypeVar("T")


class MeteredStore:
    """``inner``, with each command timed in ``metrics``."""

    def __init__(self, inner: Store, metrics: Metrics) -> None:
        self.inner = inner
        self._metrics = metrics
        self._errors = metrics.store_errors
        self._load = metrics.store_command("load")
        self._commit = metrics.store_command("commit")
        self._errors.setdefault("owner_secret", 0)

    async def _timed(self, command: str, pending: Awaitable[T]) -> T:
        histogram = self._metrics.store_command(command)
        started = perf_counter()
        try:
            return await pending
        except StoreError:
            self._errors[command] += 1
            raise
        finally:
            histogram.observe(perf_counter() - started)

    # the two commands of every turn, without the extra coroutine of _timed

    async def load(
        self, owner: str, session_id: str, lease: Lease | None = None, idempotency_key: str | None = None
    ) -> SessionSnapshot | None:
        histogram: Histogram = self._load
        started = perf_counter()
        try:
            return await self.inner.load(owner, session_id, lease, idempotency_key)
        except StoreError:
            self._errors["load"] += 1
            raise
        finally:
            histogram.observe(perf_counter() - started)

    async def commit(self, owner: str, session_id: str, write: TurnWrite) -> CommitResult:
        histogram: Histogram = self._commit
        started = perf_counter()
        try:
            return await self.inner.commit(owner, session_id, write)
        except StoreError:
            self._errors["commit"] += 1
            raise
        finally:
            histogram.observe(perf_counter() - started)

    # not timed: connecting, the readiness probe, and a secret almost always answered from memory
    # (its failures are counted)

    async def open(self) -> None:
        await self.inner.open()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def ping(self) -> bool:
        return await self.inner.ping()

    async def owner_secret(self) -> bytes:
        try:
            return await self.inner.owner_secret()
        except StoreError:  # it failed, so it went to the store
            self._errors["owner_secret"] += 1
            raise

    async def create(
        self,
        owner: str,
        session_id: str,
        new: NewSession,
        messages: Sequence[StoredMessage] = (),
        leading_system: int = 0,
    ) -> SessionRecord | None:
        return await self._timed("create", self.inner.create(owner, session_id, new, messages, leading_system))

    async def restore(self, owner: str, restored: RestoredSession, *, replace: bool = False) -> bool:
        return await self._timed("restore", self.inner.restore(owner, restored, replace=replace))

    async def get(self, owner: str, session_id: str) -> SessionRecord | None:
        return await self._timed("get", self.inner.get(owner, session_id))

    async def list_sessions(
        self,
        owner: str,
        *,
        limit: int,
        order: Literal["asc", "desc"] = "desc",
        after: str | None = None,
        before: str | None = None,
        status: SessionStatus | None = None,
        metadata: dict[str, str] | None = None,
        namespace: str | None = None,
    ) -> tuple[list[SessionRecord], bool] | None:
        listed = self.inner.list_sessions(
            owner,
            limit=limit,
            order=order,
            after=after,
            before=before,
            status=status,
            metadata=metadata,
            namespace=namespace,
        )
        return await self._timed("list_sessions", listed)

    async def update(
        self,
        owner: str,
        session_id: str,
        *,
        title: str | None = None,
        metadata: dict[str, str] | None = None,
        history_window: HistoryWindow | Unchanged | None = UNCHANGED,
    ) -> SessionRecord | None:
        updated = self.inner.update(owner, session_id, title=title, metadata=metadata, history_window=history_window)
        return await self._timed("update", updated)

    async def messages(self, owner: str, session_id: str) -> list[StoredMessage] | None:
        return await self._timed("messages", self.inner.messages(owner, session_id))

    async def messages_page(self, owner: str, session_id: str, start: int, stop: int | None) -> MessagePage | None:
        return await self._timed("messages_page", self.inner.messages_page(owner, session_id, start, stop))

    async def message_positions(
        self, owner: str, session_id: str, message_ids: Sequence[str]
    ) -> tuple[list[int | None], int] | None:
        return await self._timed("message_positions", self.inner.message_positions(owner, session_id, message_ids))

    async def clear(self, owner: str, session_id: str) -> SessionRecord | None:
        return await self._timed("clear", self.inner.clear(owner, session_id))

    async def end(self, owner: str, session_id: str) -> SessionRecord | None:
        return await self._timed("end", self.inner.end(owner, session_id))

    async def delete(self, owner: str, session_id: str) -> bool:
        return await self._timed("delete", self.inner.delete(owner, session_id))

    async def renew_lease(self, owner: str, session_id: str, lease: Lease) -> bool:
        return await self._timed("renew_lease", self.inner.renew_lease(owner, session_id, lease))

    async def release_lease(self, owner: str, session_id: str, token: str) -> None:
        await self._timed("release_lease", self.inner.release_lease(owner, session_id, token))

    async def put_client_secret(
        self, secret_hash: str, owner: str, session_id: str, ttl: float, grant: bytes = b""
    ) -> None:
        await self._timed("put_client_secret", self.inner.put_client_secret(secret_hash, owner, session_id, ttl, grant))

    async def client_secret(self, secret_hash: str) -> tuple[str, str, bytes] | None:
        return await self._timed("client_secret", self.inner.client_secret(secret_hash))

"""One turn at a time per session: a lease held in the store for the length of a turn.

The lease is taken in the same store round trip as the history read, renewed while the
upstream answers, and released by the commit (same atomic step) or, on every other exit,
explicitly. A proxy that dies holding one loses it after ``lease_ttl``. A turn that finds
the session busy waits for it (bounded by ``busy_timeout``) or is refused at once.

A release that fails because the store is down, or a read that failed after the store may
have taken the lease, is retried in the background until the store answers or the lease
has expired anyway: a Redis that restarts from its AOF would otherwise keep the session
busy for the rest of ``lease_ttl``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ..errors import ClientError, ClientGone, SessionBusy, StoreError
from ..settings import Settings
from ..stores.base import Lease, SessionSnapshot, Store

logger = logging.getLogger("statefulproxy")

_FIRST_BACKOFF = 0.005
_MAX_BACKOFF = 0.1
_FIRST_RELEASE_BACKOFF = 0.05
_MAX_RELEASE_BACKOFF = 1.0

Spawn = Callable[[Coroutine[Any, Any, None]], None]
GoneWithin = Callable[[float], Awaitable[bool]]  # waits on a busy session; True as soon as the client left


# A lease token only has to be unique among the turns of every process on the store, not secret:
# a random prefix per process and a counter, rather than 16 random bytes from the kernel per turn.
_token_prefix = os.urandom(12).hex()
_token_numbers = itertools.count()


def _new_token() -> str:
    return f"{_token_prefix}{next(_token_numbers):x}"


def _new_prefix() -> None:
    global _token_prefix  # a forked worker (gunicorn --preload) must not repeat its parent's tokens
    _token_prefix = os.urandom(12).hex()


os.register_at_fork(after_in_child=_new_prefix)


class LeaseKeeper:
    """Renews the leases of the turns in flight, from one timer for all of them.

    A turn holds its lease for the upstream's whole reply, seconds to minutes, and most turns end
    long before their first renewal is due (a third of the TTL). So there is no timer per turn:
    while it holds any lease, the keeper ticks every sixth of the TTL and renews those held for a
    third of it, so each renewal comes between a third and a half of the TTL after the last one.
    """

    def __init__(self) -> None:
        self._held: dict[TurnLease, float] = {}  # lease -> the loop time its renewal is due
        self._timer: asyncio.TimerHandle | None = None

    def hold(self, lease: TurnLease, ttl_ms: int) -> None:
        loop = asyncio.get_running_loop()
        self._held[lease] = loop.time() + ttl_ms / 3000
        if self._timer is None:
            self._timer = loop.call_later(ttl_ms / 6000, self._tick, ttl_ms / 6000)

    def drop(self, lease: TurnLease) -> None:
        self._held.pop(lease, None)

    def _tick(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for lease in [lease for lease, due in self._held.items() if due <= now]:
            del self._held[lease]
            lease.renew_now()  # holds it again once renewed
        self._timer = loop.call_later(interval, self._tick, interval) if self._held else None


class TurnLease:
    """The lease of one turn on one session."""

    def __init__(
        self,
        store: Store,
        owner: str,
        session_id: str,
        settings: Settings,
        spawn: Spawn,
        gone_within: GoneWithin | None = None,
        keeper: LeaseKeeper | None = None,
    ) -> None:
        """``spawn`` runs a background release; the turn service owns those tasks and drains them.
        ``gone_within(seconds)`` waits while the session is busy, True as soon as the client has left."""
        self.gone_within = gone_within
        self.store = store
        self.spawn = spawn
        self.owner = owner
        self.session_id = session_id
        self.lease = Lease(_new_token(), max(int(settings.lease_ttl * 1000), 1))
        self.settings = settings
        self.released = False
        self.keeper = keeper if keeper is not None else LeaseKeeper()
        self._still_wanted: Callable[[], bool] | None = None
        self._renewing: asyncio.Task[None] | None = None

    @property
    def token(self) -> str:
        return self.lease.token

    async def load(self, idempotency_key: str | None = None) -> SessionSnapshot | None:
        """Read the session and take its lease, waiting for it per ``on_busy``.

        A reply kept under ``idempotency_key`` comes back without a lease, even while busy.
        """
        deadline = time.monotonic() + self.settings.busy_timeout
        backoff = _FIRST_BACKOFF
        while True:
            try:
                return await self.store.load(self.owner, self.session_id, self.lease, idempotency_key)
            except StoreError:
                self.released = True
                self._release_in_background()  # the store may have taken it before the call failed
                raise
            except SessionBusy:
                if self.settings.on_busy == "reject" or time.monotonic() + backoff > deadline:
                    raise ClientError(
                        409,
                        f"Session '{self.session_id}' is busy with another turn; retry when it has finished.",
                        code="session_busy",
                    ) from None
            # polling the store: the holder may be another process
            if self.gone_within is None:
                await asyncio.sleep(backoff)
            elif await self.gone_within(backoff):
                # a queued turn whose client left must not reach the upstream once its turn comes
                raise ClientGone(f"the client left while waiting for session {self.session_id!r}")
            backoff = min(backoff * 2, _MAX_BACKOFF)

    def keep_renewed(self, still_wanted: Callable[[], bool] | None = None) -> None:
        """Renew the lease in the background until released (the upstream may take minutes).

        Before each renewal ``still_wanted`` is asked; once it says no, renewing stops (the
        caller cuts its turn and releases the lease). The keeper's timer does it: no timer or
        task per turn until a renewal is due.
        """
        self._still_wanted = still_wanted
        self.keeper.hold(self, self.lease.ttl_ms)

    def renew_now(self) -> None:
        """Renew in the background now (the keeper calls it when the renewal is due)."""
        if self.released or (self._still_wanted is not None and not self._still_wanted()):
            return
        self._renewing = asyncio.get_running_loop().create_task(self._renew())

    async def release(self) -> None:
        """Stop renewing and drop the lease unless a commit already released it."""
        # still_wanted refers back to the turn's task: keeping it would make every turn cyclic garbage
        self._still_wanted = None
        self.keeper.drop(self)
        if self._renewing is not None:
            self._renewing.cancel()
        if self.released:
            return
        self.released = True
        try:
            # shielded: a client that disconnected must not leave the session locked until the TTL
            await asyncio.shield(self.store.release_lease(self.owner, self.session_id, self.lease.token))
        except StoreError as exc:
            logger.warning("lease not released yet, retrying while it lasts: %s", exc)
            self._release_in_background()

    def _release_in_background(self) -> None:
        self.spawn(self._release_until_expired())

    async def _release_until_expired(self) -> None:
        deadline = time.monotonic() + self.lease.ttl_ms / 1000
        backoff = _FIRST_RELEASE_BACKOFF
        while time.monotonic() + backoff < deadline:
            await asyncio.sleep(backoff)  # waiting for the store to come back
            try:
                await self.store.release_lease(self.owner, self.session_id, self.lease.token)
            except StoreError:
                backoff = min(backoff * 2, _MAX_RELEASE_BACKOFF)
            else:
                return

    async def _renew(self) -> None:
        try:
            if not await self.store.renew_lease(self.owner, self.session_id, self.lease):
                logger.warning("lease of a session lost while its turn ran")
                return
        except StoreError as exc:
            logger.warning("lease not renewed: %s", exc)
        if not self.released:
            self.keep_renewed(self._still_wanted)

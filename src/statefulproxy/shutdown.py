"""Graceful shutdown on SIGTERM (and SIGINT): drain, then let the server stop (CONTRACT.md section 7).

uvicorn on a signal stops accepting at once and waits for the requests in flight without a bound,
then re-raises the signal, so a SIGTERM ends the process with status -15. The app takes the
signals over for the length of its lifespan instead:

1. at once, ``/readyz`` answers 503 and new session turns are refused with 503, while the port
   still accepts (a load balancer takes a moment to stop sending);
2. when the session turns in flight have finished (recorded), the signal goes on to the server,
   which stops accepting, closes idle connections and waits for the requests still running;
3. ``shutdown_timeout`` after the signal, whatever still runs is cut: its task is cancelled and
   the app ends it without completing its response, so nothing is recorded and the client sees
   an aborted reply, never a complete-looking one.

A second signal cuts at once. ``python -m statefulproxy`` ignores the signal uvicorn re-raises
once it has shut down (server.py), so a drained shutdown exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from types import FrameType
from typing import Any

from .asgi.draining import Draining

logger = logging.getLogger("statefulproxy")

SIGNALS = (signal.SIGTERM, signal.SIGINT)

Handler = Any  # what signal.signal returns: a callable, SIG_DFL, SIG_IGN or None


class GracefulShutdown:
    """The app's shutdown: the signal handlers, the requests in flight, and the cut at the deadline."""

    def __init__(self, draining: Draining, timeout: float) -> None:
        self.draining = draining
        self.timeout = timeout
        self.requests: set[asyncio.Task[Any]] = set()  # every HTTP request in flight
        self.cutting = False  # the deadline has passed: a cancelled request is being cut
        self._previous: dict[int, Handler] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining_task: asyncio.Task[None] | None = None
        self._cut_now: asyncio.Event | None = None

    def install(self) -> None:
        """Take SIGTERM and SIGINT over, from the server's handlers (only the main thread may)."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._loop = asyncio.get_running_loop()
        self._cut_now = asyncio.Event()
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        # a signal handler: set flags, and leave the rest to the loop
        assert self._loop is not None
        if self.draining.started:
            self._loop.call_soon_threadsafe(self._hurry)
            return
        self.draining.start()
        self._loop.call_soon_threadsafe(self._begin, sig)

    def _begin(self, sig: int) -> None:
        assert self._loop is not None
        self._draining_task = self._loop.create_task(self.drain(sig))

    def _hurry(self) -> None:
        logger.warning("a second signal: cutting what still runs")
        if self._cut_now is not None:
            self._cut_now.set()

    async def drain(self, sig: int) -> None:
        """Wait for the turns in flight, hand ``sig`` on to the server, and cut what runs past the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        if self._cut_now is None:
            self._cut_now = asyncio.Event()
        logger.info(
            "%s: shutting down: /readyz answers 503, new session turns get 503; waiting up to "
            "shutdown_timeout (%g s) for %d session turn(s) and %d request(s) in flight",
            signal.Signals(sig).name,
            self.timeout,
            self.draining.turns,
            len(self.requests),
        )
        if await self._until(self.draining.wait_idle(), deadline):
            logger.info("the session turns in flight have finished; stopping")
        self._hand_on(sig)
        while self.requests and await self._until(asyncio.wait(set(self.requests)), deadline):
            pass  # requests that arrived on open connections meanwhile: wait for those too
        if self.requests:
            self.cut()

    async def _until(self, waiting: Any, deadline: float) -> bool:
        """Await ``waiting`` until ``deadline`` or a second signal; False if cut short."""
        assert self._cut_now is not None
        hurry = asyncio.ensure_future(self._cut_now.wait())
        work = asyncio.ensure_future(waiting)
        remaining = deadline - asyncio.get_running_loop().time()
        await asyncio.wait({work, hurry}, timeout=max(remaining, 0), return_when=asyncio.FIRST_COMPLETED)
        hurry.cancel()
        if work.done():
            return True
        work.cancel()
        return False

    def cut(self) -> None:
        """Cancel every request in flight; the app ends each without completing it."""
        if not self.requests:
            return
        logger.warning(
            "shutdown_timeout (%g s) passed: cutting %d request(s) still running; their turns are not recorded",
            self.timeout,
            len(self.requests),
        )
        self.cutting = True
        for task in self.requests:
            task.cancel()

    def _hand_on(self, sig: int) -> None:
        """Let the server's own handler stop it, as if the signal came now."""
        previous = self._previous.get(sig)
        if callable(previous):
            previous(sig, None)  # ours stay installed: a second signal still cuts at once
        elif previous is not None:  # SIG_DFL or SIG_IGN: what the process would have done without us
            self.uninstall()
            signal.raise_signal(sig)

    async def aclose(self) -> None:
        """At lifespan shutdown: give the signals back, and stop draining (nothing is left to wait for)."""
        self.uninstall()
        if self._draining_task is not None and not self._draining_task.done():
            self._draining_task.cancel()

"""Session turns in flight, and the shutdown that waits for them (CONTRACT.md section 7, Shutdown).

Once ``start`` is called (SIGTERM), ``/readyz`` answers 503 and new session turns are refused
with 503; ``wait_idle`` returns when the turns already running have finished.
"""

from __future__ import annotations

import asyncio


class Draining:
    """Counts the session turns running, and the leases they hold; one per session middleware."""

    def __init__(self) -> None:
        self.started = False
        self.turns = 0
        self.leases = 0
        self._idle: asyncio.Event | None = None

    def enter(self) -> None:
        self.turns += 1

    def leave(self) -> None:
        self.turns -= 1
        if self.turns == 0 and self._idle is not None:
            self._idle.set()

    def start(self) -> None:
        """Refuse new turns from now on. Safe to call from a signal handler (sets a flag only)."""
        self.started = True

    async def wait_idle(self) -> None:
        """Return once no turn is in flight."""
        while self.turns:
            self._idle = asyncio.Event()
            await self._idle.wait()

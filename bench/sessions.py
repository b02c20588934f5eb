"""Session pools for the session configurations: pre-filled histories of a planned size.

Every measured turn appends 2 messages (the user message + the assistant reply), so a session cannot stay at
a fixed size while it is used. The method: each session is pre-filled to ``target - (uses - 1)`` messages and
then serves exactly ``uses`` consecutive requests of one worker (``uses`` odd), so the history each request
is spliced into runs ``target - (uses-1), ..., target + (uses-1)`` in steps of 2: its mean is exactly
``target``. Sessions are pre-filled before a run (untimed) in the number the run is expected to need; if a
run outlasts its pool, workers keep using their last session and those requests are counted as overrun.

A session is pre-filled with one request through the proxy that creates it (an unknown client-chosen id)
with ``size - 1`` alternating user/assistant messages; the proxy records them and the reply: ``size``
messages. The first pre-filled session of each pool is checked with ``GET /v1/sessions/{id}``; if its
``message_count`` differs, the pool falls back to pre-filling turn by turn (``size / 2`` requests of one
user message each).
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import Mapping

import aiohttp
import orjson

PREFILL_CONCURRENCY = 16
AUTH = {"authorization": "Bearer sk-bench", "content-type": "application/json"}


def chat_body(messages: list[dict[str, str]], stream: bool = False) -> bytes:
    payload: dict[str, object] = {"model": "m", "messages": messages}
    if stream:
        payload["stream"] = True
    return orjson.dumps(payload)


def history(count: int) -> list[dict[str, str]]:
    """``count`` alternating messages starting and (count odd) ending with a user message."""
    return [
        {"role": "user", "content": f"question {i // 2}: what about this?"}
        if i % 2 == 0
        else {"role": "assistant", "content": f"answer {i // 2}: here is a short reply to that."}
        for i in range(count)
    ]


class SessionPool:
    """Sessions of one configuration; ``take(worker)`` is the session id for that worker's next request."""

    def __init__(self, label: str, base_url: str, target: int, uses: int) -> None:
        if uses % 2 == 0 or target - (uses - 1) < 2:
            raise ValueError("uses must be odd and leave at least one turn to pre-fill")
        self.base_url = base_url
        self.target = target
        self.uses = uses
        self.prefill_size = target - (uses - 1)
        self.prefix = f"bench-{label}-{secrets.token_hex(4)}"
        self.created = 0
        self.fresh: deque[str] = deque()
        self.current_id: dict[int, str] = {}
        self.remaining: dict[int, int] = {}
        self.used_up: list[str] = []
        self.served = 0
        self.overrun = 0
        self.by_turns = False
        self.checked = False
        self.verification = "not checked yet"

    def take(self, worker: int) -> str:
        self.served += 1
        current = self.current_id.get(worker)
        if current is not None and self.remaining[worker] > 0:
            self.remaining[worker] -= 1
            return current
        if self.fresh:
            if current is not None:
                self.used_up.append(current)
            session_id = self.fresh.popleft()
            self.current_id[worker] = session_id
            self.remaining[worker] = self.uses - 1
            return session_id
        if current is None:
            raise RuntimeError("session pool empty")
        self.overrun += 1
        return current

    def end_run(self) -> None:
        """Partly used sessions are abandoned, so every run starts at the low end of the range."""
        self.current_id.clear()
        self.remaining.clear()

    async def check_recorded(self, session: aiohttp.ClientSession) -> str:
        """The message_count of a session that served all its ``uses`` requests (each turn should add 2)."""
        if not self.used_up:
            return "no fully used session to check"
        session_id = self.used_up[-1]
        expected = self.prefill_size + 2 * self.uses
        count = await message_count(session, self.base_url, session_id)
        if count is None:
            return "recording not verifiable"
        verdict = "ok" if count == expected else "MISMATCH"
        return f"recording {verdict}: a used-up session has {count} messages, expected {expected}"

    def describe(self) -> str:
        prefill = "turn by turn" if self.by_turns else "one creating request each"
        low, high = self.target - (self.uses - 1), self.target + (self.uses - 1)
        return (
            f"pre-filled to {self.prefill_size} messages ({prefill}; {self.verification}), each used for "
            f"{self.uses} requests: history {low}..{high}, mean {self.target}; {self.created} sessions, "
            f"{self.served} requests, {self.overrun} overrun"
        )

    async def ensure(self, count: int, session: aiohttp.ClientSession) -> None:
        """Have at least ``count`` fresh sessions (pre-filling the missing ones concurrently)."""
        missing = count - len(self.fresh)
        if missing <= 0:
            return
        if self.created == 0:
            first = await self._prefill_one(session)
            await self._verify(session, first)
            if self.verification.startswith("mismatch"):
                self.by_turns = True
                first = await self._prefill_one(session)
                await self._verify(session, first)
            self.fresh.append(first)
            missing -= 1
        queue = deque(range(missing))
        made: list[str] = []

        async def worker() -> None:
            while queue:
                queue.pop()
                made.append(await self._prefill_one(session))

        await asyncio.gather(*(worker() for _ in range(min(PREFILL_CONCURRENCY, missing))))
        self.fresh.extend(made)

    async def _prefill_one(self, session: aiohttp.ClientSession) -> str:
        session_id = f"{self.prefix}-{self.created}"
        self.created += 1
        if self.by_turns:
            for turn in range(self.prefill_size // 2):
                await self._post(session, session_id, history(2 * turn + 1)[-1:])
        else:
            await self._post(session, session_id, history(self.prefill_size - 1))
        return session_id

    async def _post(self, session: aiohttp.ClientSession, session_id: str, messages: list[dict[str, str]]) -> None:
        url = self.base_url + "/v1/chat/completions"
        headers: Mapping[str, str] = {**AUTH, "session-id": session_id}
        async with session.post(url, data=chat_body(messages), headers=headers) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"pre-fill of {session_id}: status {response.status}: {body[:200]!r}")
            echoed = response.headers.get("x-session-id")
            if echoed != session_id:
                raise RuntimeError(f"pre-fill of {session_id}: x-session-id {echoed!r}, the session was not used")

    async def _verify(self, session: aiohttp.ClientSession, session_id: str) -> None:
        count = await message_count(session, self.base_url, session_id)
        if count is None:
            self.verification = "size not verifiable: GET /v1/sessions/{id} gave no message_count"
        elif count == self.prefill_size:
            self.verification = f"verified: message_count {count}"
        else:
            self.verification = f"mismatch: message_count {count}, expected {self.prefill_size}"


async def message_count(session: aiohttp.ClientSession, base_url: str, session_id: str) -> int | None:
    async with session.get(f"{base_url}/v1/sessions/{session_id}", headers=AUTH) as response:
        if response.status != 200:
            return None
        try:
            count = orjson.loads(await response.read()).get("message_count")
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return count if isinstance(count, int) else None

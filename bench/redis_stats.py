"""What Redis did in a measured window, from ``INFO commandstats`` read at both edges.

Commands a Lua script runs are counted under their own names as well, and the script's ``evalsha`` time
includes theirs: the per-command figures overlap and are not to be summed. The bench's own ``INFO`` calls
are left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

#: command name -> (calls, usec), cumulative since redis-server started (or over a window, as a delta)
CommandStats = dict[str, tuple[int, int]]
OWN_COMMANDS = {"info"}


def parse(info: Mapping[str, Any]) -> CommandStats:
    """redis-py's parsed ``INFO commandstats``: ``{"cmdstat_get": {"calls": 3, "usec": 12, ...}, ...}``."""
    stats: CommandStats = {}
    for key, value in info.items():
        if key.startswith("cmdstat_") and isinstance(value, Mapping):
            name = key.removeprefix("cmdstat_").lower()
            if name not in OWN_COMMANDS:
                stats[name] = (int(value.get("calls", 0)), int(value.get("usec", 0)))
    return stats


def delta(before: CommandStats, after: CommandStats) -> CommandStats:
    out: CommandStats = {}
    for name, (calls, usec) in after.items():
        calls0, usec0 = before.get(name, (0, 0))
        if calls > calls0:
            out[name] = (calls - calls0, usec - usec0)
    return out


@dataclass
class WindowTotals:
    """Commandstats deltas summed over a cell's repetitions."""

    commands: CommandStats = field(default_factory=dict)

    def add(self, window: CommandStats) -> None:
        for name, (calls, usec) in window.items():
            calls0, usec0 = self.commands.get(name, (0, 0))
            self.commands[name] = (calls0 + calls, usec0 + usec)

    def per_turn(self, turns: int, top: int) -> list[tuple[str, float, float]]:
        """The ``top`` commands by time: (name, calls per turn, usec per turn)."""
        if turns <= 0:
            return []
        ranked = sorted(self.commands.items(), key=lambda item: (-item[1][1], -item[1][0], item[0]))
        return [(name, calls / turns, usec / turns) for name, (calls, usec) in ranked[:top]]

    def calls_per_turn(self, turns: int) -> float:
        return sum(calls for calls, _ in self.commands.values()) / turns if turns > 0 else float("nan")


class CommandStatsReader:
    """One connection to the bench's redis-server, kept open for the run."""

    def __init__(self, url: str) -> None:
        self._client = aioredis.Redis.from_url(url)

    async def read(self) -> CommandStats | None:
        """The counters now; None when Redis does not answer (the window then has no breakdown)."""
        try:
            return parse(await self._client.info("commandstats"))
        except (RedisError, OSError):
            return None

    async def aclose(self) -> None:
        await self._client.aclose()

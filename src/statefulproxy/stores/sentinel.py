"""A client of the master that Redis Sentinel names; the same calls as RespClient.

The sentinels are asked ``SENTINEL get-master-addr-by-name`` (the first that answers wins
and is asked first next time), the named node is checked with ``ROLE``, and one
RespClient to it carries every command. After a connection failure or a ``READONLY``
reply (the old master demoted to a replica) the sentinels are asked again before the
next command, and the failed command is sent again, with backoff, for at most ``timeout``
seconds after its first failure, but only when it surely never ran or only reads
(redis_topology.py).

The URL's credentials and db are the master's; sentinels are asked without credentials, and
answer within ``connect_timeout`` (a silent one must not hold the next one back).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError
from .redis_topology import READS, Backoff, Unreachable, command_name, hosts_from_url, refused, unsent
from .resp import Arg, RespAddress, RespClient, RespError, Script, evalsha


class SentinelClient:
    """Commands to the current master of ``service`` as ``sentinels`` name it."""

    def __init__(
        self,
        sentinels: Sequence[RespAddress],
        service: str,
        master: RespAddress,
        *,
        connect_timeout: float = 2.0,
        timeout: float = 5.0,
    ) -> None:
        if not sentinels:
            raise ValueError("Redis Sentinel needs at least one sentinel")
        self.service = service
        self._sentinels = [RespClient(a, connect_timeout=connect_timeout, timeout=connect_timeout) for a in sentinels]
        self._template = master
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._master: RespClient | None = None  # the master, while no failure casts doubt on it
        self._last: RespClient | None = None  # the client of the node the sentinels named last
        self._generation = 0  # bumped by every answer of the sentinels
        self._asking: asyncio.Lock | None = None

    @property
    def address(self) -> RespAddress:
        """The current master, once known; before that the URL's credentials and db on the first sentinel."""
        if self._last is not None:
            return self._last.address
        first = self._sentinels[0].address
        return dataclasses.replace(self._template, host=first.host, port=first.port)

    async def execute(self, *args: Arg) -> Any:
        backoff: Backoff | None = None
        while True:
            seen = self._generation
            try:
                master = self._master or await self._discover(seen)
                return await master.execute(*args)
            except RespError as exc:
                if not refused(exc):
                    raise
                error: BaseException = exc
                self._forget(seen)
            except OSError as exc:
                self._forget(seen)  # whatever happens to this command, the next asks the sentinels first
                if not (unsent(exc) or command_name(args) in READS):
                    raise
                error = exc
            if command_name(args) == b"PING":  # a health check says how things are now: no waiting
                raise error
            backoff = backoff or Backoff(self._timeout)
            await backoff.wait(error)

    async def run_script(self, script: Script, keys: tuple[Arg, ...], args: tuple[Arg, ...]) -> Any:
        return await evalsha(lambda command: self.execute(*command), script, keys, args)

    async def aclose(self) -> None:
        last, self._master, self._last = self._last, None, None
        for client in [*self._sentinels, *([last] if last is not None else [])]:
            await client.aclose()

    def _forget(self, seen: int) -> None:
        if self._generation == seen:
            self._master = None

    async def _discover(self, seen: int) -> RespClient:
        if self._asking is None:
            self._asking = asyncio.Lock()
        async with self._asking:
            if self._generation != seen and self._master is not None:
                return self._master  # another caller asked meanwhile
            host, port = await self._ask_sentinels()
            client = self._last
            if client is None or (client.address.host, client.address.port) != (host, port):
                if client is not None:
                    await client.aclose()
                address = dataclasses.replace(self._template, host=host, port=port)
                client = self._last = RespClient(address, connect_timeout=self._connect_timeout, timeout=self._timeout)
            role = await client.execute(b"ROLE")
            if role[0] != b"master":
                raise Unreachable(f"sentinels name {host}:{port} master of {self.service!r}, but it is a {role[0]!r}")
            self._master = client
            self._generation += 1
            return client

    async def _ask_sentinels(self) -> tuple[str, int]:
        problems = []
        for index, sentinel in enumerate(self._sentinels):
            where = f"{sentinel.address.host}:{sentinel.address.port}"
            try:
                reply = await sentinel.execute(b"SENTINEL", b"get-master-addr-by-name", self.service)
            except (RespError, OSError) as exc:
                problems.append(f"{where}: {exc}")
                continue
            if not reply:
                problems.append(f"{where} knows no master {self.service!r}")
                continue
            if index:  # ask the one that answered first next time
                self._sentinels.insert(0, self._sentinels.pop(index))
            return reply[0].decode(), int(reply[1])
        raise Unreachable(f"no sentinel named a master: {'; '.join(problems)}")


def sentinel_from_url(url: str, *, connect_timeout: float, timeout: float) -> SentinelClient:
    """A client of ``redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]``."""
    sentinels, path = hosts_from_url(url, "redis+sentinel", 26379)
    parts = path.strip("/").split("/")
    if not parts[0] or len(parts) > 2:
        raise ConfigError("store: invalid redis+sentinel URL: expected /service_name[/db] after the sentinels")
    if len(parts) == 2 and not parts[1].isdigit():
        raise ConfigError(f"store: invalid redis+sentinel URL: db {parts[1]!r} is not a number")
    first = sentinels[0]
    master = RespAddress(username=first.username, password=first.password, db=int(parts[1]) if len(parts) == 2 else 0)
    plain = [dataclasses.replace(s, username=None, password=None) for s in sentinels]
    return SentinelClient(plain, parts[0], master, connect_timeout=connect_timeout, timeout=timeout)

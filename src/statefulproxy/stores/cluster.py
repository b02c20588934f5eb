"""A Redis Cluster client with RespClient's interface: each command goes to the master of its key's slot.

The slot map comes from ``CLUSTER SLOTS``, asked of any node that answers (known masters
first, then the URL's seeds, then replicas). One RespClient per master carries that
master's commands. A command's key is the first key after numkeys for EVAL/EVALSHA, else
the first argument after the command name; ``SCRIPT`` goes to every master, keyless
commands (PING) to any.

Redirects: ``MOVED`` points the slot at the named node, refreshes the whole map and
retries; ``ASK`` sends ``ASKING`` and the command on a one-shot connection to the named
node (ASKING holds for the next command on its connection only, so it must not share a
pipelined one). A failover: a master that stops answering is dropped when a surviving
node's map no longer names it; until then the command is retried, with backoff and a
fresh map, for at most ``timeout`` seconds after its first failure.

Only a command that surely never ran, or a read, is sent again (see redis_topology.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.crc import key_slot

from ..errors import ConfigError
from .redis_topology import READS, Backoff, Node, Unreachable, command_name, hosts_from_url, refused, unsent
from .resp import Arg, RespAddress, RespClient, RespError, Script, evalsha

SLOTS = 16384
_MAX_REDIRECTS = 16
_DOWN_FOR = 10.0  # seconds a node that failed to answer is asked for the slot map only after the others
_EVALS = frozenset({b"EVAL", b"EVALSHA", b"EVAL_RO", b"EVALSHA_RO", b"FCALL", b"FCALL_RO"})
_KEYLESS = frozenset({b"PING", b"ECHO", b"SCRIPT", b"INFO", b"TIME", b"ROLE", b"CLUSTER", b"DBSIZE"})


def command_key(args: Sequence[Arg]) -> bytes | None:
    """The key a command is routed by, None for a keyless one."""
    name = command_name(args)
    if name in _EVALS:
        return _as_bytes(args[3]) if len(args) > 3 and int(args[2]) > 0 else None
    if name in _KEYLESS or len(args) < 2:
        return None
    return _as_bytes(args[1])


class ClusterClient:
    """Commands routed over a Redis Cluster's masters; the same calls as RespClient.

    ``seeds`` are where the slot map is first asked for; their credentials and TLS are
    used for every node (db is always 0). ``timeout`` bounds each command and, after a
    command's first failure, how long it is retried. ``moved`` and ``asked`` count the
    redirects followed.
    """

    def __init__(self, seeds: Sequence[RespAddress], *, connect_timeout: float = 2.0, timeout: float = 5.0) -> None:
        if not seeds:
            raise ValueError("a Redis Cluster needs at least one seed node")
        self._template = seeds[0]
        self._seeds = [(seed.host, seed.port) for seed in seeds]
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._clients: dict[Node, RespClient] = {}
        self._slots: list[Node | None] = []
        self._replicas: list[Node] = []
        self._down: dict[Node, float] = {}  # when each node last failed to answer (loop time)
        self._generation = 0  # bumped by every new map: a caller refreshes only the map it saw fail
        self._refreshing: asyncio.Lock | None = None
        self.moved = 0
        self.asked = 0

    @property
    def address(self) -> RespAddress:
        """The first seed node."""
        return self._template

    def masters(self) -> list[Node]:
        """The masters of the current slot map, in slot order (empty before the first command)."""
        return list(dict.fromkeys(node for node in self._slots if node is not None))

    def node_for(self, key: bytes) -> Node | None:
        """The master the current map sends ``key`` to (None before the first command)."""
        return self._slots[key_slot(key)] if self._slots else None

    async def execute(self, *args: Arg) -> Any:
        if command_name(args) == b"SCRIPT":
            return await self._on_every_master(args)
        return await self._routed(command_key(args), args)

    async def run_script(self, script: Script, keys: tuple[Arg, ...], args: tuple[Arg, ...]) -> Any:
        key = _as_bytes(keys[0]) if keys else None
        return await evalsha(lambda command: self._routed(key, command), script, keys, args)

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    async def _routed(self, key: bytes | None, args: tuple[Arg, ...]) -> Any:
        slot = None if key is None else key_slot(key)
        backoff: Backoff | None = None
        asking: Node | None = None
        redirects = 0
        while True:
            seen = self._generation
            node: Node | None = None
            try:
                if asking is not None:
                    node, asking = asking, None
                    return await self._asking(node, args)
                node = self._slots[slot] if self._slots and slot is not None else None
                if node is None:
                    node = await self._master(slot)
                return await self._client(node).execute(*args)
            except RespError as exc:
                kind, _, where = str(exc).partition(" ")
                if kind in ("MOVED", "ASK") and redirects < _MAX_REDIRECTS:
                    redirects += 1
                    moved_slot, _, target = where.partition(" ")
                    if kind == "ASK":
                        self.asked += 1
                        asking = _node(target)
                    else:
                        self.moved += 1
                        await self._follow_moved(seen, int(moved_slot), _node(target))
                    continue
                if not refused(exc):
                    raise
                error: BaseException = exc
            except OSError as exc:
                if node is not None:
                    self._down[node] = asyncio.get_running_loop().time()
                if not (unsent(exc) or command_name(args) in READS):
                    raise
                error = exc
            if command_name(args) == b"PING":  # a health check says how things are now: no waiting
                raise error
            backoff = backoff or Backoff(self._timeout)
            await backoff.wait(error)
            await self._refresh_quietly(seen)

    async def _on_every_master(self, args: tuple[Arg, ...]) -> Any:
        backoff = Backoff(self._timeout)
        while True:
            seen = self._generation
            try:
                if not self._slots:
                    await self._master(None)
                replies = await asyncio.gather(*(self._client(node).execute(*args) for node in self.masters()))
                return replies[0]
            except RespError as exc:
                if not refused(exc):
                    raise
                error: BaseException = exc
            except OSError as exc:
                error = exc
            await backoff.wait(error)
            await self._refresh_quietly(seen)

    async def _master(self, slot: int | None) -> Node:
        if not self._slots:
            await self._refresh(self._generation)
        if slot is None:
            for node in self._slots:
                if node is not None:
                    return node
            raise RespError("CLUSTERDOWN no slot is served by any node")
        node = self._slots[slot]
        if node is None:
            raise RespError(f"CLUSTERDOWN hash slot {slot} is not served by any node")
        return node

    async def _follow_moved(self, seen: int, slot: int, target: Node) -> None:
        await self._refresh_quietly(seen)
        if self._slots:  # the node that answered MOVED knows better than a map gossip has not reached yet
            self._slots[slot] = target

    async def _refresh_quietly(self, seen: int) -> None:
        with contextlib.suppress(RespError, OSError):  # the next attempt fails again, and says why
            await self._refresh(seen)

    async def _refresh(self, seen: int) -> None:
        if self._refreshing is None:
            self._refreshing = asyncio.Lock()
        async with self._refreshing:
            if self._generation != seen and self._slots:
                return  # another caller read a newer map meanwhile
            self._slots, self._replicas = await self._fetch_slots()
            self._generation += 1

    async def _fetch_slots(self) -> tuple[list[Node | None], list[Node]]:
        now = asyncio.get_running_loop().time()
        candidates = dict.fromkeys([*self.masters(), *self._seeds, *self._replicas])
        # nodes that failed lately last: a dead host may take connect_timeout to say so
        ordered = sorted(candidates, key=lambda node: self._down.get(node, -_DOWN_FOR) > now - _DOWN_FOR)
        last: BaseException | None = None
        for node in ordered:
            try:
                reply = await self._client(node).execute(b"CLUSTER", b"SLOTS")
            except (RespError, OSError) as exc:
                self._down[node] = asyncio.get_running_loop().time()
                last = exc
                continue
            slots, replicas = _slot_map(reply, node[0])
            if any(owner is not None for owner in slots):
                return slots, replicas
            last = RespError(f"CLUSTERDOWN {node[0]}:{node[1]} serves no slot")
        raise Unreachable(f"no Redis Cluster node answered CLUSTER SLOTS: {last}")

    def _client(self, node: Node) -> RespClient:
        client = self._clients.get(node)
        if client is None:
            address = dataclasses.replace(self._template, host=node[0], port=node[1], db=0)
            client = RespClient(address, connect_timeout=self._connect_timeout, timeout=self._timeout)
            self._clients[node] = client
        return client

    async def _asking(self, node: Node, args: tuple[Arg, ...]) -> Any:
        """``ASKING`` and the command on a connection of their own, so no other command comes between."""
        address = self._client(node).address
        commands: list[tuple[Arg, ...]] = [(b"ASKING",), args]
        if address.password is not None:
            credentials = (address.password,) if address.username is None else (address.username, address.password)
            commands.insert(0, (b"AUTH", *credentials))
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(address.host, address.port, ssl=address.ssl)
        except OSError as exc:
            raise ConnectionError(f"cannot connect to redis at {address.host}:{address.port}: {exc}") from exc
        try:
            async with asyncio.timeout(self._timeout):
                writer.write(b"".join(_pack(command) for command in commands))
                replies = await _read_replies(reader, len(commands))
        finally:
            writer.close()
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise RespError(str(reply))
        return replies[-1]


async def _read_replies(reader: asyncio.StreamReader, count: int) -> list[Any]:
    parser, replies = hiredis.Reader(), list[Any]()
    while len(replies) < count:
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("connection to redis lost: closed by the server")
        parser.feed(data)
        while (reply := parser.gets()) is not False:
            replies.append(reply)
    return replies


def _slot_map(reply: list[Any], asked_host: str) -> tuple[list[Node | None], list[Node]]:
    """The master of every slot, and every replica, from a CLUSTER SLOTS reply."""
    slots: list[Node | None] = [None] * SLOTS
    replicas: list[Node] = []
    for start, end, master, *copies in reply:
        slots[start : end + 1] = [_endpoint(master, asked_host)] * (end - start + 1)
        replicas += [_endpoint(copy, asked_host) for copy in copies]
    return slots, replicas


def _endpoint(entry: list[Any], asked_host: str) -> Node:
    host = entry[0].decode() if isinstance(entry[0], bytes) else str(entry[0] or "")
    # "" (or "?" on Redis 7): the node does not know its own address; it is the one we asked
    return (host if host not in ("", "?") else asked_host), int(entry[1])


def _node(text: str) -> Node:
    host, _, port = text.strip().rpartition(":")
    return host.strip("[]"), int(port.partition("@")[0])


def _as_bytes(value: Arg) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _pack(args: tuple[Arg, ...]) -> bytes:
    packed: bytes = hiredis.pack_command(cast(Any, args))
    return packed


def cluster_from_url(url: str, *, connect_timeout: float, timeout: float) -> ClusterClient:
    """A client of ``redis+cluster://[user:password@]host:port[,host:port...]``."""
    seeds, path = hosts_from_url(url, "redis+cluster", 6379)
    if path.strip("/") not in ("", "0"):
        raise ConfigError(f"store: invalid redis+cluster URL: Redis Cluster has only db 0, not {path!r}")
    return ClusterClient(seeds, connect_timeout=connect_timeout, timeout=timeout)

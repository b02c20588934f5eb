"""A small pipelining Redis client for the store's hot path: a few connections, hiredis parsing.

Why not redis-py's asyncio client for this: measured here (redis-py 8.1, hiredis, uvloop),
it spends 66-125 us of CPU per command, while this client spends 6 us per command under
concurrent load and 34 us one at a time; a session turn makes two commands. redis-py still
parses the store URL (CONTRACT.md: URLs "as in redis-py"; see redis_address.py).

Every command is written whole to one connection and its future queued; the commands of one
event-loop iteration on a connection go out together at its end, in one write (so a busy proxy
makes fewer syscalls, and Redis reads them in one go). Redis answers in order, so each reply
resolves the oldest future of its connection. A caller that is
cancelled or times out leaves its future in the queue, and its reply is read and dropped
when it comes: no reply can ever be handed to another caller (the redis-py asyncio incident
class). When a connection is lost every caller waiting on it gets ConnectionError.

A client keeps up to ``pool_size`` connections, opened lazily: a command goes to the live
connection with the fewest replies outstanding, so a long reply (a full-history LRANGE) does
not hold up short commands; when every live connection is busy and the pool has room, one
more is opened in the background. Commands started in the same event-loop iteration go to
one connection, in the order started, so ``gather(a, b)`` still reaches Redis as a then b
(RedisStore lists a session in its index before writing it that way). At most one connect
attempt runs at a time and every caller that needs it waits on that one, so a burst of
callers against a dead or silent Redis all fail after one connect timeout.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from itertools import repeat
from typing import Any, cast

import hiredis

from .resp_types import RespAddress as RespAddress
from .resp_types import Script as Script

Arg = bytes | str | int | float

MULTI, EXEC = b"*1\r\n$5\r\nMULTI\r\n", b"*1\r\n$4\r\nEXEC\r\n"


def _pack(args: tuple[Arg, ...]) -> bytes:
    # hiredis' stubs type the argument as a 1-tuple; any tuple of arguments is what it takes
    packed: bytes = hiredis.pack_command(cast(Any, args))
    return packed


class RespError(Exception):
    """Redis answered a command with an error reply."""


class RespAuthError(RespError):
    """Redis refused the credentials (WRONGPASS, NOAUTH, invalid password)."""


async def evalsha(
    send: Callable[[tuple[Arg, ...]], Awaitable[Any]], script: Script, keys: tuple[Arg, ...], args: tuple[Arg, ...]
) -> Any:
    """``script`` by EVALSHA, by EVAL when Redis does not know it (a restart, a failover): every client's way."""
    try:
        return await send((b"EVALSHA", script.sha, len(keys), *keys, *args))
    except RespError as exc:
        if not str(exc).startswith("NOSCRIPT"):
            raise
    return await send((b"EVAL", script.source, len(keys), *keys, *args))


def _error(reply: hiredis.ReplyError) -> RespError:
    text = str(reply)
    return RespAuthError(text) if text.startswith(("NOAUTH", "WRONGPASS")) else RespError(text)


def _refuses_credentials(reply: hiredis.ReplyError) -> bool:
    # WRONGPASS (Redis 6+), "ERR invalid password" (before 6), "ERR AUTH <password> called
    # without any password configured"; not "ERR max number of clients reached".
    text = str(reply)
    return text.startswith(("WRONGPASS", "NOAUTH")) or "password" in text.lower()


class _Connection(asyncio.Protocol):
    """One connection; a watchdog closes it when the oldest reply is ``timeout`` overdue.

    Replies come in order, so an overdue one means everything queued behind it is stuck
    too: failing them all and reconnecting is the only way forward. One timer per
    connection costs less than one per command.
    """

    def __init__(self, timeout: float, on_lost: Callable[[_Connection], None]) -> None:
        self._reader = hiredis.Reader()
        self._waiters: deque[asyncio.Future[Any] | None] = deque()  # None: a reply nobody waits for
        self._sent_at: deque[float] = deque()
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._watchdog: asyncio.TimerHandle | None = None
        self._on_lost = on_lost
        self._failure: OSError | None = None
        self._outgoing: list[bytes] = []  # commands of this loop iteration, written together at its end
        self.closed = False

    @property
    def pending(self) -> int:
        """Replies outstanding, those of callers that gave up included."""
        return len(self._waiters)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same API
        self._transport = cast(asyncio.Transport, transport)
        self._watchdog = self._loop.call_later(self._timeout / 4, self._check_overdue)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiters, sent_at = self._waiters, self._sent_at
        try:
            while (reply := self._reader.gets()) is not False:
                waiter = waiters.popleft()
                sent_at.popleft()
                if waiter is not None and not waiter.done():  # a caller that gave up: drop its reply
                    waiter.set_result(reply)
        except IndexError:
            # A reply to no command: Redis at maxclients says so on accepting, then hangs up.
            self._fail(ConnectionError(f"redis sent a reply to no command and is hanging up: {reply!r:.200}"))
            self.abort()
        except hiredis.ProtocolError as exc:
            self._fail(ConnectionError(f"redis sent something that is not RESP: {exc}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"connection to redis lost: {exc or 'closed by the server'}"))

    def _fail(self, error: OSError) -> None:
        self.closed = True
        self._failure = self._failure or error
        self._on_lost(self)
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._sent_at.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter is not None and not waiter.done():
                waiter.set_exception(type(error)(*error.args))  # one exception object per caller

    def _check_overdue(self) -> None:
        loop = self._loop
        if self._sent_at and loop.time() - self._sent_at[0] > self._timeout:
            self._fail(TimeoutError(f"redis did not answer within {self._timeout} s"))
            self.abort()
            return
        self._watchdog = loop.call_later(self._timeout / 4, self._check_overdue)

    def send(self, packed: bytes, skip: int = 0) -> asyncio.Future[Any]:
        """Queue ``packed``: its reply, or with ``skip`` the reply after ``skip`` dropped ones."""
        if self.closed or self._transport is None:
            raise ConnectionError(str(self._failure or "connection to redis is closed"))
        loop = self._loop
        waiter, now = loop.create_future(), loop.time()
        if skip:
            self._waiters.extend(repeat(None, skip))
            self._sent_at.extend(repeat(now, skip))
        self._waiters.append(waiter)
        self._sent_at.append(now)
        outgoing = self._outgoing
        if not outgoing:
            loop.call_soon(self._flush)
        outgoing.append(packed)
        return waiter

    def _flush(self) -> None:
        # one write (one syscall here, one read in Redis) for every command of the iteration
        outgoing, self._outgoing = self._outgoing, []
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(outgoing[0] if len(outgoing) == 1 else b"".join(outgoing))

    def close(self) -> None:
        """Close after writing what is buffered; waiting callers get ConnectionError."""
        if self._outgoing:
            self._flush()
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Close the socket now, without writing what is buffered."""
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._transport is not None:
            self._transport.abort()


class RespClient:
    """Commands over a small pool of lazily (re)connected, pipelined connections.

    Raises ConnectionError when Redis cannot be reached (within ``connect_timeout``, the
    AUTH / SELECT handshake included), TimeoutError when it leaves a command unanswered for
    ``timeout`` (then that connection is dropped), RespAuthError when it refuses the
    credentials, RespError for other error replies. The address's own timeouts, when set,
    take precedence over ``connect_timeout`` and ``timeout``.
    """

    def __init__(
        self, address: RespAddress, *, connect_timeout: float = 2.0, timeout: float = 5.0, pool_size: int = 2
    ) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, not {pool_size}")
        self.address = address
        self._connect_timeout = address.connect_timeout if address.connect_timeout is not None else connect_timeout
        self._timeout = address.timeout if address.timeout is not None else timeout
        self._pool_size = min(pool_size, address.max_connections or pool_size)
        self._connections: list[_Connection] = []  # live ones only: a lost connection removes itself
        self._attempt: asyncio.Task[_Connection] | None = None
        self._batch: _Connection | None = None  # where commands started in this loop iteration go
        self._grow_after = 0.0  # loop time before which a busy pool does not try to grow again

    async def execute(self, *args: Arg) -> Any:
        connection = self._batch
        if connection is None or connection.closed:  # the first command of this loop iteration
            connection = await self._batch_connection()
        reply = await connection.send(_pack(args))
        if isinstance(reply, hiredis.ReplyError):
            raise _error(reply)
        return reply

    async def _batch_connection(self) -> _Connection:
        connection = self._batch
        if connection is None or connection.closed:
            connection = self._pick() or await self._connect()
            if self._batch is None:
                asyncio.get_running_loop().call_soon(self._end_batch)
            self._batch = connection
        return connection

    async def transaction(self, *commands: tuple[Arg, ...]) -> list[Any]:
        """``commands`` in one MULTI / EXEC: atomic, one write and one round trip. Their replies, an
        error reply as a ``hiredis.ReplyError`` in its place; RespError if Redis refused the block."""
        packed = b"".join((MULTI, *map(_pack, commands), EXEC))
        return await self.packed_transaction(packed, len(commands))

    async def packed_transaction(self, packed: bytes, count: int) -> list[Any]:
        """As ``transaction``, for ``count`` commands packed already, between MULTI and EXEC."""
        connection = self._batch
        if connection is None or connection.closed:  # the first command of this loop iteration
            connection = await self._batch_connection()
        replies = await connection.send(packed, skip=count + 1)  # MULTI's OK, then QUEUED each
        if isinstance(replies, hiredis.ReplyError):  # EXECABORT: a command was refused as it was queued
            raise _error(replies)
        return cast(list[Any], replies)

    async def run_script_then(
        self, script: Script, keys: tuple[Arg, ...], args: tuple[Arg, ...], command: tuple[Arg, ...]
    ) -> tuple[Any, Any]:
        """The script, then ``command``, in one transaction: for a long reply, which costs Redis more
        than twice as much CPU read inside a script as read by a plain command."""
        for call, body in ((b"EVALSHA", script.sha), (b"EVAL", script.source)):
            result, reply = await self.transaction((call, body, len(keys), *keys, *args), command)
            if isinstance(reply, hiredis.ReplyError):
                raise _error(reply)
            if not isinstance(result, hiredis.ReplyError):
                return result, reply
            if call == b"EVAL" or not str(result).startswith("NOSCRIPT"):
                raise _error(result)
        raise AssertionError("unreachable")  # pragma: no cover

    async def run_script(self, script: Script, keys: tuple[Arg, ...], args: tuple[Arg, ...]) -> Any:
        return await evalsha(lambda command: self.execute(*command), script, keys, args)

    async def aclose(self) -> None:
        """Close every connection and stop a connect attempt; the next command connects again."""
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.cancel()
        connections, self._connections = self._connections, []
        self._batch = None
        for connection in connections:
            connection.close()

    def _end_batch(self) -> None:
        self._batch = None

    def _pick(self) -> _Connection | None:
        """The live connection with the fewest replies outstanding; None when there is none."""
        best: _Connection | None = None
        for connection in self._connections:
            pending = connection.pending
            if not pending:
                return connection
            if best is None or pending < best.pending:
                best = connection
        if best is not None and len(self._connections) < self._pool_size and self._attempt is None:
            loop = asyncio.get_running_loop()
            if loop.time() >= self._grow_after:
                self._start_attempt(probe=True)  # every connection is busy: open one more for those to come
        return best

    async def _connect(self) -> _Connection:
        attempt = self._attempt
        if attempt is None or attempt.done():
            attempt = self._start_attempt(probe=False)
        # The attempt ends within connect_timeout of its start, so a caller that joins it
        # late waits less than connect_timeout; shield: a caller that gives up does not
        # cancel it for the others.
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if attempt.cancelled() and not (task is not None and task.cancelling()):
                raise ConnectionError("redis client closed while connecting") from None
            raise
        except (OSError, RespError) as exc:
            # one exception object per caller: raising a shared one sets its __context__ from every caller
            raise type(exc)(*exc.args) from exc.__cause__

    def _start_attempt(self, *, probe: bool) -> asyncio.Task[_Connection]:
        attempt = asyncio.get_running_loop().create_task(self._open(probe))
        attempt.add_done_callback(self._attempt_done)
        self._attempt = attempt
        return attempt

    def _attempt_done(self, attempt: asyncio.Task[_Connection]) -> None:
        if self._attempt is attempt:
            self._attempt = None
        if not attempt.cancelled() and attempt.exception() is not None:
            # retrieved here: its callers raise copies, a background attempt has none. No new
            # background attempt for a while: a node at maxclients must not get one per command.
            self._grow_after = asyncio.get_running_loop().time() + self._connect_timeout

    def _forget(self, connection: _Connection) -> None:
        if connection in self._connections:
            self._connections.remove(connection)

    async def _open(self, probe: bool) -> _Connection:
        address = self.address
        connection = _Connection(self._timeout, self._forget)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                if address.path is not None:
                    transport, _ = await loop.create_unix_connection(lambda: connection, address.path)
                else:
                    transport, _ = await loop.create_connection(
                        lambda: connection,
                        address.host,
                        address.port,
                        ssl=address.ssl,
                        server_hostname=address.server_hostname if address.ssl is not None else None,
                    )
                    if address.keepalive:
                        _set_keepalive(transport)
                await self._handshake(connection, probe)
        except BaseException as exc:
            connection.abort()  # whatever failed, the socket must not outlive the attempt
            if isinstance(exc, TimeoutError):
                raise ConnectionError(
                    f"cannot connect to redis at {address.where}: no answer within {self._connect_timeout} s"
                ) from exc
            if isinstance(exc, OSError):
                raise ConnectionError(f"cannot connect to redis at {address.where}: {exc}") from exc
            raise
        self._connections.append(connection)
        return connection

    async def _handshake(self, connection: _Connection, probe: bool) -> None:
        address = self.address
        commands: dict[str, tuple[Arg, ...]] = {}
        if address.password is not None:
            user: tuple[Arg, ...] = () if address.username is None else (address.username,)
            commands["AUTH"] = (b"AUTH", *user, address.password)
        if address.db:
            commands["SELECT"] = (b"SELECT", address.db)
        if address.client_name:
            commands["CLIENT SETNAME"] = (b"CLIENT", b"SETNAME", address.client_name)
        if probe and not commands:
            # a connection opened in the background is proven before the pool uses it: a Redis at
            # maxclients accepts, then answers the first command with an error and hangs up
            commands["PING"] = (b"PING",)
        if not commands:
            return
        # gather retrieves every reply, also those behind a failed one (no "never retrieved" log)
        sent = [connection.send(_pack(command)) for command in commands.values()]
        replies = await asyncio.gather(*sent, return_exceptions=True)
        for name, reply in zip(commands, replies, strict=True):
            if isinstance(reply, hiredis.ReplyError):  # an error reply (an Exception too: test it first)
                if name == "AUTH" and _refuses_credentials(reply):
                    who = f" of user {address.username!r}" if address.username is not None else ""
                    raise RespAuthError(f"redis at {address.where} refused the credentials{who}: {reply}")
                raise RespError(f"redis at {address.where} refused {name}: {reply}")
            if isinstance(reply, BaseException):
                raise reply


def _set_keepalive(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

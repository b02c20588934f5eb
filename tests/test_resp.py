"""The pipelining Redis client under the store: ordering, cancellation, timeouts, reconnects, failed connects."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio

from statefulproxy.stores.redis_address import address_from_url
from statefulproxy.stores.resp import RespAddress, RespAuthError, RespClient, RespError, Script

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(redis_url: str) -> RespClient:
    return RespClient(address_from_url(redis_url))


async def test_cancelled_callers_never_receive_another_callers_reply(client: RespClient) -> None:
    prefix = f"resp-{uuid.uuid4().hex}"
    await asyncio.gather(*(client.execute(b"SET", f"{prefix}:{i}", f"value-{i}") for i in range(200)))
    rng = random.Random(7)

    async def read(i: int) -> tuple[int, bytes]:
        return i, await client.execute(b"GET", f"{prefix}:{i}")

    for _ in range(5):
        tasks = [asyncio.ensure_future(read(rng.randrange(200))) for _ in range(300)]
        await asyncio.sleep(0)  # let every command be written before some are abandoned
        for task in rng.sample(tasks, 100):
            task.cancel()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if not isinstance(result, asyncio.CancelledError):
                i, value = result  # type: ignore[misc]
                assert value == f"value-{i}".encode()
    await client.execute(b"DEL", *(f"{prefix}:{i}" for i in range(200)))
    await client.aclose()


async def test_scripts_load_themselves_when_redis_does_not_know_them(client: RespClient) -> None:
    script = Script(f"return '{uuid.uuid4().hex}' .. ARGV[1]")
    first = await client.run_script(script, (), (b"x",))
    assert first.endswith(b"x")
    assert await client.run_script(script, (), (b"y",)) == first[:-1] + b"y"
    await client.aclose()


async def test_a_script_then_a_command_run_in_one_transaction(client: RespClient) -> None:
    key = f"resp-{uuid.uuid4().hex}"
    script = Script(f"-- {uuid.uuid4().hex}\nredis.call('RPUSH', KEYS[1], ARGV[1]) return redis.call('LLEN', KEYS[1])")
    # unknown to Redis at first: EVALSHA fails inside the transaction, EVAL runs it
    assert await client.run_script_then(script, (key,), (b"a",), (b"LRANGE", key, 0, -1)) == (1, [b"a"])
    assert await client.run_script_then(script, (key,), (b"b",), (b"LRANGE", key, 0, -1)) == (2, [b"a", b"b"])
    with pytest.raises(RespError, match="WRONGTYPE"):  # the command's error reply raises too
        await client.run_script_then(script, (key,), (b"c",), (b"GET", key))
    failing = Script("return redis.error_reply('ERR refused by the script')")
    with pytest.raises(RespError, match="refused by the script"):
        await client.run_script_then(failing, (key,), (), (b"LLEN", key))
    assert await client.execute(b"LLEN", key) == 3  # and the connection goes on
    await client.execute(b"DEL", key)
    await client.aclose()


async def test_error_replies_raise_and_leave_the_connection_usable(client: RespClient) -> None:
    key = f"resp-{uuid.uuid4().hex}"
    await client.execute(b"SET", key, b"text")
    with pytest.raises(RespError, match="WRONGTYPE"):
        await client.execute(b"LPUSH", key, b"x")
    assert await client.execute(b"GET", key) == b"text"
    await client.execute(b"DEL", key)
    await client.aclose()


async def test_a_lost_connection_fails_its_callers_and_the_next_call_reconnects(
    client: RespClient, redis_url: str
) -> None:
    connection_id = await client.execute(b"CLIENT", b"ID")
    blocked = asyncio.ensure_future(client.execute(b"BLPOP", f"resp-never-{uuid.uuid4().hex}", 0))
    killer = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert await killer.execute_command("CLIENT", "KILL", "ID", connection_id) == 1
    finally:
        await killer.aclose()
    with pytest.raises(ConnectionError):
        await blocked
    assert await client.execute(b"PING") == b"PONG"
    assert await client.execute(b"CLIENT", b"ID") != connection_id
    await client.aclose()


async def test_the_address_selects_its_database(redis_url: str) -> None:
    base = redis_url.rsplit("/", 1)[0]
    client = RespClient(address_from_url(f"{base}/7"))
    key = f"resp-db-{uuid.uuid4().hex}"
    await client.execute(b"SET", key, b"here")
    other = redis.asyncio.Redis.from_url(f"{base}/7")
    try:
        assert await other.get(key) == b"here"
    finally:
        await other.delete(key)
        await other.aclose()
        await client.aclose()


async def test_an_unresponsive_server_times_out_and_drops_the_connection() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    host, port = silent.getsockname()
    client = RespClient(RespAddress(host=host, port=port), timeout=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.execute(b"PING")
        assert time.monotonic() - started < 2.0
    finally:
        await client.aclose()
        silent.close()


async def test_an_unreachable_server_is_a_connection_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = RespClient(RespAddress(port=port))
    with pytest.raises(ConnectionError, match="cannot connect"):
        await client.execute(b"PING")


class SilentListener:
    """A TCP server that accepts connections and never answers; counts those still open."""

    def __init__(self) -> None:
        self.accepted = 0
        self.open = 0
        self.port = 0
        self.changed = asyncio.Condition()
        self._writers: list[asyncio.StreamWriter] = []

    async def hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        await self._count(accepted=1, open=1)
        try:
            await reader.read()  # until the client closes (EOF) or resets the connection
        except OSError:
            pass
        finally:
            await self._count(accepted=0, open=-1)

    async def _count(self, *, accepted: int, open: int) -> None:
        async with self.changed:
            self.accepted += accepted
            self.open += open
            self.changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], within: float = 2.0) -> None:
        """Until ``predicate()`` holds, or ``within`` seconds passed (the test's assertion says which)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within), self.changed:
                await self.changed.wait_for(predicate)

    def close_accepted(self) -> None:
        for writer in self._writers:
            writer.close()


@pytest.fixture
async def silent() -> AsyncIterator[SilentListener]:
    listener = SilentListener()
    server = await asyncio.start_server(listener.hold, "127.0.0.1", 0)
    listener.port = server.sockets[0].getsockname()[1]
    try:
        yield listener
    finally:
        server.close()
        listener.close_accepted()
        await server.wait_closed()


async def test_a_handshake_that_times_out_closes_its_socket(silent: SilentListener) -> None:
    # a long command timeout: the watchdog, which would close a leaked socket, stays out of it
    client = RespClient(RespAddress(port=silent.port, password="pw"), connect_timeout=0.1, timeout=60.0)
    for _ in range(3):
        with pytest.raises(ConnectionError, match="cannot connect"):
            await client.execute(b"PING")
    assert silent.accepted == 3
    await silent.wait_for(lambda: silent.open == 0)
    assert silent.open == 0
    await client.aclose()


async def test_a_tls_handshake_that_times_out_closes_its_socket(silent: SilentListener) -> None:
    address = RespAddress(port=silent.port, ssl=ssl.create_default_context())
    client = RespClient(address, connect_timeout=0.1, timeout=60.0)
    for _ in range(3):
        with pytest.raises(ConnectionError, match="cannot connect"):
            await client.execute(b"PING")
    await silent.wait_for(lambda: silent.open == 0)
    assert (silent.accepted, silent.open) == (3, 0)
    await client.aclose()


async def _timed(call: asyncio.Future[object] | asyncio.Task[object]) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        await call
    except Exception as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


@pytest.mark.parametrize("password", ["pw", None], ids=["handshake", "no-handshake"])
async def test_a_burst_of_callers_against_a_silent_server_all_fail_within_the_timeout(
    silent: SilentListener, password: str | None
) -> None:
    client = RespClient(RespAddress(port=silent.port, password=password), connect_timeout=0.3, timeout=0.4)
    started = time.monotonic()
    outcomes = await asyncio.gather(*(_timed(asyncio.ensure_future(client.execute(b"GET", b"k"))) for _ in range(20)))
    elapsed = time.monotonic() - started
    assert all(isinstance(error, ConnectionError | TimeoutError) for error, _ in outcomes), outcomes
    # the watchdog checks every timeout/4: a reply fails between 1 and 1.25 timeouts after it was sent
    assert elapsed < 0.4 * 1.25 + 0.5, sorted(seconds for _, seconds in outcomes)
    assert silent.accepted == 1  # the callers shared one connect attempt
    await client.aclose()


async def test_a_burst_of_callers_against_a_closed_port_fails_at_once() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = RespClient(RespAddress(port=port), connect_timeout=2.0)
    started = time.monotonic()
    outcomes = await asyncio.gather(*(client.execute(b"PING") for _ in range(20)), return_exceptions=True)
    assert all(isinstance(error, ConnectionError) for error in outcomes)
    assert time.monotonic() - started < 1.0
    assert len({id(error) for error in outcomes}) == 20  # one exception per caller, never a shared one


async def test_closing_the_client_while_it_connects_fails_the_waiting_callers(silent: SilentListener) -> None:
    client = RespClient(RespAddress(port=silent.port, password="pw"), connect_timeout=5.0)
    waiting = asyncio.gather(*(client.execute(b"PING") for _ in range(3)), return_exceptions=True)
    await silent.wait_for(lambda: silent.accepted > 0)
    await client.aclose()
    outcomes = await waiting
    assert all(isinstance(error, ConnectionError) for error in outcomes), outcomes
    await silent.wait_for(lambda: silent.open == 0)
    assert silent.open == 0


async def test_the_url_timeouts_override_the_client_arguments(silent: SilentListener) -> None:
    address = address_from_url(f"redis://127.0.0.1:{silent.port}/0?socket_timeout=0.2&socket_connect_timeout=0.1")
    assert (address.timeout, address.connect_timeout) == (0.2, 0.1)
    client = RespClient(address, connect_timeout=5.0, timeout=5.0)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"within 0\.2 s"):
        await client.execute(b"PING")
    assert time.monotonic() - started < 1.0
    await client.aclose()


async def test_a_refused_handshake_leaves_no_unretrieved_future(caplog: pytest.LogCaptureFixture) -> None:
    # A server that refuses AUTH and hangs up: the SELECT and CLIENT SETNAME queued behind AUTH
    # fail with ConnectionError, and nobody may leave those failures unretrieved.
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"SELECT\r\n$1\r\n1\r\n")
        writer.write(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RespClient(RespAddress(port=port, password="wrong", db=1, client_name="refused"))
    caplog.set_level(logging.DEBUG, logger="asyncio")
    try:
        for _ in range(2):
            with pytest.raises(RespAuthError, match="WRONGPASS"):
                await client.execute(b"PING")
        outcomes = await asyncio.gather(*(client.execute(b"PING") for _ in range(5)), return_exceptions=True)
        assert all(isinstance(outcome, RespAuthError) for outcome in outcomes)
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
    del outcomes
    for _ in range(3):  # the failures of the queued replies come with connection_lost, a few iterations later
        await asyncio.sleep(0.01)
    gc.collect()
    assert [record.getMessage() for record in caplog.records if "never retrieved" in record.getMessage()] == []

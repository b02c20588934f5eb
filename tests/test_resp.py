"""The pipelining Redis client under the store: ordering, cancellation, timeouts, reconnects."""

from __future__ import annotations

import asyncio
import random
import socket
import time
import uuid

import pytest
import redis.asyncio

from statefulproxy.stores.redis import address_from_url
from statefulproxy.stores.resp import RespAddress, RespClient, RespError, Script

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

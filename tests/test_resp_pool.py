"""The client's pool of pipelined connections: least-loaded choice, lazy growth, its cap, ordering within a tick."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from harness.redis_server import redis_server_binary
from harness.redis_tls import RedisServer, running_redis_server
from statefulproxy.stores.redis_address import address_from_url
from statefulproxy.stores.resp import RespAddress, RespClient

pytestmark = pytest.mark.anyio

BIG_LIST_LENGTH = 200_000
BIG_ELEMENT = b"x" * 200  # a 40 MB reply: far longer to stream than a GET takes on another connection


def named(redis_url: str) -> RespAddress:
    """The test Redis, with a connection name unique to this client (to count its connections)."""
    return dataclasses.replace(address_from_url(redis_url), client_name=f"pool-{uuid.uuid4().hex}")


async def server_side_connections(redis_url: str, name: str) -> int:
    observer = RespClient(address_from_url(redis_url), pool_size=1)
    try:
        listing: bytes = await observer.execute(b"CLIENT", b"LIST")
    finally:
        await observer.aclose()
    return sum(f" name={name} ".encode() in line for line in listing.splitlines())


async def next_loop_iterations(count: int = 2) -> None:
    # A command is written when its task first runs; commands started within one loop
    # iteration share a connection. Two iterations: the earlier command is written and its
    # iteration is over.
    for _ in range(count):
        await asyncio.sleep(0)


async def warm(client: RespClient, connections: int) -> set[int]:
    """Commands in successive iterations until ``connections`` distinct connections answered."""
    ids: set[int] = set()
    for _ in range(200):
        first = asyncio.ensure_future(client.execute(b"CLIENT", b"ID"))
        await next_loop_iterations()
        ids |= {await client.execute(b"CLIENT", b"ID"), await first}
        if len(ids) >= connections:
            return ids
    raise AssertionError(f"the pool never reached {connections} connections: {ids}")


@pytest.fixture(scope="module")
async def big_list(redis_url: str) -> AsyncIterator[str]:
    key = f"pool-big-{uuid.uuid4().hex}"
    client = RespClient(address_from_url(redis_url))
    chunk = 10_000
    await asyncio.gather(
        *(client.execute(b"RPUSH", key, *[BIG_ELEMENT] * chunk) for _ in range(BIG_LIST_LENGTH // chunk))
    )
    try:
        yield key
    finally:
        await client.execute(b"DEL", key)
        await client.aclose()


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[..., RespClient]]:
    """RespClient(...), closed at the end of the test whatever happens."""
    clients: list[RespClient] = []

    def make(address: RespAddress, *, pool_size: int) -> RespClient:
        clients.append(RespClient(address, pool_size=pool_size))
        return clients[-1]

    yield make
    for client in clients:
        await client.aclose()


async def completion_order(client: RespClient, big_list: str) -> list[str]:
    key = f"pool-small-{uuid.uuid4().hex}"
    await client.execute(b"SET", key, b"small")
    finished: list[str] = []

    async def run(name: str, *command: bytes | str | int) -> None:
        await client.execute(*command)
        finished.append(name)

    long = asyncio.ensure_future(run("LRANGE", b"LRANGE", big_list, 0, -1))
    await next_loop_iterations()
    await asyncio.gather(long, run("GET", b"GET", key))
    await client.execute(b"DEL", key)
    return finished


async def test_a_long_reply_does_not_hold_up_a_short_command_on_another_connection(
    make_client: Callable[..., RespClient], redis_url: str, big_list: str
) -> None:
    client = make_client(address_from_url(redis_url), pool_size=2)
    await warm(client, 2)
    assert await completion_order(client, big_list) == ["GET", "LRANGE"]


async def test_with_one_connection_the_short_command_waits_behind_the_long_reply(
    make_client: Callable[..., RespClient], redis_url: str, big_list: str
) -> None:
    # the same measurement, showing it can fail: one connection answers in order
    client = make_client(address_from_url(redis_url), pool_size=1)
    assert await completion_order(client, big_list) == ["LRANGE", "GET"]


async def test_commands_go_to_the_least_loaded_connection(
    make_client: Callable[..., RespClient], redis_url: str
) -> None:
    client = make_client(address_from_url(redis_url), pool_size=2)
    await warm(client, 2)
    blocker = await client.execute(b"CLIENT", b"ID")
    blocked = asyncio.ensure_future(client.execute(b"BLPOP", f"pool-never-{uuid.uuid4().hex}", 0))
    await next_loop_iterations()
    others = {await client.execute(b"CLIENT", b"ID") for _ in range(20)}
    assert len(others) == 1 and blocker not in others  # noqa: PT018
    blocked.cancel()


async def test_commands_started_in_one_loop_iteration_reach_redis_in_order(
    make_client: Callable[..., RespClient], redis_url: str
) -> None:
    client = make_client(address_from_url(redis_url), pool_size=4)
    await warm(client, 2)
    key = f"pool-order-{uuid.uuid4().hex}"
    for round_ in range(100):
        ids = await asyncio.gather(*(client.execute(b"CLIENT", b"ID") for _ in range(3)))
        assert len(set(ids)) == 1
        await asyncio.gather(*(client.execute(b"RPUSH", key, f"{round_}:{i}") for i in range(10)))
        assert await client.execute(b"LRANGE", key, 0, -1) == [f"{round_}:{i}".encode() for i in range(10)]
        await client.execute(b"DEL", key)


async def test_connections_open_lazily_and_never_beyond_the_pool_size(
    make_client: Callable[..., RespClient], redis_url: str
) -> None:
    address = named(redis_url)
    client = make_client(address, pool_size=3)
    assert await server_side_connections(redis_url, address.client_name or "") == 0
    for _ in range(50):
        await client.execute(b"PING")  # one at a time: one connection is enough
    assert await server_side_connections(redis_url, address.client_name or "") == 1
    # commands that each hold their connection for 50 ms, started 5 ms apart: a busy pool grows
    never = f"pool-never-{uuid.uuid4().hex}"
    blocking = []
    for _ in range(100):
        blocking.append(asyncio.ensure_future(client.execute(b"BLPOP", never, 0.05)))
        await asyncio.sleep(0.005)
    assert await asyncio.gather(*blocking) == [None] * 100
    assert await server_side_connections(redis_url, address.client_name or "") == 3


async def test_the_url_max_connections_caps_the_pool(make_client: Callable[..., RespClient], redis_url: str) -> None:
    address = dataclasses.replace(named(redis_url), max_connections=1)
    client = make_client(address, pool_size=4)
    for _ in range(20):
        first = asyncio.ensure_future(client.execute(b"PING"))
        await next_loop_iterations()
        await asyncio.gather(first, client.execute(b"PING"))
    assert await server_side_connections(redis_url, address.client_name or "") == 1


async def test_cancelled_callers_never_receive_another_callers_reply_across_the_pool(
    make_client: Callable[..., RespClient], redis_url: str
) -> None:
    client = make_client(address_from_url(redis_url), pool_size=3)
    prefix = f"pool-{uuid.uuid4().hex}"
    await asyncio.gather(*(client.execute(b"SET", f"{prefix}:{i}", f"value-{i}") for i in range(100)))
    rng = random.Random(11)

    async def read(i: int) -> tuple[int, bytes]:
        return i, await client.execute(b"GET", f"{prefix}:{i}")

    for _ in range(20):
        tasks = []
        for _ in range(5):  # five loop iterations, so that the commands spread over the connections
            tasks += [asyncio.ensure_future(read(rng.randrange(100))) for _ in range(30)]
            await asyncio.sleep(0)
        for task in rng.sample(tasks, 50):
            task.cancel()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if not isinstance(result, asyncio.CancelledError):
                i, value = result  # type: ignore[misc]
                assert value == f"value-{i}".encode()
    await client.execute(b"DEL", *(f"{prefix}:{i}" for i in range(100)))


async def test_losing_one_connection_leaves_the_others_serving(
    make_client: Callable[..., RespClient], redis_url: str
) -> None:
    client = make_client(address_from_url(redis_url), pool_size=2)
    victim, survivor = sorted(await warm(client, 2))
    killer = make_client(address_from_url(redis_url), pool_size=1)
    assert await killer.execute(b"CLIENT", b"KILL", b"ID", victim) == 1
    started = time.monotonic()
    answered = {await client.execute(b"CLIENT", b"ID") for _ in range(10)}
    assert victim not in answered
    assert time.monotonic() - started < 1.0
    assert survivor in answered or len(answered) >= 1


@pytest.fixture(scope="module")
def crowded_server() -> Iterator[RedisServer]:
    with running_redis_server(redis_server_binary(), extra_args=["--maxclients", "2"]) as server:
        yield server


async def test_a_pool_that_cannot_grow_keeps_serving_on_the_connections_it_has(
    make_client: Callable[..., RespClient], crowded_server: RedisServer
) -> None:
    # Redis at maxclients accepts a connection, answers its first command with an error and
    # hangs up: the pool must find that out itself, never by failing a caller's command.
    observer = make_client(RespAddress(port=crowded_server.port or 0), pool_size=1)
    await observer.execute(b"PING")
    client = make_client(RespAddress(port=crowded_server.port or 0), pool_size=2)
    never = f"pool-never-{uuid.uuid4().hex}"
    answers = []
    started = time.monotonic()
    for _ in range(10):
        blocking = asyncio.ensure_future(client.execute(b"BLPOP", never, 0.02))
        await next_loop_iterations()
        answers.append(await client.execute(b"PING"))  # the pool is busy: it tries to grow
        await blocking
    elapsed = time.monotonic() - started
    assert answers == [b"PONG"] * 10
    stats: bytes = await observer.execute(b"INFO", b"stats")
    rejected = re.search(rb"rejected_connections:(\d+)", stats)
    assert rejected is not None
    # it tried, and after a failed attempt it tries no more for connect_timeout (2 s)
    assert 1 <= int(rejected.group(1)) <= 1 + elapsed // 2.0

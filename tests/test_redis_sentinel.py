"""The store through Redis Sentinel: turns, a forced failover (READONLY from the demoted master), a killed master.

Each test starts its own master + replica + sentinel (harness.redis_cluster.SentinelSet).
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest
import redis.asyncio

from harness.redis_cluster import SentinelSet
from statefulproxy.errors import ConfigError
from statefulproxy.stores import store_from_url
from statefulproxy.stores.redis import RedisStore
from statefulproxy.stores.sentinel import SentinelClient, sentinel_from_url
from test_redis_cluster import OWNER, Timeline, is_subsequence, names, run_turns, turn

pytestmark = pytest.mark.anyio


@pytest.fixture
def sentinel_set() -> Iterator[SentinelSet]:
    with SentinelSet(down_after_ms=500) as group:
        yield group


@pytest.fixture
async def sentinel_store(sentinel_set: SentinelSet, anyio_backend: str) -> AsyncIterator[RedisStore]:
    store = store_from_url(sentinel_set.url, ttl=600, key_prefix=f"sptest-{uuid.uuid4().hex}", timeout=5)
    assert isinstance(store, RedisStore)
    yield store
    await store.aclose()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://a:26379", "expected /service_name[/db] after the sentinels"),
        ("redis+sentinel://a:26379/", "expected /service_name[/db] after the sentinels"),
        ("redis+sentinel://a:26379/svc/1/2", "expected /service_name[/db] after the sentinels"),
        ("redis+sentinel://a:26379/svc/x", "db 'x' is not a number"),
        ("redis+sentinel://:pw@/svc", "a host is missing"),
        ("redis+sentinel://a:0/svc", "port '0' of a is not a port number"),
    ],
)
def test_bad_sentinel_urls_are_one_line_config_errors(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        store_from_url(url, ttl=60)
    assert str(caught.value).startswith(f"store: invalid redis+sentinel URL: {problem}")
    assert "pw" not in str(caught.value)


async def test_sentinel_url_credentials_and_db_are_the_masters(anyio_backend: str) -> None:
    client = sentinel_from_url("redis+sentinel://app:s3cret@s1,s2:26380/cache/4", connect_timeout=1, timeout=1)
    assert isinstance(client, SentinelClient)
    assert client.service == "cache"
    assert [(s.address.host, s.address.port, s.address.password) for s in client._sentinels] == [
        ("s1", 26379, None),
        ("s2", 26380, None),
    ]
    address = client.address
    assert (address.host, address.username, address.password, address.db) == ("s1", "app", "s3cret", 4)
    await client.aclose()


async def test_turns_go_to_the_master_the_sentinel_names(sentinel_set: SentinelSet, sentinel_store: RedisStore) -> None:
    await sentinel_store.open()
    assert await sentinel_store.ping() is True
    assert await sentinel_store.commit(OWNER, "s1", turn("u1", create=True)) == "ok"
    assert await sentinel_store.commit(OWNER, "s1", turn("u2")) == "ok"
    assert names(await sentinel_store.messages(OWNER, "s1")) == ["u1", "u2"]
    assert sentinel_store.address.port == sentinel_set.master.port


async def test_a_demoted_master_answers_readonly_and_the_turn_goes_to_the_new_one(
    sentinel_set: SentinelSet, sentinel_store: RedisStore
) -> None:
    assert await sentinel_store.commit(OWNER, "s1", turn("u1", create=True)) == "ok"
    old = sentinel_set.master.port
    async with redis.asyncio.Redis(port=old) as master:  # u1 on the replica before it is promoted
        assert await master.execute_command("WAIT", 1, 2000) == 1
    async with redis.asyncio.Redis(port=sentinel_set.sentinel_port) as sentinel:
        await sentinel.execute_command("SENTINEL", "FAILOVER", sentinel_set.service)
    new = await anyio.to_thread.run_sync(sentinel_set.wait_master, old)
    # Sentinel demotes a live old master only ~8 s after the switch: do it as it would, now.
    async with redis.asyncio.Redis(port=old) as demoted:
        await demoted.execute_command("REPLICAOF", "127.0.0.1", new)
        assert (await demoted.execute_command("ROLE"))[0] == b"slave"

    # The store still goes to the old master: READONLY, the sentinels asked again, the turn sent again.
    assert sentinel_store.address.port == old
    assert await sentinel_store.commit(OWNER, "s1", turn("u2")) == "ok"
    assert sentinel_store.address.port == sentinel_set.replica.port
    assert names(await sentinel_store.messages(OWNER, "s1")) == ["u1", "u2"]


@pytest.mark.slow
async def test_a_killed_master_is_replaced_and_no_acknowledged_turn_is_lost(
    sentinel_set: SentinelSet, sentinel_store: RedisStore
) -> None:
    sessions = [f"s{i}" for i in range(6)]
    timeline = Timeline()
    for session_id in sessions:
        assert await sentinel_store.commit(OWNER, session_id, turn(f"{session_id}-0", create=True)) == "ok"
        timeline.acked[session_id] = [f"{session_id}-0"]
    stop = anyio.Event()
    old = sentinel_set.master.port
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            for session_id in sessions:
                tasks.start_soon(run_turns, sentinel_store, session_id, timeline, stop)
            await anyio.sleep(0.3)
            killed_at = timeline.killed_at = time.monotonic()
            sentinel_set.master.stop(signal.SIGKILL)
            while not all(any(t > killed_at for t in timeline.successes[s]) for s in sessions):  # noqa: ASYNC110
                await anyio.sleep(0.01)
            await anyio.sleep(0.2)
            stop.set()
    first_failure = min([t for t in timeline.failures if t > killed_at], default=killed_at)
    recovered = max(min(t for t in timeline.successes[s] if t > killed_at) for s in sessions)
    print(
        f"\nsentinel failover: unavailable {recovered - first_failure:.2f} s (first failure to first success of "
        f"every session; {recovered - killed_at:.2f} s from the kill), {len(timeline.failures)} failed operations, "
        f"{sum(map(len, timeline.acked.values()))} acknowledged turns"
    )

    assert sentinel_set.master_port() == sentinel_set.replica.port != old
    assert sentinel_store.address.port == sentinel_set.replica.port
    for session_id in timeline.acked:
        stored = names(await sentinel_store.messages(OWNER, session_id))
        required = timeline.required(session_id)  # all but what async replication may lose (documented)
        assert is_subsequence(required, stored), (session_id, required, stored)
        assert set(stored) <= timeline.attempted[session_id] | {f"{session_id}-0"}
        assert len(stored) == len(set(stored))  # none applied twice

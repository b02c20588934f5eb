"""The store on a real Redis Cluster: slot routing, MOVED / ASK / TRYAGAIN, two replicas of the proxy, a failover.

The shared 3-master cluster (conftest.redis_cluster) serves every test but the failover one,
which forms its own cluster with a replica per master and kills a master with SIGKILL.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import anyio
import orjson
import pytest
import redis.asyncio
from redis.crc import key_slot

from harness.redis_cluster import RedisCluster
from statefulproxy.errors import ConfigError, StoreError
from statefulproxy.stores import NewSession, Store, StoredMessage, TurnWrite, store_from_url
from statefulproxy.stores.cluster import ClusterClient, cluster_from_url, command_key
from statefulproxy.stores.redis import RedisStore
from statefulproxy.stores.redis_topology import unsent
from statefulproxy.stores.resp import Script

pytestmark = pytest.mark.anyio

OWNER = "owner-a"


def turn(name: str, create: bool = False) -> TurnWrite:
    replay = orjson.dumps({"role": "user", "content": name})
    return TurnWrite(
        head=[],
        tail=[StoredMessage(replay, b"{}")],
        drop_leading=0,
        tail_leading_system=0,
        usage={},
        create=NewSession() if create else None,
    )


def names(messages: list[StoredMessage] | None) -> list[str]:
    assert messages is not None
    return [orjson.loads(m.replay)["content"] for m in messages]


def session_slot(owner: str, session_id: str) -> int:
    """The slot of a session's keys: its ``{digest}`` hash tag (stores/redis.py)."""
    return key_slot(hashlib.blake2b(f"{owner}\0{session_id}".encode(), digest_size=16).hexdigest().encode())


def is_subsequence(part: list[str], whole: list[str]) -> bool:
    remaining = iter(whole)
    return all(name in remaining for name in part)


@pytest.fixture
def prefix() -> str:
    return f"sptest-{uuid.uuid4().hex}"


@pytest.fixture
async def cluster_store(redis_cluster: RedisCluster, prefix: str, anyio_backend: str) -> AsyncIterator[RedisStore]:
    store = store_from_url(redis_cluster.url, ttl=600, key_prefix=prefix)
    assert isinstance(store, RedisStore)
    yield store
    await store.aclose()


# Routing and URLs, no server needed


@pytest.mark.parametrize(
    ("args", "key"),
    [
        ((b"EVALSHA", b"abc", 2, "k1", "k2", "arg"), b"k1"),
        ((b"EVAL", b"return 1", 0, "arg"), None),
        ((b"HGETALL", "sp:{x}:meta"), b"sp:{x}:meta"),
        (("zscore", "index", "member"), b"index"),
        ((b"PING",), None),
        ((b"SCRIPT", b"LOAD", b"return 1"), None),
    ],
)
def test_the_routing_key_is_the_first_key(args: tuple[bytes | str | int, ...], key: bytes | None) -> None:
    assert command_key(args) == key


def test_only_commands_that_never_left_are_sent_again() -> None:
    refused = ConnectionError("cannot connect to redis at 127.0.0.1:1: [Errno 111] Connection refused")
    assert unsent(refused)
    chained = ConnectionError("something else")
    chained.__cause__ = ConnectionRefusedError(111, "refused")
    assert unsent(chained)
    assert not unsent(ConnectionError("connection to redis lost: closed by the server"))
    assert not unsent(TimeoutError("redis did not answer within 5 s"))


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+cluster://", "a host is missing"),
        ("redis+cluster://a:7000,,b:7001", "a host is missing"),
        ("redis+cluster://a:70000", "port '70000' of a is not a port number"),
        ("redis+cluster://a:7000/3", "Redis Cluster has only db 0"),
        ("redis+cluster://a:7000?ssl_cert_reqs=none", "options (?ssl_cert_reqs...) are not supported"),
    ],
)
def test_bad_cluster_urls_are_one_line_config_errors(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        store_from_url(url, ttl=60)
    assert str(caught.value).startswith(f"store: invalid redis+cluster URL: {problem}")
    assert "\n" not in str(caught.value)


async def test_cluster_url_seeds_carry_the_credentials(anyio_backend: str) -> None:
    client = cluster_from_url("redis+cluster://app:s%40cret@a:7000,[::1]:7001,b", connect_timeout=1, timeout=1)
    assert client._seeds == [("a", 7000), ("::1", 7001), ("b", 6379)]
    assert (client.address.host, client.address.port) == ("a", 7000)
    assert (client.address.username, client.address.password, client.address.db) == ("app", "s@cret", 0)
    store = store_from_url("redis+cluster://app:pw@a:7000,b:7001", ttl=60)
    assert isinstance(store, RedisStore)
    await store.aclose()


# On the shared cluster


async def test_sessions_spread_over_every_master(
    redis_cluster: RedisCluster, cluster_store: RedisStore, prefix: str
) -> None:
    for i in range(60):
        assert await cluster_store.commit(OWNER, f"s{i}", turn("u1", create=True)) == "ok"

    masters = redis_cluster.masters()
    assert len(masters) == 3
    per_master: dict[int, set[str]] = {}
    for port in masters:
        async with redis.asyncio.Redis(port=port, decode_responses=True) as node:
            keys = [key async for key in node.scan_iter(match=f"{prefix}:{{*}}:*")]
        metas = {key.split(":")[1] for key in keys if key.endswith(":meta")}
        lists = {key.split(":")[1] for key in keys if key.endswith(":msgs")}
        assert metas == lists  # a session's keys are on one node
        per_master[port] = metas
    assert all(len(tags) >= 5 for tags in per_master.values()), {p: len(t) for p, t in per_master.items()}
    assert sum(len(tags) for tags in per_master.values()) == 60
    listed, more = await cluster_store.list_sessions(OWNER, limit=100) or ([], True)
    assert ([record.id for record in listed], more) == ([f"s{i}" for i in reversed(range(60))], False)


async def test_two_replicas_alternate_turns_and_see_each_other_at_once(redis_cluster: RedisCluster) -> None:
    prefix = f"sptest-{uuid.uuid4().hex}"
    replicas = [store_from_url(redis_cluster.url, ttl=600, key_prefix=prefix) for _ in range(2)]
    try:
        sessions = [f"chat-{i}" for i in range(6)]
        for step in range(8):
            for index, session_id in enumerate(sessions):
                store = replicas[(step + index) % 2]
                snapshot = await store.load(OWNER, session_id)
                seen = [orjson.loads(item)["content"] for item in snapshot.replay] if snapshot else []
                assert seen == [f"t{n}" for n in range(step)], (session_id, step)
                assert await store.commit(OWNER, session_id, turn(f"t{step}", create=step == 0)) == "ok"
        other = replicas[1]
        assert names(await other.messages(OWNER, sessions[0])) == [f"t{n}" for n in range(8)]
    finally:
        for store in replicas:
            await store.aclose()


@dataclass
class Move:
    """A slot moving from ``source`` to ``target`` by hand, as redis-cli --cluster reshard does it."""

    slot: int
    source: int
    target: int
    ids: dict[int, str] = field(default_factory=dict)
    done: bool = False

    async def begin(self, masters: list[int]) -> None:
        for port in masters:
            async with redis.asyncio.Redis(port=port, decode_responses=True) as node:
                self.ids[port] = await node.execute_command("CLUSTER", "MYID")
        await self._on(self.target, "SETSLOT", self.slot, "IMPORTING", self.ids[self.source])
        await self._on(self.source, "SETSLOT", self.slot, "MIGRATING", self.ids[self.target])

    async def finish(self) -> None:
        keys = await self._on(self.source, "GETKEYSINSLOT", self.slot, 1000)
        if keys:
            async with redis.asyncio.Redis(port=self.source) as node:
                await node.execute_command("MIGRATE", "127.0.0.1", self.target, "", 0, 5000, "KEYS", *keys)
        for port in [self.target, self.source, *(p for p in self.ids if p not in (self.source, self.target))]:
            await self._on(port, "SETSLOT", self.slot, "NODE", self.ids[self.target])
        self.done = True

    async def cancel(self) -> None:
        for port in (self.source, self.target):
            await self._on(port, "SETSLOT", self.slot, "STABLE")

    async def _on(self, port: int, *args: object) -> object:
        async with redis.asyncio.Redis(port=port, decode_responses=True) as node:
            return await node.execute_command("CLUSTER", *args)


async def test_ask_during_a_slot_migration_tryagain_for_scripts_and_moved_after_it(
    redis_cluster: RedisCluster, anyio_backend: str
) -> None:
    tag = f"{{mig-{uuid.uuid4().hex}}}"
    here, there = f"{tag}:here", f"{tag}:there"
    client = cluster_from_url(redis_cluster.url, connect_timeout=2, timeout=5)
    stale = cluster_from_url(redis_cluster.url, connect_timeout=2, timeout=5)
    await client.execute(b"SET", here, b"1")
    assert await stale.execute(b"GET", here) == b"1"  # loads the map that the move makes stale
    source = client.node_for(here.encode())
    assert source is not None
    move = Move(key_slot(here.encode()), source[1], next(p for p in redis_cluster.masters() if p != source[1]))
    await move.begin(redis_cluster.masters())
    try:
        assert await client.execute(b"GET", here) == b"1"  # the source still has it: no redirect
        assert client.asked == 0
        await client.execute(b"SET", there, b"2")  # the source has no such key: ASK, ASKING, written on the target
        assert (client.asked, await move._on(move.target, "COUNTKEYSINSLOT", move.slot)) == (1, 1)
        assert await client.execute(b"GET", there) == b"2"
        assert client.asked == 2

        # Keys on both nodes: the target answers TRYAGAIN, retried until the move is done, then MOVED.
        both = Script("return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])}")
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                results: list[object] = []

                async def run() -> None:
                    results.append(await client.run_script(both, (here, there), ()))

                tasks.start_soon(run)
                while client.asked < 4:  # noqa: ASYNC110 (polls a counter): asked, told to try again, asked again
                    await anyio.sleep(0.002)
                await move.finish()
        assert results == [[b"1", b"2"]]  # each retry read the map again: it names the target now
        assert client.node_for(here.encode()) == ("127.0.0.1", move.target)

        assert stale.node_for(here.encode()) == source
        assert await stale.execute(b"GET", here) == b"1"  # MOVED: the map is read again
        assert (stale.moved, stale.node_for(here.encode())) == (1, ("127.0.0.1", move.target))
    finally:
        if not move.done:
            await move.cancel()
        await client.execute(b"DEL", here, there)
        await client.aclose()
        await stale.aclose()


async def test_a_wrong_map_entry_is_corrected_by_moved(cluster_store: RedisStore) -> None:
    assert await cluster_store.commit(OWNER, "s1", turn("u1", create=True)) == "ok"
    client = cluster_store._client
    assert isinstance(client, ClusterClient)
    slot = session_slot(OWNER, "s1")
    right = client._slots[slot]
    client._slots[slot] = next(node for node in client.masters() if node != right)  # as a stale map would say
    assert names(await cluster_store.messages(OWNER, "s1")) == ["u1"]
    assert (client.moved, client._slots[slot]) == (1, right)


async def test_a_cluster_that_cannot_be_reached_is_a_store_error(anyio_backend: str) -> None:
    store = store_from_url("redis+cluster://127.0.0.1:1,127.0.0.1:2", ttl=60, timeout=0.3)
    try:
        assert await store.ping() is False
        with pytest.raises(StoreError, match="no Redis Cluster node answered CLUSTER SLOTS"):
            await store.load(OWNER, "s1")
    finally:
        await store.aclose()


# A failover


@pytest.fixture
def failover_cluster() -> Iterator[RedisCluster]:
    """3 masters with a replica each, ``appendfsync always``, failure detected after 1 s."""
    with RedisCluster(masters=3, replicas=1, node_timeout_ms=1000, persistent=True) as cluster:
        yield cluster


@dataclass
class Timeline:
    acked: dict[str, list[str]] = field(default_factory=dict)
    attempted: dict[str, set[str]] = field(default_factory=dict)
    failures: list[float] = field(default_factory=list)
    successes: dict[str, list[float]] = field(default_factory=dict)
    acked_at: dict[str, float] = field(default_factory=dict)
    killed_at: float | None = None

    def required(self, session_id: str) -> list[str]:
        """The acknowledged turns that must survive a failover. Redis replicates asynchronously: a
        turn acknowledged in the last moment before its master died may not have reached the
        replica, and Redis documents that loss. Every earlier turn, and every later one, must stay."""
        killed = self.killed_at
        if killed is None:
            return self.acked[session_id]
        return [
            name
            for name in self.acked[session_id]
            if not killed - REPLICATION_WINDOW_S <= self.acked_at.get(name, 0.0) <= killed
        ]


# far longer than replication takes on loopback (well under a millisecond)
REPLICATION_WINDOW_S = 0.25


async def run_turns(store: Store, session_id: str, timeline: Timeline, stop: anyio.Event) -> None:
    """Turns on one session until ``stop``: load, check nothing acknowledged is missing, commit."""
    acked, attempted = timeline.acked.setdefault(session_id, []), timeline.attempted.setdefault(session_id, set())
    successes = timeline.successes.setdefault(session_id, [])
    n = 0
    while not stop.is_set():
        n += 1
        name = f"{session_id}-{n}"
        attempted.add(name)
        try:
            snapshot = await store.load(OWNER, session_id)
            assert snapshot is not None
            seen = [orjson.loads(item)["content"] for item in snapshot.replay]
            required = timeline.required(session_id)
            assert is_subsequence(required, seen), (session_id, required, seen)
            if await store.commit(OWNER, session_id, turn(name)) == "ok":
                acked.append(name)
                timeline.acked_at[name] = time.monotonic()
                successes.append(time.monotonic())
        except StoreError:
            timeline.failures.append(time.monotonic())


@pytest.mark.slow
async def test_a_master_killed_mid_run_fails_over_and_loses_no_acknowledged_turn(
    failover_cluster: RedisCluster, anyio_backend: str
) -> None:
    cluster = failover_cluster
    store = store_from_url(cluster.url, ttl=600, key_prefix=f"sptest-{uuid.uuid4().hex}", timeout=5)
    owners = cluster.slot_owners()
    victim = cluster.masters()[0]
    on_victim = [f"v{i}" for i in range(200) if owners[session_slot(OWNER, f"v{i}")] == victim][:4]
    elsewhere = [f"o{i}" for i in range(200) if owners[session_slot(OWNER, f"o{i}")] != victim][:4]
    timeline = Timeline()
    try:
        await store.open()
        for session_id in on_victim + elsewhere:
            assert await store.commit(OWNER, session_id, turn(f"{session_id}-0", create=True)) == "ok"
            timeline.acked[session_id] = [f"{session_id}-0"]
        stop = anyio.Event()
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tasks:
                for session_id in on_victim + elsewhere:
                    tasks.start_soon(run_turns, store, session_id, timeline, stop)
                await anyio.sleep(0.3)
                killed_at = timeline.killed_at = time.monotonic()
                cluster.kill(victim)
                while not all(any(t > killed_at for t in timeline.successes[s]) for s in on_victim):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
                await anyio.sleep(0.2)  # some turns on the new master too
                stop.set()
        first_failure = min([t for t in timeline.failures if t > killed_at], default=None)
        recovered = max(min(t for t in timeline.successes[s] if t > killed_at) for s in on_victim)
        start = killed_at if first_failure is None else first_failure
        print(
            f"\ncluster failover: unavailable {recovered - start:.2f} s (first failure to first success of every "
            f"session on the killed master; {recovered - killed_at:.2f} s from the kill), "
            f"{len(timeline.failures)} failed operations, {sum(map(len, timeline.acked.values()))} acknowledged turns"
        )

        promoted = cluster.masters()
        assert victim not in promoted
        assert len(promoted) == 3
        for session_id in timeline.acked:
            stored = names(await store.messages(OWNER, session_id))
            required = timeline.required(session_id)
            assert is_subsequence(required, stored), (session_id, required, stored)  # no acknowledged turn lost
            assert set(stored) <= timeline.attempted[session_id] | {f"{session_id}-0"}
            assert len(stored) == len(set(stored))  # none applied twice
    finally:
        await store.aclose()

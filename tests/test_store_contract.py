"""The Store contract, held by every store: each test runs against memory:// and a real Redis."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, cast

import anyio
import hiredis
import orjson
import pytest
import redis.asyncio

from statefulproxy.errors import ConfigError, StoreError
from statefulproxy.stores import (
    DROP_ALL,
    ExpiresAfter,
    MemoryStore,
    NewSession,
    SessionLimits,
    Store,
    StoredMessage,
    TurnWrite,
    store_from_url,
)
from statefulproxy.stores import resp as resp_module
from statefulproxy.stores.redis import RedisStore

pytestmark = pytest.mark.anyio

SCOPE = "scope-a"
START = 1_700_000_000.0


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class StoreFactory:
    """Builds stores of one backend for one test, all under one fresh key prefix.

    ``backend`` is "memory" or "redis"; a Redis Cluster is "redis" with ``cluster`` set, so
    that every Redis assertion of the suites (keys, TTLs) runs on the cluster too.
    """

    def __init__(self, backend: str, url: str) -> None:
        self.cluster = backend == "cluster"
        self.backend = "redis" if self.cluster else backend
        self.url = url
        self.prefix = f"sptest-{uuid.uuid4().hex}"
        self.clock = FakeClock()
        self.stores: list[Store] = []
        self._diagnostics: redis.asyncio.Redis | None = None

    def __call__(self, *, ttl: float | None = None, clock: FakeClock | None = None) -> Store:
        store = store_from_url(self.url, ttl=ttl, clock=clock or self.clock, key_prefix=self.prefix)
        self.stores.append(store)
        return store

    @property
    def diagnostics(self) -> redis.asyncio.Redis:
        """A redis-py client on the same server (cluster), to look at keys from outside the store."""
        if self._diagnostics is None:
            if self.cluster:  # redis-py's cluster client routes keys and scans every master
                host, _, port = self.url.removeprefix("redis+cluster://").split(",")[0].rpartition(":")
                cluster = redis.asyncio.RedisCluster(host=host, port=int(port))
                self._diagnostics = cast(redis.asyncio.Redis, cluster)  # the same calls, for these tests
            else:
                self._diagnostics = redis.asyncio.Redis.from_url(self.url)
        return self._diagnostics

    def redis(self, store: Store) -> RedisStore:
        assert isinstance(store, RedisStore)
        return store

    async def keys(self, store: Store) -> list[str]:
        return sorted([key.decode() async for key in self.diagnostics.scan_iter(match=f"{self.prefix}:*")])

    async def session_keys(self, store: Store) -> list[str]:
        """The keys of sessions: not the shared secret, scope indexes or client secrets."""
        pattern = re.compile(rf"{re.escape(self.prefix)}:{{[0-9a-f]{{32}}}}:(meta|msgs|window)")
        return [key for key in await self.keys(store) if pattern.fullmatch(key)]

    async def pttls(self, store: Store) -> dict[str, int]:
        """PTTL of every session key."""
        client = self.diagnostics
        return {key: await client.pttl(key) for key in await self.session_keys(store)}


@pytest.fixture(params=["memory", "redis", "cluster"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(backend: str, request: pytest.FixtureRequest) -> str:
    # Only the redis runs need (and start) the server, only the cluster runs the cluster.
    if backend == "cluster":
        return str(request.getfixturevalue("redis_cluster").url)
    return "memory://" if backend == "memory" else str(request.getfixturevalue("redis_url"))


@pytest.fixture
async def make_store(backend: str, store_url: str, anyio_backend: str) -> AsyncIterator[StoreFactory]:
    factory = StoreFactory(backend, store_url)
    yield factory
    try:
        for store in factory.stores:
            if isinstance(store, RedisStore):  # leave nothing behind on a shared $REDIS_URL
                if keys := await factory.keys(store):
                    await factory.diagnostics.delete(*keys)
                break
    finally:
        for store in factory.stores:
            await store.aclose()
        if factory._diagnostics is not None:
            await factory._diagnostics.aclose()


@pytest.fixture
async def store(make_store: StoreFactory) -> Store:
    return make_store(ttl=3600)


def message(role: str, content: str) -> StoredMessage:
    # Content with a newline and non-ASCII text: orjson escapes the one, keeps the other.
    replay = orjson.dumps({"role": role, "content": f"{content}\nü"})
    return StoredMessage(replay, orjson.dumps({"id": f"msg_{content}", "created_at": 1, "note": "x\ny"}))


def name_of(replay: bytes) -> str:
    content: str = orjson.loads(replay)["content"]
    return content.removesuffix("\nü")


def turn(
    *names: str,
    head: Sequence[str] = (),
    drop_leading: int = 0,
    usage: dict[str, int] | None = None,
    title_hint: str | None = None,
    create: NewSession | None = None,
) -> TurnWrite:
    """A TurnWrite whose tail is ``names`` ("s*" system, "d*" developer, "a*" assistant, else user)."""
    roles = {"s": "system", "d": "developer", "a": "assistant"}
    tail = [message(roles.get(name[0], "user"), name) for name in names]
    lead = next((i for i, name in enumerate(names) if name[0] not in "sd"), len(names))
    return TurnWrite(
        head=[message("system", name) for name in head],
        tail=tail,
        drop_leading=drop_leading,
        tail_leading_system=lead,
        usage=usage or {},
        title_hint=title_hint,
        create=create,
    )


def leading_system_of(replay: Sequence[bytes]) -> int:
    roles = [orjson.loads(item)["role"] for item in replay]
    return next((i for i, role in enumerate(roles) if role not in ("system", "developer")), len(roles))


async def history(store: Store, session_id: str = "s1", scope: str = SCOPE) -> list[str]:
    snapshot = await store.load(scope, session_id)
    assert snapshot is not None
    return [name_of(item) for item in snapshot.replay]


async def test_unknown_session_is_absent_everywhere(store: Store) -> None:
    assert await store.load(SCOPE, "nope") is None
    assert await store.get(SCOPE, "nope") is None
    assert await store.messages(SCOPE, "nope") is None
    assert await store.end(SCOPE, "nope") is None
    assert await store.update(SCOPE, "nope", title="t", metadata={"k": "v"}) is None
    assert await store.clear(SCOPE, "nope") is None
    assert await store.delete(SCOPE, "nope") is False
    assert await store.list_sessions(SCOPE, limit=10) == ([], False)
    assert await store.get(SCOPE, "nope") is None  # none of the above made it


async def test_commit_creates_and_keeps_exact_bytes_in_order(store: Store) -> None:
    write = turn("s0", "u1", "a1", title_hint="hint", create=NewSession(metadata={"k": "v"}))
    assert await store.commit(SCOPE, "s1", write) == "ok"

    snapshot = await store.load(SCOPE, "s1")
    assert snapshot is not None
    assert (snapshot.id, snapshot.status, snapshot.leading_system) == ("s1", "active", 1)
    assert snapshot.replay == [m.replay for m in write.tail]
    assert await store.messages(SCOPE, "s1") == list(write.tail)

    record = await store.get(SCOPE, "s1")
    assert record is not None
    assert (record.id, record.status, record.title, record.message_count) == ("s1", "active", "hint", 3)
    assert (record.created_at, record.last_active_at, record.expires_at) == (START, START, None)
    assert (record.metadata, record.usage) == ({"k": "v"}, {})
    assert (record.expires_after, record.limits, record.request_count) == (None, SessionLimits(), 1)  # one load


async def test_append_and_last_active_at(make_store: StoreFactory) -> None:
    store = make_store()
    await store.commit(SCOPE, "s1", turn("u1", "a1", create=NewSession()))
    make_store.clock.advance(42)
    assert await store.commit(SCOPE, "s1", turn("u2", "a2")) == "ok"

    assert await history(store) == ["u1", "a1", "u2", "a2"]
    record = await store.get(SCOPE, "s1")
    assert record is not None
    assert (record.created_at, record.last_active_at, record.message_count) == (START, START + 42, 4)


async def test_head_replaces_leading_system_messages(store: Store) -> None:
    await store.commit(SCOPE, "s1", turn("s0", "d0", "u1", "a1", create=NewSession()))
    assert await store.commit(SCOPE, "s1", turn("u2", head=["s9"], drop_leading=2)) == "ok"

    assert await history(store) == ["s9", "u1", "a1", "u2"]
    snapshot = await store.load(SCOPE, "s1")
    assert snapshot is not None
    assert snapshot.leading_system == 1
    record = await store.get(SCOPE, "s1")
    assert record is not None
    assert record.message_count == 4


async def test_drop_all_replaces_history(store: Store) -> None:
    await store.commit(SCOPE, "s1", turn("s0", "u1", "a1", create=NewSession()))
    assert await store.commit(SCOPE, "s1", turn("d5", "u5", "a5", head=["s5"], drop_leading=DROP_ALL)) == "ok"

    snapshot = await store.load(SCOPE, "s1")
    assert snapshot is not None
    assert [name_of(item) for item in snapshot.replay] == ["s5", "d5", "u5", "a5"]
    assert snapshot.leading_system == 2
    assert [name_of(m.replay) for m in await store.messages(SCOPE, "s1") or []] == ["s5", "d5", "u5", "a5"]


LEADING_SYSTEM_CASES = {
    "only system messages, then more": [turn("s1", "d1"), turn("s2"), turn("u1"), turn("s3")],
    "system after a user message is not leading": [turn("u1"), turn("s1", "u2")],
    "drop every stored system message, tail starts with system": [
        turn("s1", "d1"),
        turn("d2", "u1", head=["s2"], drop_leading=2),
    ],
    "drop past the leading run": [turn("s1", "u1", "a1"), turn("u2", head=["s2"], drop_leading=2)],
    "drop more than stored": [turn("s1", "u1"), turn("s2", "u2", head=["s3"], drop_leading=10)],
    "head onto an empty session": [turn(), turn("s1", head=["s0"])],
    "drop all, tail of system only": [turn("s1", "u1", "a1"), turn("s2", "d2", drop_leading=DROP_ALL)],
    "head before a user-first history": [turn("u1", "a1"), turn("u2", head=["s1"])],
    "head of several, in order": [turn("s1", "u1"), turn("u2", head=["s7", "s8", "s9"], drop_leading=1)],
}


@pytest.mark.parametrize("steps", LEADING_SYSTEM_CASES.values(), ids=LEADING_SYSTEM_CASES.keys())
async def test_leading_system_tracks_history(store: Store, steps: list[TurnWrite]) -> None:
    model: list[StoredMessage] = []
    for index, step in enumerate(steps):
        write = dataclasses.replace(step, create=NewSession() if index == 0 else None)
        assert await store.commit(SCOPE, "s1", write) == "ok"
        drop = len(model) if step.drop_leading == DROP_ALL else step.drop_leading
        model = [*step.head, *model[drop:], *step.tail]

        snapshot = await store.load(SCOPE, "s1")
        assert snapshot is not None
        assert snapshot.replay == [m.replay for m in model]
        assert snapshot.leading_system == leading_system_of(snapshot.replay), f"after step {index}"


async def test_large_writes_keep_order(store: Store) -> None:
    # Past what one Lua unpack() takes (~8000), and more than one push chunk.
    head = [f"s{i}" for i in range(1200)]
    tail = [f"u{i}" for i in range(9000)]
    await store.commit(SCOPE, "s1", turn("s", "u", create=NewSession()))
    assert await store.commit(SCOPE, "s1", turn(*tail, head=head, drop_leading=DROP_ALL)) == "ok"

    snapshot = await store.load(SCOPE, "s1")
    assert snapshot is not None
    assert [name_of(item) for item in snapshot.replay] == head + tail
    assert snapshot.leading_system == 1200


async def test_usage_totals_are_summed(store: Store) -> None:
    await store.commit(
        SCOPE, "s1", turn("u1", usage={"prompt_tokens": 10, "completion_tokens": 5}, create=NewSession())
    )
    await store.commit(SCOPE, "s1", turn("u2", usage={"prompt_tokens": 3, "total_tokens": 8}))
    await store.commit(SCOPE, "s1", turn("u3"))

    record = await store.get(SCOPE, "s1")
    assert record is not None
    assert record.usage == {"prompt_tokens": 13, "completion_tokens": 5, "total_tokens": 8}


async def test_title_comes_from_the_hint_only_while_unset(store: Store) -> None:
    await store.commit(SCOPE, "untitled", turn("u1", create=NewSession()))
    await store.commit(SCOPE, "untitled", turn("u2", title_hint="late"))
    await store.commit(SCOPE, "untitled", turn("u3", title_hint="later"))
    await store.commit(SCOPE, "named", turn("u1", title_hint="hint", create=NewSession(title="Mine")))

    titles = [(await store.get(SCOPE, sid)) for sid in ("untitled", "named")]
    assert [record.title if record else "?" for record in titles] == ["late", "Mine"]


async def test_commit_never_creates_without_create(store: Store) -> None:
    assert await store.commit(SCOPE, "ghost", turn("u1")) == "missing"
    assert await store.get(SCOPE, "ghost") is None

    await store.commit(SCOPE, "s1", turn("u1", create=NewSession()))
    assert await store.delete(SCOPE, "s1") is True
    assert await store.commit(SCOPE, "s1", turn("u2")) == "missing"
    assert await store.load(SCOPE, "s1") is None
    assert await store.delete(SCOPE, "s1") is False


async def test_create_makes_an_empty_session_once(store: Store) -> None:
    new = NewSession(title="T", metadata={"team": "x"}, expires_after=ExpiresAfter("created_at", 600))
    record = await store.create(SCOPE, "s1", new)
    assert record is not None
    assert (record.status, record.title, record.message_count, record.expires_at) == ("active", "T", 0, START + 600)
    assert (record.created_at, record.metadata, record.usage) == (START, {"team": "x"}, {})
    assert await store.get(SCOPE, "s1") == record
    assert await store.create(SCOPE, "s1", NewSession(title="other")) is None

    assert await store.commit(SCOPE, "s1", turn("u1", title_hint="ignored")) == "ok"
    assert await history(store) == ["u1"]
    assert await store.messages(SCOPE, "s1") is not None
    after = await store.get(SCOPE, "s1")
    assert after is not None
    assert after.title == "T"


async def test_ended_session_is_read_only_but_readable(store: Store) -> None:
    await store.commit(SCOPE, "s1", turn("u1", "a1", create=NewSession()))
    ended = await store.end(SCOPE, "s1")
    assert ended is not None
    assert (ended.status, ended.message_count) == ("ended", 2)

    assert await store.commit(SCOPE, "s1", turn("u2", usage={"prompt_tokens": 1})) == "ended"
    snapshot = await store.load(SCOPE, "s1")
    assert snapshot is not None
    assert snapshot.status == "ended"
    assert [name_of(item) for item in snapshot.replay] == ["u1", "a1"]
    record = await store.get(SCOPE, "s1")
    assert record is not None
    assert (record.status, record.message_count, record.usage) == ("ended", 2, {})


async def test_absolute_expiry_makes_session_read_only(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    expires_at = int(START) + 10
    await store.commit(SCOPE, "s1", turn("u1", create=NewSession(expires_after=ExpiresAfter("created_at", 10))))
    make_store.clock.advance(9.5)
    assert await store.commit(SCOPE, "s1", turn("u2")) == "ok"

    make_store.clock.advance(0.5)  # clock() == expires_at: expired
    assert await store.commit(SCOPE, "s1", turn("u3")) == "expired"
    snapshot = await store.load(SCOPE, "s1")
    assert snapshot is not None
    assert snapshot.status == "expired"
    assert [name_of(item) for item in snapshot.replay] == ["u1", "u2"]
    record = await store.get(SCOPE, "s1")
    assert record is not None
    assert (record.status, record.expires_at, record.message_count) == ("expired", expires_at, 2)


async def test_scopes_are_isolated(store: Store) -> None:
    await store.commit("scope-a", "same", turn("a-u1", create=NewSession(title="A")))
    await store.commit("scope-b", "same", turn("b-u1", create=NewSession(title="B")))

    assert await history(store, "same", "scope-a") == ["a-u1"]
    assert await history(store, "same", "scope-b") == ["b-u1"]
    assert await store.get("scope-c", "same") is None
    assert await store.commit("scope-c", "same", turn("c-u1")) == "missing"

    ended = await store.end("scope-a", "same")
    assert ended is not None
    assert ended.title == "A"
    b_record = await store.get("scope-b", "same")
    assert b_record is not None
    assert (b_record.status, b_record.title) == ("active", "B")

    assert await store.delete("scope-a", "same") is True
    assert await store.load("scope-a", "same") is None
    assert await history(store, "same", "scope-b") == ["b-u1"]


async def test_concurrent_commits_on_a_new_session_all_land_whole(store: Store) -> None:
    async def one_turn(i: int) -> None:
        write = turn(f"u{i}", f"a{i}", usage={"total_tokens": 1}, create=NewSession(title=f"t{i}"))
        assert await store.commit(SCOPE, "busy", write) == "ok"

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(one_turn, i)

    names = await history(store, "busy")
    pairs = [(names[k], names[k + 1]) for k in range(0, len(names), 2)]
    assert sorted(pairs) == sorted((f"u{i}", f"a{i}") for i in range(50))  # contiguous, none lost
    record = await store.get(SCOPE, "busy")
    assert record is not None
    assert (record.message_count, record.usage) == (100, {"total_tokens": 50})
    assert record.title == f"t{names[0][1:]}"  # the first commit created it


async def test_scope_secret(make_store: StoreFactory) -> None:
    first, second = make_store(), make_store()
    secret = await first.owner_secret()
    assert len(secret) == 32
    assert await first.owner_secret() == secret
    if make_store.backend == "redis":
        assert await second.owner_secret() == secret  # one secret for every replica on this Redis
    else:
        assert await second.owner_secret() != secret


async def test_open_ping_and_close_are_idempotent(store: Store) -> None:
    await store.open()
    await store.open()
    assert await store.ping() is True
    await store.commit(SCOPE, "s1", turn("u1", create=NewSession()))
    assert await history(store) == ["u1"]


# Inactivity TTL. Memory follows the injected clock; Redis keeps real key TTLs.


@pytest.mark.parametrize("backend", ["memory"])
async def test_memory_inactivity_ttl_follows_clock(make_store: StoreFactory) -> None:
    store = make_store(ttl=60)
    await store.commit(SCOPE, "s1", turn("u1", create=NewSession()))
    make_store.clock.advance(59)
    assert await store.load(SCOPE, "s1") is not None  # refreshes
    make_store.clock.advance(59)
    assert await store.commit(SCOPE, "s1", turn("u2")) == "ok"  # refreshes
    make_store.clock.advance(59)
    assert await store.get(SCOPE, "s1") is not None  # does not refresh
    make_store.clock.advance(2)

    assert await store.get(SCOPE, "s1") is None
    assert await store.load(SCOPE, "s1") is None
    assert await store.messages(SCOPE, "s1") is None
    assert await store.commit(SCOPE, "s1", turn("u3")) == "missing"


@pytest.mark.parametrize("backend", ["memory"])
async def test_memory_sweeps_idle_sessions_nobody_asks_for(make_store: StoreFactory) -> None:
    store = make_store(ttl=100)
    assert isinstance(store, MemoryStore)
    for i in range(20):
        await store.commit(SCOPE, f"s{i}", turn("u1", create=NewSession()))
    assert len(store) == 20
    make_store.clock.advance(101)
    await store.commit(SCOPE, "fresh", turn("u1", create=NewSession()))  # any operation may sweep
    assert len(store) == 1


@pytest.mark.parametrize("backend", ["memory"])
async def test_memory_without_ttl_never_expires(make_store: StoreFactory) -> None:
    store = make_store(ttl=None)
    await store.commit(SCOPE, "s1", turn("u1", create=NewSession()))
    make_store.clock.advance(10 * 365 * 86400)
    assert await history(store) == ["u1"]


@pytest.mark.parametrize("backend", ["redis", "cluster"])
async def test_redis_ttl_is_set_and_refreshed_on_both_keys(make_store: StoreFactory) -> None:
    store = make_store(ttl=100)
    client = make_store.diagnostics
    await store.commit(SCOPE, "s1", turn("u1", create=NewSession()))
    ttls = await make_store.pttls(store)
    assert len(ttls) == 2
    assert all(90_000 < ttl <= 100_000 for ttl in ttls.values()), ttls

    refreshes = {"load": lambda: store.load(SCOPE, "s1"), "commit": lambda: store.commit(SCOPE, "s1", turn("u2"))}
    for name, refresh in refreshes.items():
        for key in ttls:
            await client.pexpire(key, 5_000)
        await refresh()
        assert all(ttl > 90_000 for ttl in (await make_store.pttls(store)).values()), name

    await store.end(SCOPE, "s1")
    for key in ttls:
        await client.pexpire(key, 5_000)
    assert await store.load(SCOPE, "s1") is not None
    assert await store.get(SCOPE, "s1") is not None
    assert all(0 < ttl <= 5_000 for ttl in (await make_store.pttls(store)).values())  # only active sessions refresh

    await store.create(SCOPE, "empty", NewSession())
    empty_ttls = {k: v for k, v in (await make_store.pttls(store)).items() if k not in ttls}
    assert [ttl > 90_000 for ttl in empty_ttls.values()] == [True]  # meta only: an empty list is no key


@pytest.mark.parametrize("backend", ["redis", "cluster"])
async def test_redis_a_commit_right_after_its_load_gives_the_keys_it_makes_a_ttl(make_store: StoreFactory) -> None:
    # the load refreshed every TTL a moment ago, so the commit leaves those; but the history list
    # of an empty session, and the message id index, are made by the commit itself
    store = make_store(ttl=100)
    await store.create(SCOPE, "s1", NewSession())
    assert len(await make_store.pttls(store)) == 1
    assert await store.load(SCOPE, "s1") is not None
    assert await store.commit(SCOPE, "s1", turn("u1", "a1")) == "ok"
    ttls = await make_store.pttls(store)
    assert len(ttls) == 2
    assert all(90_000 < ttl <= 100_000 for ttl in ttls.values()), ttls
    ids = [key for key in await make_store.keys(store) if key.endswith(":ids")]
    assert len(ids) == 1
    assert 90_000 < await make_store.diagnostics.pttl(ids[0]) <= 100_000


@pytest.mark.parametrize("backend", ["redis", "cluster"])
async def test_redis_session_disappears_after_real_idle_ttl(make_store: StoreFactory) -> None:
    store = make_store(ttl=0.3)
    await store.commit(SCOPE, "s1", turn("u1", "a1", create=NewSession()))
    assert await store.get(SCOPE, "s1") is not None

    deadline = time.monotonic() + 5
    while await store.get(SCOPE, "s1") is not None:  # get() does not refresh the TTL
        assert time.monotonic() < deadline, "session outlived its 0.3 s TTL"
        await anyio.sleep(0.02)
    assert await store.load(SCOPE, "s1") is None
    assert await store.messages(SCOPE, "s1") is None
    assert await make_store.session_keys(store) == []


@pytest.mark.parametrize("backend", ["redis", "cluster"])
async def test_redis_without_ttl_keys_persist(make_store: StoreFactory) -> None:
    store = make_store(ttl=None)
    await store.commit(SCOPE, "s1", turn("u1", create=NewSession()))
    await store.load(SCOPE, "s1")
    assert list((await make_store.pttls(store)).values()) == [-1, -1]
    # a session whose history the commit makes, and a rate window a load makes
    limited = NewSession(limits=SessionLimits(max_requests_per_1_minute=5))
    await store.create(SCOPE, "s2", limited)
    assert await store.load(SCOPE, "s2") is not None
    assert await store.commit(SCOPE, "s2", turn("u1", "a1")) == "ok"
    assert await history(store, "s2") == ["u1", "a1"]
    assert len(await make_store.pttls(store)) == 5
    assert set((await make_store.pttls(store)).values()) == {-1}


@pytest.mark.parametrize("backend", ["redis", "cluster"])
async def test_redis_keys_are_hashed_and_share_one_hash_tag(make_store: StoreFactory) -> None:
    store = make_store()
    scope, session_id = "scope-raw-visible", "conversation-id-raw-visible"
    limited = NewSession(limits=SessionLimits(max_requests_per_1_minute=5))
    await store.commit(scope, session_id, turn("u1", create=limited))
    await store.load(scope, session_id)  # writes the rate window
    await store.create("other-scope", session_id, NewSession(), [message("user", "u1")])
    await store.put_client_secret("ab" * 32, scope, session_id, 60)

    keys = await make_store.keys(store)
    assert not [key for key in keys if "raw-visible" in key or "scope" in key]
    digest = hashlib.blake2b(f"{scope}\0{session_id}".encode(), digest_size=16).hexdigest()
    scope_digest = hashlib.blake2b(scope.encode(), digest_size=16).hexdigest()
    other_digest = hashlib.blake2b(b"other-scope", digest_size=16).hexdigest()
    other = hashlib.blake2b(f"other-scope\0{session_id}".encode(), digest_size=16).hexdigest()
    prefix = make_store.prefix
    assert keys == sorted(
        [
            *(f"{prefix}:{{{digest}}}:{name}" for name in ("meta", "msgs", "window", "ids")),  # one slot per session
            *(f"{prefix}:{{{other}}}:{name}" for name in ("meta", "msgs", "ids")),
            *(f"{prefix}:{{i{d}}}:{name}" for d in (scope_digest, other_digest) for name in ("index", "seq")),
            f"{prefix}:cs:{'ab' * 32}",
        ]
    )


async def test_unreachable_redis_raises_store_error(anyio_backend: str) -> None:
    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
        store = store_from_url(url, ttl=60)
        try:
            assert await store.ping() is False
            with pytest.raises(StoreError, match="redis"):
                await store.load(SCOPE, "s1")
            with pytest.raises(StoreError):
                await store.commit(SCOPE, "s1", turn("u1", create=NewSession()))
            with pytest.raises(StoreError):
                await store.get(SCOPE, "s1")
            with pytest.raises(StoreError):
                await store.open()
        finally:
            await store.aclose()


# store_from_url


async def test_store_from_url_memory(anyio_backend: str) -> None:
    store = store_from_url("memory://", ttl=None)
    assert isinstance(store, MemoryStore)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:s3cret@cache.internal:6380/3", {"host": "cache.internal", "port": 6380, "db": 3}),
        ("redis://app:pw@localhost/2", {"username": "app", "password": "pw", "db": 2}),
        ("rediss://localhost:6390?db=5", {"port": 6390, "db": 5}),
    ],
)
async def test_store_from_url_redis_parses_without_connecting(
    url: str, expected: dict[str, object], anyio_backend: str
) -> None:
    store = store_from_url(url, ttl=60)
    try:
        assert isinstance(store, RedisStore)
        address = store.address
        assert {key: getattr(address, key) for key in expected} == expected
        if "s3cret" in url:
            assert address.password == "s3cret"
        assert (address.ssl is not None) == url.startswith("rediss")
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgres://db/1", "store: unknown scheme 'postgres' (use memory:// or redis://...)"),
        ("/var/run/redis.sock", "store: unknown scheme '' (use memory:// or redis://...)"),
        ("redis://localhost:notaport/0", "store: invalid redis URL"),
    ],
)
def test_store_from_url_rejects_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        store_from_url(url, ttl=60)
    assert str(caught.value).startswith(message)


def test_store_from_url_rejects_nonpositive_ttl() -> None:
    with pytest.raises(ConfigError, match="ttl"):
        store_from_url("memory://", ttl=0)


@pytest.mark.parametrize("url", ["memory://", "redis://127.0.0.1:6379/0"])
def test_store_from_url_rejects_a_nonpositive_timeout(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^store: timeout must be a positive number"):
        store_from_url(url, ttl=60, timeout=0)


Trace = Callable[[Callable[[], Awaitable[object]]], Awaitable[list[str]]]


@pytest.fixture(name="trace")
def trace_commands(monkeypatch: pytest.MonkeyPatch) -> Trace:
    """Records the Redis commands an operation sends; asserts all go out before the first reply
    is read (one round trip)."""
    events: list[str] = []
    send, data_received = resp_module._Connection.send, resp_module._Connection.data_received

    def record_send(self: Any, packed: bytes, skip: int = 0) -> Any:
        reader = hiredis.Reader()  # one packed write may hold several commands (a transaction)
        reader.feed(packed)
        while (command := reader.gets()) is not False:
            events.append(command[0].decode())  # the command name
        return send(self, packed, skip)

    def record_reply(self: Any, data: bytes) -> None:
        events.append("reply")
        data_received(self, data)

    monkeypatch.setattr(resp_module._Connection, "send", record_send)
    monkeypatch.setattr(resp_module._Connection, "data_received", record_reply)

    async def trace(operation: Callable[[], Awaitable[object]]) -> list[str]:
        """The commands ``operation`` sends, all of which must be written before any reply is read."""
        events.clear()
        await operation()
        sent = events[: events.index("reply")]
        assert [event for event in events if event != "reply"] == sent
        return sent

    return trace

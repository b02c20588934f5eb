"""Issue 10, store defects 2, 5 and the client-secret grant: paged history reads, message positions found
without reading the history, the per-owner session cap, the memory store's global cap, TTLs on every Redis
key. The Store contract: each test runs against memory://, a real Redis and a Redis Cluster."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Sequence

import anyio
import pytest

import test_store_contract as contract
from statefulproxy.errors import ClientError, SessionBusy
from statefulproxy.stores import (
    DROP_ALL,
    IdempotentReply,
    Lease,
    MemoryStore,
    NewSession,
    SessionLimits,
    Store,
    StoredMessage,
    TurnWrite,
    store_from_url,
)
from test_store_contract import SCOPE, StoreFactory, message, name_of, turn

backend, store_url, make_store, store = contract.backend, contract.store_url, contract.make_store, contract.store

pytestmark = pytest.mark.anyio


def capped(factory: StoreFactory, cap: int, ttl: float | None = 3600) -> Store:
    """A store of the factory's backend and key prefix, with max_sessions_per_owner = ``cap``."""
    made = store_from_url(
        factory.url, ttl=ttl, clock=factory.clock, key_prefix=factory.prefix, max_sessions_per_owner=cap
    )
    factory.stores.append(made)
    return made


def names(messages: Sequence[StoredMessage]) -> list[str]:
    return [name_of(item.replay) for item in messages]


def ids_of(messages: Sequence[StoredMessage]) -> list[str]:
    return [f"msg_{name}" for name in names(messages)]


async def built(store: Store, count: int, session_id: str = "big") -> list[StoredMessage]:
    messages = [message("user" if i % 2 == 0 else "assistant", f"m{i:05d}") for i in range(count)]
    assert await store.create(SCOPE, session_id, NewSession(), messages) is not None
    return messages


# --- paged reads ---------------------------------------------------------------------------------


async def test_a_page_is_a_slice_of_the_history_and_its_length(store: Store) -> None:
    history = await built(store, 25)
    cases = [(0, 5), (20, 30), (24, None), (-5, None), (-30, -20), (10, 3), (40, 50), (0, 0), (-3, -1), (0, None)]
    for start, stop in cases:
        page = await store.messages_page(SCOPE, "big", start, stop)
        assert page is not None
        assert page.total == 25
        assert page.messages == history[start:stop], (start, stop)
    assert await store.messages_page(SCOPE, "nope", 0, 10) is None


async def test_positions_are_found_in_the_history(store: Store) -> None:
    history = await built(store, 30)
    found = await store.message_positions(SCOPE, "big", ["msg_m00000", "msg_m00017", "msg_nope", "msg_m00029"])
    assert found == ([0, 17, None, 29], 30)
    assert await store.message_positions(SCOPE, "nope", ["msg_m00000"]) is None
    assert history[17].info.startswith(b'{"id":"msg_m00017"')


STEPS = {
    "appends": [turn("s0", "u1", "a1"), turn("u2", "a2"), turn("u3")],
    "a new system head, leading ones dropped": [turn("s0", "d0", "u1", "a1"), turn("u2", head=["s9"], drop_leading=2)],
    "a head in front of everything": [turn("u1", "a1"), turn("u2", head=["s7", "s8"])],
    "drop all, then more": [turn("s1", "u1", "a1"), turn("s2", "u5", head=["s3"], drop_leading=DROP_ALL), turn("u6")],
    "drop more than stored": [turn("s1", "u1"), turn("s2", "u2", head=["s3"], drop_leading=10)],
    "many at once": [turn(*[f"u{i}" for i in range(1500)], head=[f"s{i}" for i in range(1100)]), turn("a", "b")],
}


@pytest.mark.parametrize("steps", STEPS.values(), ids=STEPS.keys())
async def test_positions_follow_every_change_of_the_history(store: Store, steps: list[TurnWrite]) -> None:
    model: list[StoredMessage] = []
    for index, step in enumerate(steps):
        write = dataclasses.replace(step, create=NewSession() if index == 0 else None)
        assert await store.commit(SCOPE, "s1", write) == "ok"
        drop = len(model) if step.drop_leading == DROP_ALL else step.drop_leading
        dropped, model = model[:drop], [*step.head, *model[drop:], *step.tail]
        wanted = [*ids_of(model), *ids_of(dropped)]
        found = await store.message_positions(SCOPE, "s1", wanted)
        assert found is not None
        positions, total = found
        assert total == len(model)
        assert positions == [*range(len(model)), *(None for _ in dropped)], f"after step {index}"
    page = await store.messages_page(SCOPE, "s1", 0, None)
    assert page is not None
    assert page.messages == model


async def test_clear_and_fork_keep_positions_right(store: Store) -> None:
    history = await built(store, 10)
    fork = history[:4]
    assert await store.create(SCOPE, "fork", NewSession(), fork, 0) is not None
    assert await store.message_positions(SCOPE, "fork", ["msg_m00003", "msg_m00004"]) == ([3, None], 4)
    assert await store.clear(SCOPE, "big") is not None
    assert await store.message_positions(SCOPE, "big", ["msg_m00000"]) == ([None], 0)
    assert await store.commit(SCOPE, "big", turn("u1", "a1")) == "ok"
    assert await store.message_positions(SCOPE, "big", ["msg_a1", "msg_u1"]) == ([1, 0], 2)


@pytest.mark.parametrize("backend", ["redis", "cluster"])
async def test_a_session_from_before_the_id_index_is_numbered_on_first_use(make_store: StoreFactory) -> None:
    store = make_store(ttl=100)
    await built(store, 1200)
    digest = hashlib.blake2b(f"{SCOPE}\0big".encode(), digest_size=16).hexdigest()
    meta, ids = f"{make_store.prefix}:{{{digest}}}:meta", f"{make_store.prefix}:{{{digest}}}:ids"
    client = make_store.diagnostics
    await client.hdel(meta, "id_base")  # as a session written before this version has it
    await client.delete(ids)
    assert await store.commit(SCOPE, "big", turn("u9")) == "ok"  # not numbered by a turn: nothing to keep in step
    assert not await client.exists(ids)
    found = await store.message_positions(SCOPE, "big", ["msg_m00000", "msg_m01199", "msg_u9"])
    assert found == ([0, 1199, 1200], 1201)
    assert 90_000 < await client.pttl(ids) <= 100_000  # as long as the list lives
    await client.hset(ids, "msg_m00005", 7)  # out of step: found again by numbering anew
    assert await store.message_positions(SCOPE, "big", ["msg_m00005"]) == ([5], 1201)


# --- the per-owner session cap -------------------------------------------------------------------


def assert_limit_refusal(error: ClientError, cap: int) -> None:
    assert (error.status, error.code, error.type) == (429, "session_limit_reached", "rate_limit_error")
    assert f"{cap} sessions" in error.message
    (name, value), *_ = error.headers
    assert name == b"retry-after"
    assert int(value) >= 1


async def test_an_owner_at_its_cap_creates_nothing_more(make_store: StoreFactory) -> None:
    store = capped(make_store, 3)
    assert await store.create(SCOPE, "a", NewSession()) is not None
    assert await store.commit(SCOPE, "b", turn("u1", create=NewSession())) == "ok"
    assert await store.load(SCOPE, "c", Lease("T", 30_000)) is None  # a first turn, under the cap
    assert await store.commit(SCOPE, "c", dataclasses.replace(turn("u1", create=NewSession()), lease_token="T")) == "ok"

    with pytest.raises(ClientError) as refused:
        await store.create(SCOPE, "d", NewSession())
    assert_limit_refusal(refused.value, 3)
    with pytest.raises(ClientError) as refused:  # the first turn of a new session: refused before it is forwarded
        await store.load(SCOPE, "d", Lease("T", 30_000))
    assert_limit_refusal(refused.value, 3)
    with pytest.raises(ClientError):  # it took no lease: not busy
        await store.load(SCOPE, "d", Lease("U", 30_000))
    assert await store.load(SCOPE, "d") is None  # a read without a lease creates nothing: not refused
    assert await store.commit(SCOPE, "d", turn("u1", create=NewSession())) == "limited"
    assert await store.get(SCOPE, "d") is None
    page = await store.list_sessions(SCOPE, limit=10)
    assert page is not None
    assert sorted(record.id for record in page[0]) == ["a", "b", "c"]

    # its sessions go on; another owner is not concerned
    assert await store.load(SCOPE, "a", Lease("V", 30_000)) is not None
    assert await store.commit(SCOPE, "a", dataclasses.replace(turn("u2"), lease_token="V")) == "ok"
    assert await store.create("scope-b", "d", NewSession()) is not None
    # one deleted: room for one more
    assert await store.delete(SCOPE, "b")
    assert await store.commit(SCOPE, "d", turn("u1", create=NewSession())) == "ok"
    with pytest.raises(ClientError):
        await store.create(SCOPE, "e", NewSession())


async def test_a_refused_first_turn_leaves_no_lease(make_store: StoreFactory) -> None:
    store = capped(make_store, 1)
    assert await store.create(SCOPE, "a", NewSession()) is not None
    with pytest.raises(ClientError):
        await store.load(SCOPE, "b", Lease("T", 30_000))
    assert await store.delete(SCOPE, "a")
    assert await store.load(SCOPE, "b", Lease("U", 30_000)) is None  # not SessionBusy: no lease was left
    with pytest.raises(SessionBusy):
        await store.load(SCOPE, "b", Lease("W", 30_000))


async def test_gone_sessions_do_not_count_against_the_cap(make_store: StoreFactory) -> None:
    store = capped(make_store, 2, ttl=100)
    assert await store.create(SCOPE, "a", NewSession()) is not None
    assert await store.create(SCOPE, "b", NewSession()) is not None
    if make_store.backend == "redis":  # idle expiry as Redis does it: the keys vanish, the index entry stays
        digest = hashlib.blake2b(f"{SCOPE}\0a".encode(), digest_size=16).hexdigest()
        await make_store.diagnostics.delete(f"{make_store.prefix}:{{{digest}}}:meta")
    else:
        make_store.clock.advance(60)
        assert await store.load(SCOPE, "b") is not None
        make_store.clock.advance(41)
    assert await store.create(SCOPE, "c", NewSession()) is not None  # "a" is gone: room for it
    with pytest.raises(ClientError) as refused:
        await store.create(SCOPE, "e", NewSession())
    assert_limit_refusal(refused.value, 2)
    retry_after = int(refused.value.headers[0][1])
    assert retry_after <= 100


# --- the memory store's global cap ---------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory"])
async def test_memory_evicts_the_session_idle_the_longest(make_store: StoreFactory) -> None:
    store = MemoryStore(ttl=100, clock=make_store.clock, max_sessions=3)
    for session_id in ("a", "b", "c"):
        assert await store.commit(SCOPE, session_id, turn("u1", create=NewSession())) == "ok"
        make_store.clock.advance(1)
    assert await store.load(SCOPE, "a") is not None  # a turn: "a" is active again
    assert await store.commit(SCOPE, "a", turn("u2")) == "ok"
    assert await store.create("scope-b", "d", NewSession()) is not None
    assert (len(store), store.evictions) == (3, 1)
    assert await store.get(SCOPE, "b") is None  # the longest idle
    assert [await store.get(SCOPE, s) is not None for s in ("a", "c")] == [True, True]
    page = await store.list_sessions(SCOPE, limit=10)
    assert page is not None
    assert [record.id for record in page[0]] == ["c", "a"]

    make_store.clock.advance(200)  # all idle past the TTL: making room drops a dead one, no eviction counted
    assert await store.create(SCOPE, "e", NewSession()) is not None
    assert store.evictions == 1


# --- every Redis key expires ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["redis", "cluster"])
async def test_an_idle_owner_leaves_no_key_behind(make_store: StoreFactory) -> None:
    store = make_store(ttl=0.5)
    client = make_store.diagnostics
    limited = NewSession(limits=SessionLimits(max_requests_per_1_minute=5))
    await store.commit(SCOPE, "s1", turn("s0", "u1", "a1", create=limited))
    await store.load(SCOPE, "s1", Lease("A", 300))  # the rate window, and a lease
    kept = IdempotentReply("k1", b"reply", 60_000)
    write = dataclasses.replace(turn("u2", head=["s9"], drop_leading=1), idempotent=kept, lease_token="A")
    assert await store.commit(SCOPE, "s1", write) == "ok"
    await store.create(SCOPE, "s2", NewSession(), [message("user", "x")])
    await store.message_positions(SCOPE, "s2", ["msg_x"])
    await store.list_sessions(SCOPE, limit=10)
    await store.put_client_secret("ab" * 32, SCOPE, "s1", 0.5, b"grant")
    keys = await make_store.keys(store)
    assert [key for key in keys if key.endswith((":index", ":seq", ":ids", ":window", ":kept"))], keys
    for key in keys:
        assert 0 < await client.pttl(key) <= 1_500, key  # every one of them expires

    deadline = time.monotonic() + 10
    while keys := await make_store.keys(store):
        assert time.monotonic() < deadline, f"outlived the TTL: {keys}"
        await anyio.sleep(0.1)


@pytest.mark.parametrize("backend", ["redis", "cluster"])
async def test_every_turn_keeps_the_index_alive_as_long_as_its_sessions(make_store: StoreFactory) -> None:
    store = make_store(ttl=100)
    client = make_store.diagnostics
    await store.commit(SCOPE, "s1", turn("u1", create=NewSession()))
    digest = hashlib.blake2b(SCOPE.encode(), digest_size=16).hexdigest()
    index, seq = (f"{make_store.prefix}:{{i{digest}}}:{name}" for name in ("index", "seq"))
    meta = f"{make_store.prefix}:{{{session_digest('s1')}}}:meta"
    for refresh in (lambda: store.load(SCOPE, "s1"), lambda: store.commit(SCOPE, "s1", turn("u2"))):
        # time has passed for all of them (a commit right after its turn's load leaves the TTLs
        # that load set a moment ago)
        for key in (index, seq, meta):
            await client.pexpire(key, 1_000)
        await refresh()
        session_ttl = await client.pttl(meta)
        assert await client.pttl(index) >= session_ttl > 90_000
        assert await client.pttl(seq) >= session_ttl


def session_digest(session_id: str) -> str:
    return hashlib.blake2b(f"{SCOPE}\0{session_id}".encode(), digest_size=16).hexdigest()


# --- client secrets carry a grant ----------------------------------------------------------------


async def test_a_client_secret_keeps_its_grant_bytes(make_store: StoreFactory) -> None:
    store = make_store(ttl=100)
    grant = b'{"may":"chat"}\n\x00\xff'
    await store.put_client_secret("a" * 64, SCOPE, "s1", 60, grant)
    await store.put_client_secret("b" * 64, SCOPE, "s2", 60)
    assert await store.client_secret("a" * 64) == (SCOPE, "s1", grant)
    assert await store.client_secret("b" * 64) == (SCOPE, "s2", b"")
    if make_store.backend == "redis":  # a record written before grants existed
        await make_store.diagnostics.set(f"{make_store.prefix}:cs:{'c' * 64}", f"{SCOPE}\ns3", px=60_000)
        assert await store.client_secret("c" * 64) == (SCOPE, "s3", b"")

"""The Store contract for session lifecycles (issue 3): forks, absolute expiry, request limits,
listing, update, clear and client secrets. Each test runs against memory:// and a real Redis."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import anyio
import pytest

import test_store_contract as contract
from statefulproxy.stores import ExpiresAfter, MemoryStore, NewSession, SessionLimits, SessionRecord, Store
from test_store_contract import SCOPE, START, StoreFactory, history, message, name_of, turn

# the contract suite's fixtures: every test here runs on memory:// and on Redis too
backend, store_url, make_store, store = contract.backend, contract.store_url, contract.make_store, contract.store
trace = contract.trace_commands

pytestmark = pytest.mark.anyio

PER_MINUTE = "max_requests_per_1_minute"


def session_digest(scope: str, session_id: str) -> str:
    return hashlib.blake2b(f"{scope}\0{session_id}".encode(), digest_size=16).hexdigest()


def index_key(factory: StoreFactory, scope: str = SCOPE) -> str:
    return f"{factory.prefix}:{{i{hashlib.blake2b(scope.encode(), digest_size=16).hexdigest()}}}:index"


async def record_of(store: Store, session_id: str, scope: str = SCOPE) -> SessionRecord:
    record = await store.get(scope, session_id)
    assert record is not None
    return record


async def admitted(store: Store, session_id: str = "s1") -> bool:
    snapshot = await store.load(SCOPE, session_id)
    assert snapshot is not None
    return snapshot.retry_after is None


async def refused(store: Store, session_id: str = "s1") -> tuple[int | None, str | None]:
    snapshot = await store.load(SCOPE, session_id)
    assert snapshot is not None
    assert snapshot.status == "active"
    assert (snapshot.replay, snapshot.leading_system) == ([], 0)  # a refused request gets no history
    return snapshot.retry_after, snapshot.limited_by


# --- create, fork -------------------------------------------------------------------------------


async def test_create_holds_a_forked_history(store: Store) -> None:
    forked = [message("system", "s0"), message("developer", "d0"), message("user", "u1"), message("assistant", "a1")]
    new = NewSession(title="Fork", metadata={"from": "s0"}, limits=SessionLimits(max_requests=9))
    record = await store.create(SCOPE, "fork", new, forked, leading_system=2)
    assert record is not None
    assert (record.id, record.status, record.title, record.message_count) == ("fork", "active", "Fork", 4)
    assert (record.created_at, record.last_active_at, record.expires_at) == (START, START, None)
    assert (record.metadata, record.limits, record.request_count, record.usage) == (
        {"from": "s0"},
        SessionLimits(max_requests=9),
        0,
        {},
    )
    assert await store.get(SCOPE, "fork") == record

    snapshot = await store.load(SCOPE, "fork")
    assert snapshot is not None
    assert (snapshot.replay, snapshot.leading_system) == ([m.replay for m in forked], 2)
    assert await store.messages(SCOPE, "fork") == forked
    assert await store.commit(SCOPE, "fork", turn("u2", head=["s9"], drop_leading=2, title_hint="no")) == "ok"
    assert await history(store, "fork") == ["s9", "u1", "a1", "u2"]
    after = await record_of(store, "fork")
    assert (after.title, after.message_count, after.request_count) == ("Fork", 4, 2)

    assert await store.create(SCOPE, "fork", NewSession(), [message("user", "x")]) is None
    assert await history(store, "fork") == ["s9", "u1", "a1", "u2"]
    untitled = await store.create("scope-b", "fork", NewSession())  # another scope: another session
    assert untitled is not None
    assert (untitled.title, untitled.message_count) == (None, 0)


# --- absolute expiry ----------------------------------------------------------------------------


async def test_expiry_anchored_at_creation_is_fixed(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    new = NewSession(expires_after=ExpiresAfter("created_at", 100), limits=SessionLimits(max_requests=50))
    created = await store.create(SCOPE, "s1", new)
    assert created is not None
    assert (created.expires_at, created.expires_after) == (START + 100, ExpiresAfter("created_at", 100))
    make_store.clock.advance(60)
    assert await store.commit(SCOPE, "s1", turn("u1")) == "ok"
    assert (await record_of(store, "s1")).expires_at == START + 100  # a turn does not move it

    make_store.clock.advance(39.5)
    assert await admitted(store)
    make_store.clock.advance(0.5)  # now == expires_at: expired
    record = await record_of(store, "s1")
    assert (record.status, record.request_count) == ("expired", 1)
    snapshot = await store.load(SCOPE, "s1")
    assert snapshot is not None
    assert (snapshot.status, snapshot.retry_after, [name_of(r) for r in snapshot.replay]) == ("expired", None, ["u1"])
    assert await store.commit(SCOPE, "s1", turn("u2")) == "expired"
    assert (await record_of(store, "s1")).request_count == 1  # loads of an expired session count nothing
    assert (await store.clear(SCOPE, "s1")) == record  # read-only: clear changes nothing


async def test_expiry_anchored_at_last_activity_moves_with_each_turn(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    new = NewSession(expires_after=ExpiresAfter("last_active_at", 30))
    assert await store.commit(SCOPE, "s1", turn("u1", create=new)) == "ok"
    assert (await record_of(store, "s1")).expires_at == START + 30

    make_store.clock.advance(20)
    assert await admitted(store)  # a load is not activity
    assert (await record_of(store, "s1")).expires_at == START + 30
    assert await store.commit(SCOPE, "s1", turn("u2")) == "ok"  # a turn is
    record = await record_of(store, "s1")
    assert (record.last_active_at, record.expires_at, record.status) == (START + 20, START + 50, "active")

    make_store.clock.advance(29)
    assert (await record_of(store, "s1")).status == "active"
    make_store.clock.advance(1)
    assert (await record_of(store, "s1")).status == "expired"
    assert await store.commit(SCOPE, "s1", turn("u3")) == "expired"
    assert (await record_of(store, "s1")).expires_at == START + 50
    assert await history(store) == ["u1", "u2"]


# --- request limits -----------------------------------------------------------------------------


async def test_per_minute_window_slides(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    clock = make_store.clock
    await store.create(SCOPE, "s1", NewSession(limits=SessionLimits(max_requests_per_1_minute=3)))
    for step in (0, 10, 10):  # requests at +0, +10, +20
        clock.advance(step)
        assert await admitted(store)
    clock.advance(10)  # +30: the window holds 3
    assert await refused(store) == (30, PER_MINUTE)  # the +0 request leaves it at +60
    clock.advance(29.5)
    assert await refused(store) == (1, PER_MINUTE)  # 0.5 s rounds up
    clock.advance(0.5)  # +60: exactly a minute after the oldest, which has left the window
    assert await admitted(store)
    clock.advance(0.5)
    assert await refused(store) == (10, PER_MINUTE)  # +10 leaves at +70: 9.5 s, rounded up
    clock.advance(9.499)
    assert await refused(store) == (1, PER_MINUTE)  # 1 ms to go: still a whole second
    clock.advance(0.001)
    assert await admitted(store)
    assert (await record_of(store, "s1")).request_count == 5  # refused requests counted nothing


async def test_requests_in_one_instant_count_separately(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    await store.create(SCOPE, "s1", NewSession(limits=SessionLimits(max_requests_per_1_minute=4)))
    assert [await admitted(store) for _ in range(4)] == [True] * 4
    assert await refused(store) == (60, PER_MINUTE)
    assert (await record_of(store, "s1")).request_count == 4
    if make_store.backend == "redis":
        window = f"{make_store.prefix}:{{{session_digest(SCOPE, 's1')}}}:window"
        assert await make_store.diagnostics.zcard(window) == 4
        assert 3_500_000 < await make_store.diagnostics.pttl(window) <= 3_600_000  # the session's TTL
        # the session gone idle while its window lingers: a new session of that id starts afresh
        await make_store.diagnostics.delete(f"{make_store.prefix}:{{{session_digest(SCOPE, 's1')}}}:meta")
        await store.create(SCOPE, "s1", NewSession(limits=SessionLimits(max_requests_per_1_minute=1)))
        assert await admitted(store)
        assert await make_store.diagnostics.zcard(window) == 1


async def test_refused_requests_do_not_fill_the_window(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    await store.create(SCOPE, "s1", NewSession(limits=SessionLimits(max_requests_per_1_minute=1)))
    assert await admitted(store)
    for _ in range(5):
        make_store.clock.advance(10)
        assert (await refused(store))[1] == PER_MINUTE
    make_store.clock.advance(10)  # +60
    assert await admitted(store)
    assert (await record_of(store, "s1")).request_count == 2


async def test_lifetime_cap_until_absolute_expiry(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    new = NewSession(expires_after=ExpiresAfter("created_at", 1000), limits=SessionLimits(max_requests=2))
    await store.create(SCOPE, "s1", new)
    assert [await admitted(store), await admitted(store)] == [True, True]
    make_store.clock.advance(100.5)
    assert await refused(store) == (900, "max_requests")  # 899.5 s until it expires, rounded up
    assert await refused(store) == (900, "max_requests")
    assert (await record_of(store, "s1")).request_count == 2


async def test_lifetime_cap_until_idle_removal(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    await store.create(SCOPE, "s1", NewSession(limits=SessionLimits(max_requests=1)))
    assert await admitted(store)
    assert await refused(store) == (3600, "max_requests")
    meta = f"{make_store.prefix}:{{{session_digest(SCOPE, 's1')}}}:meta"
    if make_store.backend == "redis":  # Redis counts the TTL down in real time
        await make_store.diagnostics.pexpire(meta, 4_500)
        assert await refused(store) == (5, "max_requests")
        assert 0 < await make_store.diagnostics.pttl(meta) <= 4_500  # a refused request does not refresh it
    else:
        make_store.clock.advance(100)
        assert await refused(store) == (3500, "max_requests")
        make_store.clock.advance(3495.5)  # a refused request does not refresh the TTL
    assert await refused(store) == (5, "max_requests")


async def test_lifetime_cap_without_any_deadline(make_store: StoreFactory) -> None:
    store = make_store(ttl=None)
    await store.create(SCOPE, "s1", NewSession(limits=SessionLimits(max_requests=1)))
    assert await admitted(store)
    assert await refused(store) == (86400, "max_requests")


async def test_the_lifetime_cap_is_reported_before_the_window(make_store: StoreFactory) -> None:
    store = make_store(ttl=None)
    limits = SessionLimits(max_requests_per_1_minute=2, max_requests=2)
    await store.create(SCOPE, "s1", NewSession(limits=limits))
    assert [await admitted(store), await admitted(store)] == [True, True]
    assert await refused(store) == (86400, "max_requests")  # waiting out the minute would not help


async def test_requests_are_counted_without_limits_and_never_when_read_only(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    await store.commit(SCOPE, "s1", turn("u1", create=NewSession()))
    for _ in range(3):
        assert await admitted(store)
    assert (await record_of(store, "s1")).request_count == 3
    if make_store.backend == "redis":  # no limits: no rate window
        assert await make_store.diagnostics.exists(f"{make_store.prefix}:{{{session_digest(SCOPE, 's1')}}}:window") == 0

    await store.create(SCOPE, "capped", NewSession(limits=SessionLimits(max_requests=0)))
    await store.end(SCOPE, "capped")
    snapshot = await store.load(SCOPE, "capped")  # an ended session is not admitted, nor refused by limits
    assert snapshot is not None
    assert (snapshot.status, snapshot.retry_after, snapshot.limited_by) == ("ended", None, None)
    await store.end(SCOPE, "s1")
    await store.load(SCOPE, "s1")
    assert (await record_of(store, "s1")).request_count == 3


# --- listing ------------------------------------------------------------------------------------


async def create_many(store: Store, count: int, scope: str = SCOPE, **fields: Any) -> list[str]:
    """``count`` sessions at one fake-clock instant, alternately by create() and by a turn."""
    ids = [f"s{i:03d}" for i in range(count)]
    for i, session_id in enumerate(ids):
        if i % 2:
            assert await store.create(scope, session_id, NewSession(**fields)) is not None
        else:
            assert await store.commit(scope, session_id, turn("u1", create=NewSession(**fields))) == "ok"
    return ids


async def page_ids(store: Store, **query: Any) -> tuple[list[str], bool]:
    found = await store.list_sessions(SCOPE, **query)
    assert found is not None
    records, has_more = found
    return [record.id for record in records], has_more


async def test_listing_keeps_creation_order_within_one_second(store: Store) -> None:
    ids = await create_many(store, 30)
    assert await page_ids(store, limit=100) == (ids[::-1], False)  # newest first
    assert await page_ids(store, limit=100, order="asc") == (ids, False)
    assert await page_ids(store, limit=7) == (ids[::-1][:7], True)
    assert await page_ids(store, limit=30, order="asc") == (ids, False)
    assert await page_ids(store, limit=29, order="asc") == (ids[:29], True)
    await store.commit(SCOPE, ids[0], turn("u2"))  # activity does not reorder
    assert await page_ids(store, limit=3, order="asc") == (ids[:3], True)


@pytest.mark.parametrize("order", ["desc", "asc"])
async def test_cursors_walk_every_page_both_ways(store: Store, order: str) -> None:
    created = await create_many(store, 45)
    full = created[::-1] if order == "desc" else created

    walked, after, pages = [], None, 0
    while True:
        ids, has_more = await page_ids(store, limit=10, order=order, after=after)
        walked += ids
        pages += 1
        if not has_more:
            break
        after = ids[-1]
    assert (walked, pages) == (full, 5)

    walked, before, pages = [full[-1]], full[-1], 0
    while True:
        ids, has_more = await page_ids(store, limit=10, order=order, before=before)
        assert ids == full[full.index(before) - len(ids) : full.index(before)]  # the closest ones, in order
        walked = ids + walked
        pages += 1
        if not has_more:
            break
        before = ids[0]
    assert (walked, pages) == (full, 5)

    between = await page_ids(store, limit=3, order=order, after=full[10], before=full[20])
    assert between == (full[11:14], True)
    assert await page_ids(store, limit=10, order=order, after=full[10], before=full[20]) == (full[11:20], False)
    assert await page_ids(store, limit=10, order=order, after=full[-1]) == ([], False)
    assert await page_ids(store, limit=10, order=order, before=full[0]) == ([], False)


async def test_unknown_cursors_and_other_scopes(store: Store) -> None:
    await create_many(store, 3)
    await create_many(store, 2, scope="scope-b")
    assert await store.list_sessions(SCOPE, limit=10, after="nope") is None
    assert await store.list_sessions(SCOPE, limit=10, before="nope") is None
    assert await store.list_sessions(SCOPE, limit=10, after="s000", before="nope") is None
    await store.commit("scope-b", "only-b", turn("u1", create=NewSession()))
    assert await store.list_sessions(SCOPE, limit=10, after="only-b") is None  # another scope's id
    found = await store.list_sessions("scope-b", limit=10)
    assert found is not None
    assert [record.id for record in found[0]] == ["only-b", "s001", "s000"]
    assert await store.list_sessions("scope-c", limit=10) == ([], False)


async def test_filters_apply_before_the_limit(make_store: StoreFactory) -> None:
    store = make_store(ttl=None)
    ids = await create_many(store, 150, metadata={"team": "a"})
    wanted = [ids[5], ids[70], ids[140]]  # most entries do not match: several batches
    for session_id in ids[::10]:
        await store.update(SCOPE, session_id, metadata={"team": "b", "tier": "gold"})
    for session_id in [*wanted, ids[71]]:
        await store.end(SCOPE, session_id)
    await store.update(SCOPE, ids[140], metadata={"team": "b", "tier": "gold", "extra": "x"})  # a superset matches
    await store.update(SCOPE, ids[5], metadata={"team": "b", "tier": "gold"})
    query: dict[str, Any] = {"status": "ended", "metadata": {"team": "b", "tier": "gold"}}

    assert await page_ids(store, limit=2, **query) == ([ids[140], ids[70]], True)
    assert await page_ids(store, limit=2, after=ids[70], **query) == ([ids[5]], False)
    assert await page_ids(store, limit=1, order="asc", after=ids[5], **query) == ([ids[70]], True)
    assert await page_ids(store, limit=5, before=ids[5], **query) == ([ids[140], ids[70]], False)
    assert await page_ids(store, limit=100, status="ended") == ([ids[140], ids[71], ids[70], ids[5]], False)
    gold = sorted({*ids[::10], ids[5]}, reverse=True)  # ids sort as they were created
    assert await page_ids(store, limit=100, metadata={"tier": "gold"}) == (gold, False)
    assert await page_ids(store, limit=100, metadata={"team": "a", "tier": "gold"}) == ([], False)

    await store.create(SCOPE, "short", NewSession(expires_after=ExpiresAfter("created_at", 1)))
    assert await page_ids(store, limit=5, status="expired") == ([], False)
    make_store.clock.advance(1)  # status is computed when read
    assert await page_ids(store, limit=5, status="expired") == (["short"], False)
    assert await page_ids(store, limit=4, status="active", order="asc") == (["s000", "s001", "s002", "s003"], True)


async def test_gone_sessions_leave_the_index(make_store: StoreFactory) -> None:
    store = make_store(ttl=100)
    ids = await create_many(store, 6)
    assert await store.delete(SCOPE, ids[2]) is True
    if make_store.backend == "redis":
        assert await make_store.diagnostics.zcard(index_key(make_store)) == 5  # delete unlists at once
        # idle-TTL expiry, as Redis does it: the session's keys vanish, its index entry stays
        for session_id in ids[3:5]:
            digest = session_digest(SCOPE, session_id)
            await make_store.diagnostics.delete(f"{make_store.prefix}:{{{digest}}}:meta")
            await make_store.diagnostics.delete(f"{make_store.prefix}:{{{digest}}}:msgs")
    else:
        make_store.clock.advance(60)
        for session_id in (ids[0], ids[1], ids[5]):
            assert await admitted(store, session_id)
        make_store.clock.advance(41)
    assert await page_ids(store, limit=2) == ([ids[5], ids[1]], True)
    assert await page_ids(store, limit=10) == ([ids[5], ids[1], ids[0]], False)
    if make_store.backend == "redis":
        assert await make_store.diagnostics.zcard(index_key(make_store)) == 3  # dropped on the way
    assert await store.list_sessions(SCOPE, limit=10, after=ids[3]) is None


async def test_a_reused_id_is_listed_as_new(make_store: StoreFactory) -> None:
    store = make_store(ttl=100)
    await create_many(store, 3)
    assert await store.delete(SCOPE, "s000")
    assert await store.commit(SCOPE, "s000", turn("u1", create=NewSession())) == "ok"
    assert await page_ids(store, limit=10) == (["s000", "s002", "s001"], False)
    # gone idle without a listing to drop its entry, then used again
    if make_store.backend == "redis":
        digest = session_digest(SCOPE, "s001")
        await make_store.diagnostics.delete(f"{make_store.prefix}:{{{digest}}}:meta")
    else:
        make_store.clock.advance(60)
        await store.load(SCOPE, "s000")
        await store.load(SCOPE, "s002")
        make_store.clock.advance(41)
    assert await store.create(SCOPE, "s001", NewSession()) is not None
    assert await page_ids(store, limit=10) == (["s001", "s000", "s002"], False)
    assert await store.commit(SCOPE, "s001", turn("u2", create=NewSession())) == "ok"  # exists: stays put
    assert await page_ids(store, limit=10, order="asc") == (["s002", "s000", "s001"], False)


# --- update, clear, end -------------------------------------------------------------------------


async def test_update_sets_title_and_replaces_metadata(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    await store.commit(SCOPE, "s1", turn("u1", usage={"total_tokens": 3}, create=NewSession(metadata={"a": "1"})))
    before = await record_of(store, "s1")
    updated = await store.update(SCOPE, "s1", title="Named")
    assert updated == await record_of(store, "s1")
    assert (updated.title, updated.metadata, updated.usage) == ("Named", {"a": "1"}, {"total_tokens": 3})
    updated = await store.update(SCOPE, "s1", metadata={"b": "2"})
    assert updated is not None
    assert (updated.title, updated.metadata) == ("Named", {"b": "2"})
    assert await store.update(SCOPE, "s1") == updated
    assert (updated.last_active_at, updated.message_count) == (before.last_active_at, 1)

    await store.end(SCOPE, "s1")
    ended = await store.update(SCOPE, "s1", title="", metadata={})  # management data: ended sessions too
    assert ended is not None
    assert (ended.status, ended.title, ended.metadata) == ("ended", "", {})
    await store.create(SCOPE, "old", NewSession(expires_after=ExpiresAfter("created_at", 5)))
    make_store.clock.advance(5)
    expired = await store.update(SCOPE, "old", metadata={"k": "v"})
    assert expired is not None
    assert (expired.status, expired.metadata) == ("expired", {"k": "v"})


async def test_clear_empties_an_active_session_only(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    new = NewSession(title="T", metadata={"k": "v"}, limits=SessionLimits(max_requests=10))
    await store.commit(SCOPE, "s1", turn("s0", "u1", "a1", usage={"total_tokens": 7}, create=new))
    await store.load(SCOPE, "s1")
    make_store.clock.advance(5)
    cleared = await store.clear(SCOPE, "s1")
    assert cleared is not None
    assert (cleared.message_count, cleared.title, cleared.metadata, cleared.usage) == (
        0,
        "T",
        {"k": "v"},
        {"total_tokens": 7},
    )
    assert (cleared.status, cleared.created_at, cleared.last_active_at, cleared.request_count) == (
        "active",
        START,
        START,
        1,
    )
    assert cleared.limits == SessionLimits(max_requests=10)
    assert await store.get(SCOPE, "s1") == cleared
    snapshot = await store.load(SCOPE, "s1")
    assert snapshot is not None
    assert (snapshot.replay, snapshot.leading_system) == ([], 0)
    assert await store.messages(SCOPE, "s1") == []
    assert await store.commit(SCOPE, "s1", turn("d1", "u2")) == "ok"
    assert await history(store) == ["d1", "u2"]
    snapshot = await store.load(SCOPE, "s1")
    assert snapshot is not None
    assert snapshot.leading_system == 1

    ended = await store.end(SCOPE, "s1")
    assert ended is not None
    assert await store.clear(SCOPE, "s1") == ended
    assert await history(store) == ["d1", "u2"]


# --- client secrets -----------------------------------------------------------------------------


async def test_client_secrets_open_one_session_until_they_expire(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    await store.put_client_secret("f" * 64, SCOPE, "s1", 120)
    await store.put_client_secret("e" * 64, "scope-b", "s2", 0.2)
    assert await store.client_secret("f" * 64) == (SCOPE, "s1", b"")
    assert await store.client_secret("e" * 64) == ("scope-b", "s2", b"")
    assert await store.client_secret("0" * 64) is None

    if make_store.backend == "memory":
        make_store.clock.advance(119.5)
        assert await store.client_secret("f" * 64) == (SCOPE, "s1", b"")
        make_store.clock.advance(0.5)
        assert await store.client_secret("f" * 64) is None
        assert await store.client_secret("e" * 64) is None
        return
    assert 110_000 < await make_store.diagnostics.pttl(f"{make_store.prefix}:cs:{'f' * 64}") <= 120_000
    deadline = time.monotonic() + 5
    while await store.client_secret("e" * 64) is not None:  # Redis expires it in real time
        assert time.monotonic() < deadline, "the secret outlived its 0.2 s TTL"
        await anyio.sleep(0.02)
    assert await store.client_secret("f" * 64) == (SCOPE, "s1", b"")


@pytest.mark.parametrize("backend", ["memory"])
async def test_memory_sweep_drops_expired_secrets(make_store: StoreFactory) -> None:
    store = make_store(ttl=100)
    assert isinstance(store, MemoryStore)
    await store.put_client_secret("a" * 64, SCOPE, "s1", 5)
    make_store.clock.advance(11)
    await store.get(SCOPE, "x")  # any operation may sweep
    assert store._secrets == {}
    assert await store.client_secret("a" * 64) is None


# --- Redis round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_writes_index_and_session_in_one_round_trip(
    make_store: StoreFactory, trace: contract.Trace
) -> None:
    store = make_store(ttl=3600)
    await store.open()  # connected, scripts loaded

    # one script lists the session, checks the owner's cap and writes the session
    assert await trace(lambda: store.create(SCOPE, "s1", NewSession())) == ["EVALSHA"]
    assert await trace(lambda: store.commit(SCOPE, "s2", turn("u1", create=NewSession()))) == ["EVALSHA"]
    assert await trace(lambda: store.commit(SCOPE, "s2", turn("u2"))) == ["EVALSHA"]  # a plain turn: no index
    assert await trace(lambda: store.load(SCOPE, "s2")) == [
        "MULTI",
        "EVALSHA",
        "LRANGE",
        "EXEC",
    ]  # the history by a plain LRANGE, one MULTI
    assert await trace(lambda: store.delete(SCOPE, "s2")) == ["EVALSHA", "ZREM"]
    assert await page_ids(store, limit=10) == (["s1"], False)

"""The Store contract for per-session leases (issue 4): one turn at a time per session.

Each test runs against memory:// (fake clock) and a real Redis (real PX TTLs, polled with deadlines).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time

import anyio
import anyio.lowlevel
import pytest

import test_store_contract as contract
from statefulproxy.errors import SessionBusy
from statefulproxy.stores import ExpiresAfter, Lease, MemoryStore, NewSession, SessionLimits, Store, TurnWrite
from test_store_contract import SCOPE, StoreFactory, history, turn

# the contract suite's fixtures: every test here runs on memory:// and on Redis too
backend, store_url, make_store, store = contract.backend, contract.store_url, contract.make_store, contract.store
trace = contract.trace_commands

pytestmark = pytest.mark.anyio

TTL_MS = 30_000  # long enough never to run out during a test, on either clock


def lease(token: str, ttl_ms: int = TTL_MS) -> Lease:
    return Lease(token, ttl_ms)


def leased(write: TurnWrite, token: str) -> TurnWrite:
    return dataclasses.replace(write, lease_token=token)


def lease_key(factory: StoreFactory, session_id: str = "s1", scope: str = SCOPE) -> str:
    digest = hashlib.blake2b(f"{scope}\0{session_id}".encode(), digest_size=16).hexdigest()
    return f"{factory.prefix}:{{{digest}}}:lease"


async def request_count(store: Store, session_id: str = "s1") -> int:
    record = await store.get(SCOPE, session_id)
    assert record is not None
    return record.request_count


async def is_busy(store: Store, session_id: str = "s1", token: str = "probe") -> bool:
    """Whether another token holds the lease. Takes it when it is free: release it again."""
    try:
        await store.load(SCOPE, session_id, lease(token))
    except SessionBusy:
        return True
    await store.release_lease(SCOPE, session_id, token)
    return False


async def outlive(factory: StoreFactory, ttl_ms: int, session_id: str = "s1") -> None:
    """Let a lease of ``ttl_ms`` run out: on the fake clock, or in real time for Redis (polled)."""
    if factory.backend == "memory":
        factory.clock.advance(ttl_ms / 1000)
        return
    deadline = time.monotonic() + 5
    while await factory.diagnostics.exists(lease_key(factory, session_id)):
        assert time.monotonic() < deadline, f"the lease outlived its {ttl_ms} ms TTL"
        await anyio.sleep(0.01)


async def shorten(factory: StoreFactory, store: Store, token: str, session_id: str = "s1") -> None:
    """Make ``token``'s lease expire now, as if its proxy had died."""
    assert await store.renew_lease(SCOPE, session_id, lease(token, 30))
    await outlive(factory, 30, session_id)


# --- taking a lease -----------------------------------------------------------------------------


async def test_a_held_lease_makes_the_session_busy_and_counts_nothing(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    limits = SessionLimits(max_requests_per_1_minute=3, max_requests=100)
    await store.commit(SCOPE, "s1", turn("u1", "a1", create=NewSession(limits=limits)))
    snapshot = await store.load(SCOPE, "s1", lease("A"))
    assert snapshot is not None
    assert (snapshot.status, snapshot.retry_after, len(snapshot.replay)) == ("active", None, 2)
    assert await request_count(store) == 1

    for _ in range(5):  # each would fill the window, were it counted
        with pytest.raises(SessionBusy):
            await store.load(SCOPE, "s1", lease("B"))
    assert await request_count(store) == 1
    assert await store.renew_lease(SCOPE, "s1", lease("A"))  # A still holds it

    # the same token again is a retry of the same turn: it is ours, and it is counted as today
    again = await store.load(SCOPE, "s1", lease("A"))
    assert again is not None
    assert again.replay == snapshot.replay
    assert await request_count(store) == 2

    await store.release_lease(SCOPE, "s1", "A")
    third = await store.load(SCOPE, "s1", lease("B"))
    assert third is not None
    assert third.retry_after is None  # the window holds 3: the busy ones left no trace
    await store.release_lease(SCOPE, "s1", "B")
    refused = await store.load(SCOPE, "s1", lease("C"))
    assert refused is not None
    assert refused.limited_by == "max_requests_per_1_minute"
    assert await request_count(store) == 3


async def test_a_lease_on_a_new_id_serialises_two_first_turns(store: Store) -> None:
    assert await store.load(SCOPE, "new", lease("A")) is None
    with pytest.raises(SessionBusy):
        await store.load(SCOPE, "new", lease("B"))
    assert await store.get(SCOPE, "new") is None  # the lease creates no session
    assert await store.list_sessions(SCOPE, limit=10) == ([], False)
    assert await store.load(SCOPE, "new", lease("A")) is None  # A retrying: still ours

    assert await store.commit(SCOPE, "new", leased(turn("u1", "a1", create=NewSession()), "A")) == "ok"
    second = await store.load(SCOPE, "new", lease("B"))
    assert second is not None
    assert len(second.replay) == 2  # B's first turn sees A's and becomes a second turn


async def test_load_without_a_lease_ignores_leases(store: Store) -> None:
    await store.commit(SCOPE, "s1", turn("u1", create=NewSession()))
    assert await store.load(SCOPE, "s1", lease("A")) is not None
    snapshot = await store.load(SCOPE, "s1")  # the read path of store:false requests, and old callers
    assert snapshot is not None
    assert len(snapshot.replay) == 1
    assert await store.renew_lease(SCOPE, "s1", lease("A"))  # untouched
    assert await is_busy(store)
    await store.release_lease(SCOPE, "s1", "A")  # A's turn ends: both requests are counted by now
    assert await request_count(store) == 2
    assert await store.load(SCOPE, "absent") is None
    assert not await is_busy(store, "absent")  # and no lease taken on a new id either


async def test_no_lease_for_an_ended_or_expired_session(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    await store.commit(SCOPE, "s1", turn("u1", create=NewSession()))
    await store.end(SCOPE, "s1")
    expiring = NewSession(expires_after=ExpiresAfter("created_at", 60))
    await store.commit(SCOPE, "s2", turn("u1", create=expiring))
    make_store.clock.advance(61)

    for session_id, status in (("s1", "ended"), ("s2", "expired")):
        snapshot = await store.load(SCOPE, session_id, lease("A"))
        assert snapshot is not None
        assert (snapshot.status, len(snapshot.replay)) == (status, 1)  # the snapshot as without a lease
        assert not await store.renew_lease(SCOPE, session_id, lease("A"))
        assert not await is_busy(store, session_id)
        assert await request_count(store, session_id) == 0
        if make_store.backend == "redis":
            assert not await make_store.diagnostics.exists(lease_key(make_store, session_id))


async def test_no_lease_when_a_limit_refuses_the_request(store: Store) -> None:
    await store.create(SCOPE, "s1", NewSession(limits=SessionLimits(max_requests=1)))
    await store.create(SCOPE, "s2", NewSession(limits=SessionLimits(max_requests_per_1_minute=1)))
    for session_id, limit in (("s1", "max_requests"), ("s2", "max_requests_per_1_minute")):
        assert await store.load(SCOPE, session_id) is not None  # uses up the limit
        refused = await store.load(SCOPE, session_id, lease("A"))
        assert refused is not None
        assert (refused.limited_by, refused.retry_after is not None) == (limit, True)
        assert not await store.renew_lease(SCOPE, session_id, lease("A"))
        assert not await is_busy(store, session_id)
        assert await request_count(store, session_id) == 1


async def test_a_lease_needs_a_positive_ttl(store: Store) -> None:
    await store.commit(SCOPE, "s1", turn("u1", create=NewSession()))
    for ttl_ms in (0, -5):
        with pytest.raises(ValueError, match="ttl_ms"):
            await store.load(SCOPE, "s1", lease("A", ttl_ms))
        with pytest.raises(ValueError, match="ttl_ms"):
            await store.renew_lease(SCOPE, "s1", lease("A", ttl_ms))
    assert await request_count(store) == 0
    assert not await is_busy(store)


# --- commit -------------------------------------------------------------------------------------


async def test_commit_releases_the_lease(store: Store) -> None:
    await store.commit(SCOPE, "s1", turn("u1", "a1", create=NewSession()))
    assert await store.load(SCOPE, "s1", lease("A")) is not None
    assert await store.commit(SCOPE, "s1", leased(turn("u2", "a2"), "A")) == "ok"
    assert not await store.renew_lease(SCOPE, "s1", lease("A"))
    snapshot = await store.load(SCOPE, "s1", lease("B"))
    assert snapshot is not None
    assert len(snapshot.replay) == 4


async def test_commit_releases_the_lease_whatever_its_result(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    long = 10_000_000  # outlasts the fake clock's jumps below

    assert await store.load(SCOPE, "gone", lease("A", long)) is None
    assert await store.commit(SCOPE, "gone", leased(turn("u1"), "A")) == "missing"
    assert not await is_busy(store, "gone")

    await store.commit(SCOPE, "ended", turn("u1", create=NewSession()))
    assert await store.load(SCOPE, "ended", lease("A", long)) is not None
    await store.end(SCOPE, "ended")
    assert await store.commit(SCOPE, "ended", leased(turn("u2"), "A")) == "ended"
    assert not await is_busy(store, "ended")

    await store.commit(SCOPE, "old", turn("u1", create=NewSession(expires_after=ExpiresAfter("created_at", 60))))
    assert await store.load(SCOPE, "old", lease("A", long)) is not None
    make_store.clock.advance(61)
    assert await store.commit(SCOPE, "old", leased(turn("u2"), "A")) == "expired"
    assert not await store.renew_lease(SCOPE, "old", lease("A", long))


async def test_a_commit_that_lost_its_lease_still_writes_but_keeps_the_new_holders(
    make_store: StoreFactory,
) -> None:
    store = make_store(ttl=3600)
    await store.commit(SCOPE, "s1", turn("u1", "a1", create=NewSession()))
    assert await store.load(SCOPE, "s1", lease("A")) is not None
    await shorten(make_store, store, "A")  # A's proxy stalled past its lease
    assert await store.load(SCOPE, "s1", lease("B")) is not None

    assert await store.commit(SCOPE, "s1", leased(turn("u2", "a2"), "A")) == "ok"  # the turn happened
    assert await history(store) == ["u1", "a1", "u2", "a2"]
    assert await is_busy(store)  # B still holds it
    assert await store.renew_lease(SCOPE, "s1", lease("B"))
    assert await store.commit(SCOPE, "s1", leased(turn("u3", "a3"), "B")) == "ok"
    assert not await is_busy(store)


async def test_a_commit_without_a_token_leaves_the_lease(store: Store) -> None:
    assert await store.load(SCOPE, "s1", lease("A")) is None
    assert await store.commit(SCOPE, "s1", turn("u1", create=NewSession())) == "ok"
    assert await is_busy(store)
    assert await store.commit(SCOPE, "s1", leased(turn("u2"), "A")) == "ok"
    assert not await is_busy(store)


# --- renew, release, expiry ---------------------------------------------------------------------


async def test_renew_extends_only_the_holders_lease(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    await store.commit(SCOPE, "s1", turn("u1", create=NewSession()))
    assert await store.load(SCOPE, "s1", lease("A", 1_000)) is not None
    assert not await store.renew_lease(SCOPE, "s1", lease("B", 60_000))
    assert not await store.renew_lease(SCOPE, "nobody", lease("A", 60_000))  # no lease, none made
    assert not await is_busy(store, "nobody")

    if make_store.backend == "redis":
        client, key = make_store.diagnostics, lease_key(make_store)
        assert 0 < await client.pttl(key) <= 1_000  # the foreign renewal did not extend it
        assert await store.renew_lease(SCOPE, "s1", lease("A", 60_000))
        assert 1_000 < await client.pttl(key) <= 60_000
        assert await client.get(key) == b"A"
    else:
        make_store.clock.advance(0.9)
        assert await store.renew_lease(SCOPE, "s1", lease("A", 60_000))
        make_store.clock.advance(50)  # well past the first TTL
        assert await is_busy(store)
        assert await store.renew_lease(SCOPE, "s1", lease("A", 1_000))
        make_store.clock.advance(1)
        assert not await store.renew_lease(SCOPE, "s1", lease("A", 1_000))  # it ran out: gone for good
        assert not await is_busy(store)


async def test_a_retry_with_the_same_token_refreshes_the_lease(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    await store.commit(SCOPE, "s1", turn("u1", create=NewSession()))
    assert await store.load(SCOPE, "s1", lease("A", 1_000)) is not None
    if make_store.backend == "redis":
        assert await store.load(SCOPE, "s1", lease("A", 60_000)) is not None
        assert 1_000 < await make_store.diagnostics.pttl(lease_key(make_store)) <= 60_000
    else:
        make_store.clock.advance(0.9)
        assert await store.load(SCOPE, "s1", lease("A", 1_000)) is not None
        make_store.clock.advance(0.9)
        assert await is_busy(store)


async def test_release_is_compare_and_delete(store: Store) -> None:
    await store.commit(SCOPE, "s1", turn("u1", create=NewSession()))
    assert await store.load(SCOPE, "s1", lease("A")) is not None
    await store.release_lease(SCOPE, "s1", "B")
    assert await is_busy(store)
    await store.release_lease(SCOPE, "s1", "A")
    assert not await is_busy(store)
    await store.release_lease(SCOPE, "s1", "A")  # twice, or with no lease at all: nothing happens
    await store.release_lease(SCOPE, "nobody", "A")
    assert await history(store) == ["u1"]


async def test_a_dead_proxys_lease_expires_by_itself(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    await store.commit(SCOPE, "s1", turn("u1", create=NewSession()))
    assert await store.load(SCOPE, "s1", lease("A", 200)) is not None
    if make_store.backend == "redis":
        assert 0 < await make_store.diagnostics.pttl(lease_key(make_store)) <= 200
    await outlive(make_store, 200)  # nobody renews or releases it

    snapshot = await store.load(SCOPE, "s1", lease("B"))
    assert snapshot is not None
    assert snapshot.retry_after is None
    assert await is_busy(store)
    assert not await store.renew_lease(SCOPE, "s1", lease("A"))
    assert await store.commit(SCOPE, "s1", leased(turn("u2"), "B")) == "ok"
    assert not await is_busy(store)


async def test_delete_leaves_the_lease_to_its_holder(store: Store) -> None:
    await store.commit(SCOPE, "s1", turn("u1", create=NewSession()))
    assert await store.load(SCOPE, "s1", lease("A")) is not None
    assert await store.delete(SCOPE, "s1")
    with pytest.raises(SessionBusy):  # the id stays serialised while A's turn is in flight
        await store.load(SCOPE, "s1", lease("B"))
    assert await store.commit(SCOPE, "s1", leased(turn("u2", "a2"), "A")) == "missing"  # not resurrected
    assert await store.load(SCOPE, "s1", lease("B")) is None


@pytest.mark.parametrize("backend", ["memory"])
async def test_memory_sweep_drops_expired_leases_without_a_ttl(make_store: StoreFactory) -> None:
    store = make_store(ttl=None)
    assert isinstance(store, MemoryStore)
    for i in range(5):
        assert await store.load(SCOPE, f"abandoned{i}", lease("A", 1_000)) is None
    assert await store.load(SCOPE, "held", lease("A", 3_600_000)) is None
    make_store.clock.advance(61)
    await store.get(SCOPE, "x")  # any operation may sweep
    assert list(store._leases) == [(SCOPE, "held")]


# --- concurrency --------------------------------------------------------------------------------


async def test_concurrent_turns_on_one_session_each_see_all_earlier_turns(store: Store) -> None:
    turns = 20
    seen: list[tuple[int, int]] = []  # (turn, history length at its load), in lease order
    busy = 0

    async def one_turn(k: int) -> None:
        nonlocal busy
        token = f"turn-{k}"
        deadline = time.monotonic() + 10
        while True:
            try:
                snapshot = await store.load(SCOPE, "s1", lease(token))
                break
            except SessionBusy:
                busy += 1
                assert time.monotonic() < deadline, f"turn {k} never got the lease"
                await anyio.sleep(0.001)
        seen.append((k, 0 if snapshot is None else len(snapshot.replay)))
        await anyio.lowlevel.checkpoint()  # the upstream call: other turns run meanwhile, and find the session busy
        write = leased(turn(f"u{k}", f"a{k}", create=NewSession()), token)
        assert await store.commit(SCOPE, "s1", write) == "ok"

    async with anyio.create_task_group() as group:
        for k in range(turns):
            group.start_soon(one_turn, k)

    assert [length for _, length in seen] == list(range(0, 2 * turns, 2))
    assert busy > 0  # they did contend
    record = await store.get(SCOPE, "s1")
    assert record is not None
    assert (record.message_count, record.request_count) == (2 * turns, turns - 1)  # the first load found nothing
    assert await history(store) == [name for k, _ in seen for name in (f"u{k}", f"a{k}")]
    assert not await is_busy(store)


# --- Redis keys and round trips -----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_lease_key_shares_the_hash_tag_and_always_has_a_ttl(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    client, prefix = make_store.diagnostics, make_store.prefix
    digest = hashlib.blake2b(f"{SCOPE}\0s1".encode(), digest_size=16).hexdigest()
    key = lease_key(make_store)
    assert key == f"{prefix}:{{{digest}}}:lease"

    assert await store.load(SCOPE, "s1", lease("A", 5_000)) is None  # a first turn
    assert await client.get(key) == b"A"
    assert 0 < await client.pttl(key) <= 5_000
    assert await store.commit(SCOPE, "s1", leased(turn("u1", create=NewSession()), "A")) == "ok"
    assert not await client.exists(key)
    assert sorted(await make_store.session_keys(store)) == [f"{prefix}:{{{digest}}}:{n}" for n in ("meta", "msgs")]

    meta = f"{prefix}:{{{digest}}}:meta"
    await store.load(SCOPE, "s1", lease("B", 5_000))
    assert 0 < await client.pttl(key) <= 5_000
    assert await store.renew_lease(SCOPE, "s1", lease("B", 7_000))
    assert 5_000 < await client.pttl(key) <= 7_000
    await client.pexpire(meta, 4_000)
    with pytest.raises(SessionBusy):
        await store.load(SCOPE, "s1", lease("C", 5_000))
    assert 0 < await client.pttl(meta) <= 4_000  # a busy load refreshes nothing either
    assert await client.get(key) == b"B"


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_leases_cost_no_extra_round_trip(make_store: StoreFactory, trace: contract.Trace) -> None:
    store = make_store(ttl=3600)
    await store.open()  # connected, scripts loaded

    # a common turn's load is plain commands in one MULTI (stores/redis_load.py): one round trip,
    # a new session's included (with room under the owner's cap read beside it)
    load = ["MULTI", "HMGET", "PTTL", "GET", "SET", "LRANGE", "EXEC"]
    new = [*load[:-1], "ZSCORE", "ZCARD", "EXEC"] if make_store.redis(store)._index.cap else load
    assert await trace(lambda: store.load(SCOPE, "s1", lease("A"))) == new
    first = leased(turn("u1", create=NewSession()), "A")
    assert await trace(lambda: store.commit(SCOPE, "s1", first)) == ["EVALSHA"]
    assert await trace(lambda: store.load(SCOPE, "s1", lease("B"))) == load
    assert await trace(lambda: store.renew_lease(SCOPE, "s1", lease("B"))) == ["EVALSHA"]

    async def busy_load() -> None:
        with pytest.raises(SessionBusy):
            await store.load(SCOPE, "s1", lease("C"))

    assert await trace(busy_load) == new
    assert await trace(lambda: store.commit(SCOPE, "s1", leased(turn("u2"), "B"))) == ["EVALSHA"]
    assert await trace(lambda: store.release_lease(SCOPE, "s1", "B")) == ["EVALSHA"]
    # B's load, left uncounted by the transaction, was counted by its commit (the release after it
    # counts nothing more); C was busy. A created the session (its request_count is the write's).
    assert await request_count(store) == 1
    assert await history(store) == ["u1", "u2"]


async def test_every_admitted_leased_turn_counts_once(store: Store) -> None:
    """However a store counts (Redis leaves a plain load's count to the turn's end), a turn ends
    counted once: by its commit, or by the release of a lease no commit released."""
    await store.create(SCOPE, "s1", NewSession())
    assert await store.load(SCOPE, "s1", lease("A")) is not None
    await store.release_lease(SCOPE, "s1", "A")
    assert await request_count(store) == 1
    assert await store.load(SCOPE, "s1", lease("B")) is not None
    assert await store.commit(SCOPE, "s1", leased(turn("u1"), "B")) == "ok"
    await store.release_lease(SCOPE, "s1", "B")  # after the commit: counts nothing more
    assert await request_count(store) == 2

    assert await store.load(SCOPE, "s1", lease("C")) is not None
    assert await store.delete(SCOPE, "s1")
    await store.release_lease(SCOPE, "s1", "C")  # the session is gone: nothing to count, nothing made
    assert await store.get(SCOPE, "s1") is None
    assert await store.load(SCOPE, "s1") is None


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_a_turn_after_a_pause_refreshes_the_ttl_in_its_commit(
    make_store: StoreFactory, trace: contract.Trace
) -> None:
    """A session whose TTLs have run down past their slack but not near their end costs its next
    turn no second round trip: the load stays one transaction, and the commit refreshes the TTLs."""
    store = make_store(ttl=3600)
    await store.commit(SCOPE, "s1", turn("u1", "a1", create=NewSession()))
    client = make_store.diagnostics
    keys = [key for key in await make_store.session_keys(store) if not key.endswith(":window")]
    for key in keys:
        await client.pexpire(key, 3_000_000)  # 10 minutes run down: past the 3.6 s slack

    plain = ["MULTI", "HMGET", "PTTL", "GET", "SET", "LRANGE", "EXEC"]
    assert (await trace(lambda: store.load(SCOPE, "s1", lease("A"))))[: len(plain)] == plain
    assert all(2_990_000 < ttl <= 3_000_000 for ttl in [await client.pttl(key) for key in keys])  # none refreshed
    assert await store.commit(SCOPE, "s1", leased(turn("u2"), "A")) == "ok"
    assert all(3_590_000 < ttl <= 3_600_000 for ttl in [await client.pttl(key) for key in keys])  # the commit did
    assert await request_count(store) == 1

    for key in keys:
        await client.pexpire(key, 300_000)  # 5 minutes left: the script refreshes it before the turn
    assert await store.load(SCOPE, "s1", lease("B")) is not None
    assert all(3_590_000 < ttl <= 3_600_000 for ttl in [await client.pttl(key) for key in keys])
    await store.release_lease(SCOPE, "s1", "B")
    assert await request_count(store) == 2

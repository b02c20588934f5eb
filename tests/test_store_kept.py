"""The Store contract for replies kept under idempotency keys (issue 4: retries do not duplicate turns).

Each test runs against memory:// and a real Redis. A kept reply's own expiry follows the store's
injected clock on both; the Redis keys that hold them also carry real PX TTLs.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

import test_store_contract as contract
from statefulproxy.errors import SessionBusy
from statefulproxy.stores import ExpiresAfter, IdempotentReply, Lease, NewSession, SessionLimits, Store, TurnWrite
from test_store_contract import SCOPE, StoreFactory, history, turn

backend, store_url, make_store, store = contract.backend, contract.store_url, contract.make_store, contract.store
trace = contract.trace_commands

pytestmark = pytest.mark.anyio

DAY_MS = 86_400_000


def kept(write: TurnWrite, key: str, value: bytes = b"", ttl_ms: int = DAY_MS) -> TurnWrite:
    return dataclasses.replace(write, idempotent=IdempotentReply(key, value or f"reply of {key}".encode(), ttl_ms))


async def kept_value(store: Store, key: str, session_id: str = "s1", scope: str = SCOPE) -> bytes | None:
    snapshot = await store.load(scope, session_id, idempotency_key=key)
    return None if snapshot is None else snapshot.idempotent


async def request_count(store: Store, session_id: str = "s1") -> int:
    record = await store.get(SCOPE, session_id)
    assert record is not None
    return record.request_count


async def test_a_committed_turn_keeps_its_reply_under_its_key(store: Store) -> None:
    assert await store.commit(SCOPE, "s1", kept(turn("u1", "a1", create=NewSession()), "k1")) == "ok"
    assert await store.commit(SCOPE, "s1", kept(turn("u2", "a2"), "k2")) == "ok"

    counted = await request_count(store)
    first = await store.load(SCOPE, "s1", idempotency_key="k1")
    assert first is not None
    assert (first.id, first.status, first.idempotent, first.replay) == ("s1", "active", b"reply of k1", [])
    assert await kept_value(store, "k2") == b"reply of k2"
    assert await request_count(store) == counted  # a kept reply is not a request: nothing counted

    other = await store.load(SCOPE, "s1", idempotency_key="k3")  # an unknown key: an ordinary load
    assert other is not None
    assert other.idempotent is None
    assert [contract.name_of(item) for item in other.replay] == ["u1", "a1", "u2", "a2"]
    assert await request_count(store) == counted + 1


async def test_a_kept_reply_is_returned_past_a_held_lease_and_takes_none(store: Store) -> None:
    await store.commit(SCOPE, "s1", kept(turn("u1", "a1", create=NewSession()), "k1"))
    assert await store.load(SCOPE, "s1", Lease("A", 30_000)) is not None  # another turn is running

    snapshot = await store.load(SCOPE, "s1", Lease("B", 30_000), idempotency_key="k1")
    assert snapshot is not None
    assert snapshot.idempotent == b"reply of k1"
    with pytest.raises(SessionBusy):  # the lease is still A's
        await store.load(SCOPE, "s1", Lease("B", 30_000), idempotency_key="k2")
    assert await store.commit(SCOPE, "s1", dataclasses.replace(turn("u2", "a2"), lease_token="A")) == "ok"
    assert await store.load(SCOPE, "s1", Lease("C", 30_000)) is not None  # A's commit released it


async def test_a_reply_is_kept_only_with_a_written_turn(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    assert await store.commit(SCOPE, "gone", kept(turn("u1", "a1"), "k1")) == "missing"
    assert await store.load(SCOPE, "gone", idempotency_key="k1") is None  # nothing was made

    await store.commit(SCOPE, "s1", turn("u1", "a1", create=NewSession()))
    await store.end(SCOPE, "s1")
    assert await store.commit(SCOPE, "s1", kept(turn("u2", "a2"), "k1")) == "ended"
    snapshot = await store.load(SCOPE, "s1", idempotency_key="k1")
    assert snapshot is not None
    assert (snapshot.status, snapshot.idempotent) == ("ended", None)

    await store.commit(SCOPE, "s2", turn("u1", "a1", create=NewSession(expires_after=ExpiresAfter("created_at", 60))))
    make_store.clock.advance(61)
    assert await store.commit(SCOPE, "s2", kept(turn("u2", "a2"), "k1")) == "expired"
    assert await kept_value(store, "k1", "s2") is None


async def test_an_ended_session_still_answers_with_its_kept_reply(store: Store) -> None:
    await store.commit(SCOPE, "s1", kept(turn("u1", "a1", create=NewSession()), "k1"))
    await store.end(SCOPE, "s1")
    snapshot = await store.load(SCOPE, "s1", idempotency_key="k1")
    assert snapshot is not None
    assert (snapshot.status, snapshot.idempotent) == ("ended", b"reply of k1")


async def test_a_kept_reply_expires_after_its_ttl(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    await store.commit(SCOPE, "s1", kept(turn("u1", "a1", create=NewSession()), "k1", ttl_ms=60_000))
    make_store.clock.advance(59)
    assert await kept_value(store, "k1") == b"reply of k1"
    make_store.clock.advance(1)
    assert await kept_value(store, "k1") is None


async def test_keys_are_per_session_and_per_scope(store: Store) -> None:
    await store.commit(SCOPE, "s1", kept(turn("u1", "a1", create=NewSession()), "k1"))
    await store.commit(SCOPE, "s2", turn("u1", "a1", create=NewSession()))
    await store.commit("scope-b", "s1", turn("u1", "a1", create=NewSession()))
    assert await kept_value(store, "k1", "s2") is None
    assert await kept_value(store, "k1", "s1", scope="scope-b") is None
    assert await kept_value(store, "k1", "s1") == b"reply of k1"


async def test_the_same_key_again_replaces_its_reply(store: Store) -> None:
    await store.commit(SCOPE, "s1", kept(turn("u1", "a1", create=NewSession()), "k1", b"first"))
    await store.commit(SCOPE, "s1", kept(turn("u2", "a2"), "k1", b"second"))
    assert await kept_value(store, "k1") == b"second"


async def test_clear_and_delete_drop_kept_replies(store: Store) -> None:
    await store.commit(SCOPE, "s1", kept(turn("u1", "a1", create=NewSession()), "k1"))
    assert await store.clear(SCOPE, "s1") is not None
    cleared = await store.load(SCOPE, "s1", idempotency_key="k1")
    assert cleared is not None
    assert (cleared.idempotent, cleared.replay) == (None, [])

    await store.commit(SCOPE, "s2", kept(turn("u1", "a1", create=NewSession()), "k2"))
    assert await store.delete(SCOPE, "s2")
    assert await store.load(SCOPE, "s2", idempotency_key="k2") is None
    await store.commit(SCOPE, "s2", turn("u9", "a9", create=NewSession()))  # a namesake gets nothing of it
    assert await kept_value(store, "k2", "s2") is None
    assert await history(store, "s2") == ["u9", "a9"]


async def test_a_limited_session_still_answers_with_its_kept_reply(store: Store) -> None:
    limits = SessionLimits(max_requests=1)
    await store.commit(SCOPE, "s1", kept(turn("u1", "a1", create=NewSession(limits=limits)), "k1"))
    allowed = await store.load(SCOPE, "s1", idempotency_key="k9")  # the one request the limit allows
    assert allowed is not None
    assert allowed.limited_by is None
    refused = await store.load(SCOPE, "s1", idempotency_key="k9")
    assert refused is not None
    assert refused.limited_by == "max_requests"
    assert await kept_value(store, "k1") == b"reply of k1"


# --- Redis keys and round trips -----------------------------------------------------------------


def kept_keys(factory: StoreFactory, session_id: str = "s1") -> tuple[str, str]:
    digest = hashlib.blake2b(f"{SCOPE}\0{session_id}".encode(), digest_size=16).hexdigest()
    return f"{factory.prefix}:{{{digest}}}:kept", f"{factory.prefix}:{{{digest}}}:kept_until"


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_kept_keys_share_the_hash_tag_expire_and_are_pruned(make_store: StoreFactory) -> None:
    client = make_store.diagnostics
    kept_hash, until = kept_keys(make_store)

    store = make_store(ttl=3600)
    await store.commit(SCOPE, "s1", kept(turn("u1", "a1", create=NewSession()), "k1", ttl_ms=60_000))
    assert await client.hgetall(kept_hash) == {b"k1": b"reply of k1"}
    assert 0 < await client.pttl(kept_hash) <= 60_000
    assert 0 < await client.pttl(until) <= 60_000

    make_store.clock.advance(61)  # k1 is past its time: the next kept write drops it
    await store.commit(SCOPE, "s1", kept(turn("u2", "a2"), "k2", ttl_ms=DAY_MS))
    assert await client.hgetall(kept_hash) == {b"k2": b"reply of k2"}
    assert await client.zrange(until, 0, -1) == [b"k2"]
    # never after the session would expire: a day-long kept reply in an hour-long session
    assert 3_590_000 < await client.pttl(kept_hash) <= 3_600_000


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_kept_replies_cost_no_extra_round_trip(make_store: StoreFactory, trace: contract.Trace) -> None:
    store = make_store(ttl=3600)
    await store.open()
    await store.commit(SCOPE, "s1", turn("u1", "a1", create=NewSession()))

    write = kept(turn("u2", "a2"), "k1")
    assert await trace(lambda: store.commit(SCOPE, "s1", write)) == ["EVALSHA"]
    assert await trace(lambda: store.load(SCOPE, "s1", Lease("A", 30_000), "k1")) == [
        "MULTI",
        "EVALSHA",
        "LRANGE",
        "EXEC",
    ]  # the history by a plain LRANGE, one MULTI
    assert await trace(lambda: store.load(SCOPE, "s1", Lease("A", 30_000), "k2")) == [
        "MULTI",
        "EVALSHA",
        "LRANGE",
        "EXEC",
    ]  # the history by a plain LRANGE, one MULTI

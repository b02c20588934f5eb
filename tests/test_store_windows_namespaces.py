"""The Store contract for per-session history windows and namespaces: each test runs against memory://
and a real Redis (the contract suite's fixtures), plus the Redis round trips and legacy sessions."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

import test_store_contract as contract
from statefulproxy.errors import SessionBusy
from statefulproxy.stores import (
    UNCHANGED,
    IdempotentReply,
    Lease,
    NewSession,
    SessionLimits,
    SessionRecord,
    Store,
)
from statefulproxy.stores.redis_codec import NO_NEW_FIELDS, decode_window, encode_window, new_fields
from test_store_contract import SCOPE, StoreFactory, message, name_of, turn

# the contract suite's fixtures: every test here runs on memory:// and on Redis too
backend, store_url, make_store, store = contract.backend, contract.store_url, contract.make_store, contract.store
trace = contract.trace_commands

pytestmark = pytest.mark.anyio

DOC1, DOC2 = "/document/d1", "/document/d2"


async def record_of(store: Store, session_id: str, owner: str = SCOPE) -> SessionRecord:
    record = await store.get(owner, session_id)
    assert record is not None
    return record


async def window_of(store: Store, session_id: str) -> tuple[int, int] | None:
    snapshot = await store.load(SCOPE, session_id)
    assert snapshot is not None
    return snapshot.window


def meta_key(factory: StoreFactory, session_id: str, owner: str = SCOPE) -> str:
    digest = hashlib.blake2b(f"{owner}\0{session_id}".encode(), digest_size=16).hexdigest()
    return f"{factory.prefix}:{{{digest}}}:meta"


# --- history window -----------------------------------------------------------------------------


async def test_a_created_session_keeps_its_window_and_load_returns_it(store: Store) -> None:
    created = await store.create(SCOPE, "s1", NewSession(history_window=(6, 2000)))
    assert created is not None
    assert created.history_window == (6, 2000)
    assert (await record_of(store, "s1")).history_window == (6, 2000)
    assert await window_of(store, "s1") == (6, 2000)

    await store.create(SCOPE, "plain", NewSession())
    assert (await record_of(store, "plain")).history_window is None
    assert await window_of(store, "plain") is None

    await store.create(SCOPE, "unlimited", NewSession(history_window=(0, 0)))  # overrides the settings: no limit
    assert (await record_of(store, "unlimited")).history_window == (0, 0)
    assert await window_of(store, "unlimited") == (0, 0)


async def test_a_turn_that_creates_the_session_keeps_its_window_and_namespace(store: Store) -> None:
    new = NewSession(title="T", history_window=(4, 0), namespace=DOC1)
    assert await store.commit(SCOPE, "s1", turn("u1", "a1", create=new)) == "ok"
    assert await store.commit(SCOPE, "s1", turn("u2", "a2", create=NewSession(history_window=(9, 9)))) == "ok"

    snapshot = await store.load(SCOPE, "s1")
    assert snapshot is not None
    assert [name_of(item) for item in snapshot.replay] == ["u1", "a1", "u2", "a2"]  # the store never windows
    assert snapshot.window == (4, 0)  # the first turn created it: the second's create is unused
    record = await record_of(store, "s1")
    assert (record.history_window, record.namespace, record.title, record.message_count) == ((4, 0), DOC1, "T", 4)


async def test_update_sets_keeps_and_removes_the_window(store: Store) -> None:
    await store.commit(SCOPE, "s1", turn("u1", create=NewSession(metadata={"k": "v"})))

    updated = await store.update(SCOPE, "s1", history_window=(3, 500))
    assert updated is not None
    assert (updated.history_window, updated.metadata) == ((3, 500), {"k": "v"})
    assert await window_of(store, "s1") == (3, 500)

    renamed = await store.update(SCOPE, "s1", title="Renamed", metadata={"a": "b"})  # UNCHANGED by default
    assert renamed is not None
    assert (renamed.title, renamed.metadata, renamed.history_window) == ("Renamed", {"a": "b"}, (3, 500))
    kept = await store.update(SCOPE, "s1", history_window=UNCHANGED)
    assert kept is not None
    assert kept.history_window == (3, 500)

    removed = await store.update(SCOPE, "s1", history_window=None)
    assert removed is not None
    assert (removed.history_window, removed.title) == (None, "Renamed")
    assert await window_of(store, "s1") is None

    assert await store.update(SCOPE, "nope", history_window=(1, 1)) is None
    assert await store.get(SCOPE, "nope") is None


async def test_an_ended_session_keeps_its_window_and_it_can_still_change(store: Store) -> None:
    await store.commit(SCOPE, "s1", turn("u1", "a1", create=NewSession(history_window=(2, 0), namespace=DOC1)))
    ended = await store.end(SCOPE, "s1")
    assert ended is not None
    assert (ended.status, ended.history_window, ended.namespace) == ("ended", (2, 0), DOC1)
    snapshot = await store.load(SCOPE, "s1")
    assert snapshot is not None
    assert (snapshot.status, snapshot.window) == ("ended", (2, 0))

    updated = await store.update(SCOPE, "s1", history_window=(5, 5))  # management data, like title
    assert updated is not None
    assert updated.history_window == (5, 5)


async def test_clearing_keeps_the_window_and_namespace(store: Store) -> None:
    await store.commit(SCOPE, "s1", turn("u1", "a1", create=NewSession(history_window=(1, 2), namespace=DOC2)))
    cleared = await store.clear(SCOPE, "s1")
    assert cleared is not None
    assert (cleared.message_count, cleared.history_window, cleared.namespace) == (0, (1, 2), DOC2)
    assert await window_of(store, "s1") == (1, 2)


async def test_a_refused_load_and_a_kept_reply_still_answer_with_a_window_set(store: Store) -> None:
    new = NewSession(history_window=(2, 0), limits=SessionLimits(max_requests=1))
    write = dataclasses.replace(turn("u1", "a1", create=new), idempotent=IdempotentReply("k1", b"reply", 60_000))
    assert await store.commit(SCOPE, "s1", write) == "ok"

    kept = await store.load(SCOPE, "s1", idempotency_key="k1")
    assert kept is not None
    assert (kept.idempotent, kept.replay) == (b"reply", [])

    admitted = await store.load(SCOPE, "s1")
    assert admitted is not None
    assert (admitted.retry_after, admitted.window, len(admitted.replay)) == (None, (2, 0), 2)

    refused = await store.load(SCOPE, "s1")
    assert refused is not None
    assert (refused.limited_by, refused.replay, refused.window) == ("max_requests", [], None)
    assert refused.retry_after is not None
    assert refused.retry_after >= 1


async def test_a_held_lease_is_still_busy_with_a_window_set(store: Store) -> None:
    await store.create(SCOPE, "s1", NewSession(history_window=(3, 0)))
    first = await store.load(SCOPE, "s1", Lease("A", 30_000))
    assert first is not None
    assert first.window == (3, 0)
    with pytest.raises(SessionBusy):
        await store.load(SCOPE, "s1", Lease("B", 30_000))


@pytest.mark.parametrize("window", [(-1, 0), (0, -5), (1.5, 0), (1,), (1, 2, 3), (True, 0)])
async def test_a_window_must_be_two_ints_of_at_least_zero(store: Store, window: tuple[int, ...]) -> None:
    await store.create(SCOPE, "s1", NewSession(history_window=(1, 1)))
    with pytest.raises(ValueError, match="history window"):
        NewSession(history_window=window)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="history window"):
        await store.update(SCOPE, "s1", history_window=window)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="history window"):
        await store.update(SCOPE, "nope", history_window=window)  # type: ignore[arg-type]
    assert (await record_of(store, "s1")).history_window == (1, 1)


async def test_a_fork_made_with_the_sources_window_and_namespace_keeps_them(store: Store) -> None:
    source = NewSession(title="Src", history_window=(8, 100), namespace=DOC1)
    await store.commit(SCOPE, "src", turn("s0", "u1", "a1", create=source))
    history = await store.messages(SCOPE, "src")
    assert history is not None
    record = await record_of(store, "src")
    fork = NewSession(title="Fork", history_window=record.history_window, namespace=record.namespace)
    forked = await store.create(SCOPE, "fork", fork, history, leading_system=1)
    assert forked is not None
    assert (forked.history_window, forked.namespace, forked.message_count) == ((8, 100), DOC1, 3)
    assert await window_of(store, "fork") == (8, 100)


# --- namespaces ---------------------------------------------------------------------------------


async def make_mixed(store: Store) -> dict[str, str | None]:
    """Sessions in two namespaces and in none, interleaved in creation order: id -> namespace."""
    made: dict[str, str | None] = {}
    for i in range(12):
        namespace = (DOC1, DOC2, None)[i % 3]
        session_id = f"s{i:02}"
        metadata = {"n": str(i % 2)}
        if i % 4 == 0:  # some made by a chat turn, the others through the management API
            await store.commit(SCOPE, session_id, turn("u1", create=NewSession(metadata=metadata, namespace=namespace)))
        else:
            assert await store.create(SCOPE, session_id, NewSession(metadata=metadata, namespace=namespace))
        made[session_id] = namespace
    return made


async def listed(store: Store, **query: object) -> list[str]:
    page = await store.list_sessions(SCOPE, limit=100, **query)  # type: ignore[arg-type]
    assert page is not None
    return [record.id for record in page[0]]


async def test_a_session_remembers_its_namespace(store: Store) -> None:
    made = await make_mixed(store)
    for session_id, namespace in made.items():
        assert (await record_of(store, session_id)).namespace == namespace
    await store.create(SCOPE, "empty", NewSession(namespace=""))
    assert (await record_of(store, "empty")).namespace is None  # "" is none


async def test_list_filters_by_namespace_before_the_limit(store: Store) -> None:
    made = await make_mixed(store)
    newest_first = list(made)[::-1]
    for namespace in (DOC1, DOC2):
        assert await listed(store, namespace=namespace) == [s for s in newest_first if made[s] == namespace]
    assert await listed(store, namespace="") == [s for s in newest_first if made[s] is None]
    assert await listed(store) == newest_first  # None: all the owner's sessions
    assert await listed(store, namespace="/document") == []  # a prefix of a namespace is another namespace
    assert await listed(store, namespace="/document/d3") == []

    doc1 = [s for s in newest_first if made[s] == DOC1]  # s09 s06 s03 s00
    first = await store.list_sessions(SCOPE, limit=2, namespace=DOC1)
    assert first is not None
    assert ([r.id for r in first[0]], first[1]) == (doc1[:2], True)
    second = await store.list_sessions(SCOPE, limit=2, namespace=DOC1, after=doc1[1])
    assert second is not None
    assert ([r.id for r in second[0]], second[1]) == (doc1[2:], False)
    back = await store.list_sessions(SCOPE, limit=1, namespace=DOC1, before=doc1[2])
    assert back is not None
    assert ([r.id for r in back[0]], back[1]) == ([doc1[1]], True)
    assert await listed(store, namespace=DOC1, order="asc") == doc1[::-1]


async def test_the_namespace_filter_combines_with_status_and_metadata(store: Store) -> None:
    made = await make_mixed(store)
    await store.end(SCOPE, "s03")
    assert await listed(store, namespace=DOC1, status="ended") == ["s03"]
    assert await listed(store, namespace=DOC1, status="active") == ["s09", "s06", "s00"]
    assert await listed(store, namespace=DOC1, metadata={"n": "0"}) == ["s06", "s00"]
    assert await listed(store, namespace=DOC2, metadata={"n": "1"}, status="active") == [
        s for s in list(made)[::-1] if made[s] == DOC2 and int(s[1:]) % 2
    ]


async def test_a_cursor_of_another_namespace_is_no_cursor(store: Store) -> None:
    await make_mixed(store)

    async def page_from(cursor: str, namespace: str | None, backwards: bool) -> object:
        if backwards:
            return await store.list_sessions(SCOPE, limit=5, namespace=namespace, before=cursor)
        return await store.list_sessions(SCOPE, limit=5, namespace=namespace, after=cursor)

    for backwards in (False, True):
        assert await page_from("s01", DOC1, backwards) is None  # s01 is in DOC2
        assert await page_from("s02", DOC1, backwards) is None  # s02 is in none
        assert await page_from("s00", "", backwards) is None
        assert await page_from("s03", DOC1, backwards) is not None
        assert await page_from("s02", "", backwards) is not None
        assert await page_from("s01", None, backwards) is not None  # no filter: any of the owner's


async def test_namespaces_are_per_owner(store: Store) -> None:
    await store.create(SCOPE, "mine", NewSession(namespace=DOC1))
    await store.create("scope-b", "theirs", NewSession(namespace=DOC1))
    assert await listed(store, namespace=DOC1) == ["mine"]
    page = await store.list_sessions("scope-b", limit=10, namespace=DOC1)
    assert page is not None
    assert [record.id for record in page[0]] == ["theirs"]
    assert await store.list_sessions(SCOPE, limit=10, namespace=DOC1, after="theirs") is None


async def test_deleted_sessions_leave_the_namespace_listing(store: Store) -> None:
    await make_mixed(store)
    assert await store.delete(SCOPE, "s06") is True
    assert await listed(store, namespace=DOC1) == ["s09", "s03", "s00"]


# --- Redis: one round trip, the fields as stored, sessions from before the fields -----------------


def test_a_commit_without_create_sends_as_many_fields_as_one_that_creates() -> None:
    assert len(new_fields(NewSession(history_window=(1, 2), namespace=DOC1), 0)) == len(NO_NEW_FIELDS)
    assert encode_window((3, 0)) == "3,0"
    assert (encode_window(None), decode_window(b""), decode_window(None)) == ("", None, None)
    assert decode_window(b"3,0") == (3, 0)


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_load_reads_the_window_in_one_round_trip(make_store: StoreFactory, trace: contract.Trace) -> None:
    store = make_store(ttl=3600)
    await store.open()
    await store.commit(SCOPE, "s1", turn("u1", "a1", create=NewSession(history_window=(2, 50), namespace=DOC1)))

    snapshots = []

    async def load() -> None:
        snapshots.append(await store.load(SCOPE, "s1", Lease("A", 30_000)))

    plain = ["MULTI", "HMGET", "PTTL", "GET", "SET", "LRANGE"]
    assert (await trace(load))[:6] == plain  # the window with the history, plain commands in one MULTI
    assert snapshots[0] is not None
    assert snapshots[0].window == (2, 50)
    assert await trace(lambda: store.commit(SCOPE, "s1", dataclasses.replace(turn("u2"), lease_token="A"))) == [
        "EVALSHA"
    ]
    assert await trace(lambda: store.update(SCOPE, "s1", history_window=None)) == ["EVALSHA"]


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_keeps_both_fields_in_the_meta_hash(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    client = make_store.diagnostics
    await store.create(SCOPE, "s1", NewSession(history_window=(7, 0), namespace=DOC2))
    await store.commit(SCOPE, "s2", turn("u1", create=NewSession()))
    assert await client.hmget(meta_key(make_store, "s1"), "history_window", "namespace") == [b"7,0", DOC2.encode()]
    assert await client.hmget(meta_key(make_store, "s2"), "history_window", "namespace") == [b"", b""]
    await store.update(SCOPE, "s1", history_window=None)
    assert await client.hget(meta_key(make_store, "s1"), "history_window") == b""


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_sessions_written_before_the_fields_existed_still_read(make_store: StoreFactory) -> None:
    store = make_store(ttl=3600)
    client = make_store.diagnostics
    limited = NewSession(history_window=(1, 1), namespace=DOC1, limits=SessionLimits(max_requests=2))
    await store.commit(SCOPE, "old", turn("u1", "a1", create=limited))
    await store.create(SCOPE, "new", NewSession(namespace=DOC1))
    await client.hdel(meta_key(make_store, "old"), "history_window", "namespace")  # as the older scripts wrote it

    record = await record_of(store, "old")
    assert (record.history_window, record.namespace, record.message_count) == (None, None, 2)
    snapshot = await store.load(SCOPE, "old")
    assert snapshot is not None
    assert (snapshot.window, [name_of(item) for item in snapshot.replay]) == (None, ["u1", "a1"])
    assert await listed(store, namespace=DOC1) == ["new"]
    assert await listed(store, namespace="") == ["old"]
    assert await listed(store) == ["new", "old"]
    assert await store.list_sessions(SCOPE, limit=5, namespace="", after="old") == ([], False)
    assert await store.commit(SCOPE, "old", turn("u2")) == "ok"
    assert (await store.load(SCOPE, "old")) is not None
    refused = await store.load(SCOPE, "old")  # its limits still hold
    assert refused is not None
    assert refused.limited_by == "max_requests"
    updated = await store.update(SCOPE, "old", history_window=(4, 0))
    assert updated is not None
    assert (updated.history_window, updated.namespace) == ((4, 0), None)
    ended = await store.end(SCOPE, "old")
    assert ended is not None
    assert ended.history_window == (4, 0)


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_a_fork_of_many_messages_keeps_its_fields(make_store: StoreFactory) -> None:
    # past one push chunk: the CREATE script's messages start after the new fields
    store = make_store(ttl=3600)
    history = [message("system", "s0"), *(message("user", f"u{i}") for i in range(1500))]
    created = await store.create(SCOPE, "big", NewSession(history_window=(3, 0), namespace=DOC1), history, 1)
    assert created is not None
    assert (created.message_count, created.history_window, created.namespace) == (1501, (3, 0), DOC1)
    assert await store.messages(SCOPE, "big") == history

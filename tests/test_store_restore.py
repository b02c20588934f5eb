"""``Store.restore``, what an import writes: every store (memory, one Redis, a Redis Cluster) keeps a whole session
as it was given, in one step, and refuses a taken id unless told to replace it."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable

import orjson
import pytest
import redis.asyncio

from statefulproxy.errors import ClientError
from statefulproxy.stores import (
    ExpiresAfter,
    NewSession,
    SessionLimits,
    SessionRecord,
    Store,
    StoredMessage,
    TurnWrite,
    store_from_url,
)
from statefulproxy.stores.base import RestoredSession
from statefulproxy.stores.redis import RedisStore

pytestmark = pytest.mark.anyio

OWNER = "0" * 32
NOW = 1_700_000_000


def message(role: str, content: str, number: int, **info: object) -> StoredMessage:
    replay = orjson.dumps({"role": role, "content": content})
    return StoredMessage(replay, orjson.dumps({"id": f"msg_{number:06d}", "created_at": NOW - 50, **info}))


def restored(session_id: str, count: int = 3, **fields: object) -> RestoredSession:
    messages = [message("system", "be brief", 0)]
    messages += [message("user" if n % 2 else "assistant", f"m{n}", n) for n in range(1, count)]
    values: dict[str, object] = {
        "id": session_id,
        "status": "active",
        "title": "A title",
        "message_count": len(messages),
        "created_at": NOW - 100,
        "last_active_at": NOW - 50,
        "expires_at": None,
        "metadata": {"team": "blue"},
        "usage": {"prompt_tokens": 12, "completion_tokens": 3},
        "request_count": 4,
    }
    values.update(fields)
    return RestoredSession(SessionRecord(**values), messages, 1)  # type: ignore[arg-type]


@pytest.fixture(params=["memory", "redis", "cluster"])
async def make_store(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Callable[..., Store]]:
    """Stores of one backend under a fresh key prefix; their keys are deleted afterwards."""
    backend = request.param
    url = "memory://"
    if backend == "redis":
        url = request.getfixturevalue("redis_url")
    elif backend == "cluster":
        url = request.getfixturevalue("redis_cluster").url
    prefix = f"sptest-{uuid.uuid4().hex}"
    made: list[Store] = []

    def make(**options: object) -> Store:
        store = store_from_url(url, ttl=3600, clock=lambda: float(NOW), key_prefix=prefix, **options)  # type: ignore[arg-type]
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()
    if backend == "redis":  # the shared server: leave nothing behind (the cluster's prefix is unique too)
        client = redis.asyncio.Redis.from_url(url)
        if keys := [key async for key in client.scan_iter(match=f"{prefix}:*")]:
            await client.delete(*keys)
        await client.aclose()


async def test_every_field_and_every_byte_is_kept(make_store: Callable[..., Store]) -> None:
    store = make_store()
    after = ExpiresAfter("created_at", 1000)
    session = restored(
        "s-1",
        status="ended",
        expires_after=after,
        expires_at=NOW - 100 + 1000,
        limits=SessionLimits(max_requests_per_1_minute=5, max_requests=50),
        history_window=(4, 1000),
        namespace="/document/d1",
        title="",
    )
    native = {"native": {"anthropic": [{"type": "thinking", "thinking": "t", "signature": "c2ln"}]}}
    messages = [*session.messages, message("assistant", "x", 9, **native)]
    session = RestoredSession(dataclasses.replace(session.record, message_count=4), messages, 1)
    assert await store.restore(OWNER, session) is True
    assert await store.get(OWNER, "s-1") == session.record
    assert await store.messages(OWNER, "s-1") == list(session.messages)
    page = await store.list_sessions(OWNER, limit=10, namespace="/document/d1")
    assert page == ([session.record], False)
    positions = await store.message_positions(OWNER, "s-1", ["msg_000002", "msg_000009", "msg_nope"])
    assert positions == ([2, 3, None], 4)
    snapshot = await store.load(OWNER, "s-1")
    assert snapshot is not None
    assert (snapshot.status, snapshot.leading_system, snapshot.window) == ("ended", 1, (4, 1000))
    assert await store.get("f" * 32, "s-1") is None  # another owner sees nothing


async def test_expired_is_not_stored_but_follows_from_expires_at(make_store: Callable[..., Store]) -> None:
    store = make_store()
    after = ExpiresAfter("last_active_at", 10)
    session = restored("s-old", status="expired", expires_after=after, expires_at=NOW - 50 + 10)
    assert await store.restore(OWNER, session)
    found = await store.get(OWNER, "s-old")
    assert found is not None
    assert (found.status, found.expires_at) == ("expired", NOW - 40)


async def test_a_taken_id_is_refused_unless_replaced(make_store: Callable[..., Store]) -> None:
    store = make_store()
    await store.create(OWNER, "taken", NewSession(title="mine"), [message("user", "keep", 1)])
    assert await store.restore(OWNER, restored("taken")) is False
    kept = await store.get(OWNER, "taken")
    assert kept is not None
    assert (kept.title, kept.message_count) == ("mine", 1)
    assert await store.restore(OWNER, restored("taken", 5), replace=True) is True
    assert await store.get(OWNER, "taken") == restored("taken", 5).record
    listed = await store.list_sessions(OWNER, limit=10)
    assert listed is not None
    assert [record.id for record in listed[0]] == ["taken"]


async def test_sessions_are_listed_in_the_order_they_were_restored(make_store: Callable[..., Store]) -> None:
    store = make_store()
    for session_id in ("c", "a", "b"):
        assert await store.restore(OWNER, restored(session_id))
    listed = await store.list_sessions(OWNER, limit=10, order="asc")
    assert listed is not None
    assert [record.id for record in listed[0]] == ["c", "a", "b"]


async def test_the_owner_cap_refuses_one_more(make_store: Callable[..., Store]) -> None:
    store = make_store(max_sessions_per_owner=1)
    assert await store.restore(OWNER, restored("one"))
    with pytest.raises(ClientError) as refused:
        await store.restore(OWNER, restored("two"))
    assert (refused.value.status, refused.value.code) == (429, "session_limit_reached")
    assert await store.get(OWNER, "two") is None
    assert await store.restore(OWNER, restored("one", 5), replace=True)  # replacing adds none


async def test_a_restored_session_goes_on(make_store: Callable[..., Store]) -> None:
    store = make_store()
    assert await store.restore(OWNER, restored("s", 2501))  # more than one chunk of the scripts
    tail = [message("user", "next", 99_999)]
    assert await store.commit(OWNER, "s", TurnWrite(head=[], tail=tail, usage={"prompt_tokens": 1})) == "ok"
    record = await store.get(OWNER, "s")
    assert record is not None
    assert (record.message_count, record.usage["prompt_tokens"], record.request_count) == (2502, 13, 4)
    assert await store.message_positions(OWNER, "s", ["msg_002400", "msg_099999"]) == ([2400, 2501], 2502)
    page = await store.messages_page(OWNER, "s", 2499, None)
    assert page is not None
    assert [orjson.loads(m.replay)["content"] for m in page.messages] == ["m2499", "m2500", "next"]
    if isinstance(store, RedisStore):  # the inactivity TTL starts afresh on every key of the session
        keys = store._keys(OWNER, "s")
        client = store._client
        for key in (keys[0], keys[1], keys[6]):
            assert 0 < await client.execute(b"PTTL", key) <= 3_600_000

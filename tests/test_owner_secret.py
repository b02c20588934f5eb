"""Issue 10, defect 3: proxies sharing a Redis never disagree about owners for good. The owner secret
is the first one written; a proxy re-reads it and adopts the stored one (or writes its own back when it
is gone), so after Redis loses its data every replica keys a credential the same way again. And a
proxy on a shared store without scope_secret says so once at startup."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio

from harness.redis_server import running_redis
from statefulproxy import ProxyApp, SessionMiddleware, Settings
from statefulproxy.stores import Store, store_from_url
from statefulproxy.types import Message
from test_store_contract import FakeClock

pytestmark = pytest.mark.anyio

A_MINUTE = 60  # longer than a proxy keeps the stored secret without reading it again


@pytest.fixture(scope="module")
def private_redis() -> Iterator[str]:
    """A Redis of this module's own: its data is flushed."""
    with running_redis() as url:
        yield url


@pytest.fixture
async def flush(private_redis: str, anyio_backend: str) -> AsyncIterator[Any]:
    client = redis.asyncio.Redis.from_url(private_redis)

    async def flushall() -> None:
        await client.flushall()

    yield flushall
    await client.aclose()


@pytest.fixture
async def stores(private_redis: str, anyio_backend: str) -> AsyncIterator[tuple[FakeClock, list[Store]]]:
    clock = FakeClock()
    made: list[Store] = []
    yield clock, made
    for store in made:
        await store.aclose()


def replica(private_redis: str, clock: FakeClock, made: list[Store]) -> Store:
    store = store_from_url(private_redis, ttl=3600, clock=clock, key_prefix="owners")
    made.append(store)
    return store


async def test_a_replica_started_after_data_loss_and_an_old_one_agree_again(
    private_redis: str, stores: tuple[FakeClock, list[Store]], flush: Any, caplog: pytest.LogCaptureFixture
) -> None:
    clock, made = stores
    old = replica(private_redis, clock, made)
    first = await old.owner_secret()
    await flush()  # Redis lost its data
    new = replica(private_redis, clock, made)
    second = await new.owner_secret()
    assert second != first  # nothing was stored: the new replica made one, and it is the stored one now
    assert await old.owner_secret() == first  # cached a while (no round trip per request) ...
    clock.advance(A_MINUTE)
    with caplog.at_level(logging.WARNING, logger="statefulproxy"):
        assert await old.owner_secret() == second  # ... then the stored one is adopted
        assert await old.owner_secret() == second
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "owner secret" in warnings[0].getMessage()


async def test_an_old_replica_writes_its_secret_back_and_a_new_one_adopts_it(
    private_redis: str, stores: tuple[FakeClock, list[Store]], flush: Any, caplog: pytest.LogCaptureFixture
) -> None:
    clock, made = stores
    old = replica(private_redis, clock, made)
    first = await old.owner_secret()
    await flush()
    clock.advance(A_MINUTE)
    with caplog.at_level(logging.WARNING, logger="statefulproxy"):
        assert await old.owner_secret() == first  # gone: written back (SET NX)
    assert "gone" in caplog.text
    assert await replica(private_redis, clock, made).owner_secret() == first


async def test_the_middleware_follows_the_stores_secret(
    private_redis: str, stores: tuple[FakeClock, list[Store]], flush: Any
) -> None:
    clock, made = stores
    old = replica(private_redis, clock, made)
    middleware = SessionMiddleware(_no_app, old)
    scope = {"headers": [(b"authorization", b"Bearer key-1")], "query_string": b""}
    before = await middleware.owner_for(scope)
    await flush()
    new = SessionMiddleware(_no_app, replica(private_redis, clock, made))
    after = await new.owner_for(scope)
    assert after != before
    clock.advance(A_MINUTE)
    assert await middleware.owner_for(scope) == after  # one credential, one owner, on both replicas


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not reached")


# --- the startup warning -------------------------------------------------------------------------


async def started(app: ProxyApp) -> None:
    messages: list[Message] = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert [message["type"] for message in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


@pytest.mark.parametrize(
    ("store", "scope_secret", "warned"),
    [("redis", None, True), ("redis", "s3cret", False), ("memory", None, False)],
)
async def test_a_shared_store_without_scope_secret_is_warned_about_once(
    redis_url: str, store: str, scope_secret: str | None, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    url = redis_url if store == "redis" else "memory://"
    settings = Settings(upstream="http://127.0.0.1:9", store=url, scope_secret=scope_secret)
    app = ProxyApp(settings, store=store_from_url(url, ttl=60, key_prefix=f"w{uuid.uuid4().hex[:8]}"))
    with caplog.at_level(logging.WARNING, logger="statefulproxy"):
        await started(app)
    found = [record.getMessage() for record in caplog.records if "scope_secret" in record.getMessage()]
    assert len(found) == (1 if warned else 0)
    assert all("\n" not in message for message in found)

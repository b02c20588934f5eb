"""The turn service's own work: background tasks it owns and drains at shutdown."""

from __future__ import annotations

import asyncio

import pytest

from statefulproxy.errors import ClientError
from statefulproxy.sessions.leases import TurnLease
from statefulproxy.sessions.messages import MessageIds
from statefulproxy.sessions.service import TurnService
from statefulproxy.settings import Settings
from statefulproxy.stores import Lease, MemoryStore

pytestmark = pytest.mark.anyio


def service() -> TurnService:
    return TurnService(MemoryStore(), Settings(), MessageIds())


async def test_aclose_waits_for_background_work_to_finish() -> None:
    turns = service()
    release = asyncio.Event()
    finished: list[str] = []

    async def background_release() -> None:
        await release.wait()
        finished.append("released")

    turns.spawn(background_release())
    closing = asyncio.create_task(turns.aclose(grace=5))
    await asyncio.sleep(0)  # let aclose start waiting: it must not return before the task ends
    assert not closing.done()
    release.set()
    await closing
    assert finished == ["released"]


async def test_aclose_cancels_what_outlives_the_grace_period() -> None:
    turns = service()
    cancelled = asyncio.Event()

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    turns.spawn(stuck())
    await turns.aclose(grace=0.01)
    assert cancelled.is_set()
    await turns.aclose()  # nothing left: returns at once


async def test_finished_tasks_are_forgotten() -> None:
    turns = service()

    async def quick() -> None:
        return None

    turns.spawn(quick())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not turns._background


class CountingStore(MemoryStore):
    """A memory store that reports each lease renewal."""

    def __init__(self) -> None:
        super().__init__()
        self.renewals = 0
        self.renewed = asyncio.Event()

    async def renew_lease(self, owner: str, session_id: str, lease: Lease) -> bool:
        self.renewals += 1
        self.renewed.set()
        return await super().renew_lease(owner, session_id, lease)


async def test_a_long_turn_keeps_its_lease_renewed_until_released() -> None:
    store = CountingStore()
    turns = TurnService(store, Settings(lease_ttl=0.03), MessageIds())
    lease = TurnLease(store, "owner", "s1", turns.settings, turns.spawn)
    await lease.load()
    lease.keep_renewed()
    for expected in (1, 2):  # renewed again and again while the turn runs
        store.renewed.clear()
        await asyncio.wait_for(store.renewed.wait(), 1)
        assert store.renewals == expected
    # another turn cannot take it meanwhile
    other = TurnLease(store, "owner", "s1", Settings(on_busy="reject"), turns.spawn)
    with pytest.raises(ClientError):
        await other.load()
    await lease.release()
    count = store.renewals
    # released: the next turn takes the lease at once, and no renewal follows
    await other.load()
    await asyncio.sleep(0.05)  # longer than a renewal interval: nothing to synchronise with, only absence
    assert store.renewals == count


async def test_the_turns_in_flight_share_one_renewal_timer() -> None:
    store = CountingStore()
    turns = TurnService(store, Settings(lease_ttl=0.06), MessageIds())
    leases = [TurnLease(store, "owner", f"s{n}", turns.settings, turns.spawn, keeper=turns.leases) for n in range(50)]
    for lease in leases:
        await lease.load()
        lease.keep_renewed()
    keeper = turns.leases
    assert len(keeper._held) == 50
    first_timer = keeper._timer
    assert first_timer is not None  # one timer for the fifty, not fifty
    while store.renewals < 50:  # each is renewed in time, from that timer's ticks
        store.renewed.clear()
        await asyncio.wait_for(store.renewed.wait(), 1)
    for lease in leases:
        await lease.release()
    assert keeper._held == {}
    renewed = store.renewals
    await asyncio.sleep(0.1)  # longer than a renewal interval: nothing to synchronise with, only absence
    assert store.renewals == renewed
    assert keeper._timer is None  # with nothing held, the keeper stops ticking

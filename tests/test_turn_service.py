"""The turn service's own work: background tasks it owns and drains at shutdown."""

from __future__ import annotations

import asyncio

import pytest

from statefulproxy.sessions.messages import MessageIds
from statefulproxy.sessions.service import TurnService
from statefulproxy.settings import Settings
from statefulproxy.stores import MemoryStore

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

"""The per-host gate from event-loop tasks, and shared between tasks and threads."""

from __future__ import annotations

import asyncio
import threading
import time

from conveyor.mirror.gate import HostGate


class Transfers:
    """Tasks that each hold a slot of ``gate`` for a moment; the most held at once."""

    def __init__(self, gate: HostGate) -> None:
        self.gate = gate
        self.active = self.peak = 0

    async def one(self) -> None:
        async with self.gate.async_slot():
            self.active += 1
            self.peak = max(self.peak, self.active)
            await asyncio.sleep(0.01)
            self.active -= 1

    async def many(self, count: int) -> None:
        await asyncio.gather(*(self.one() for _ in range(count)))


def test_tasks_hold_no_more_slots_than_the_limit() -> None:
    transfers = Transfers(HostGate(2))
    asyncio.run(transfers.many(8))
    assert transfers.peak == 2


def test_a_throttle_lowers_the_limit_for_tasks_too() -> None:
    gate = HostGate(3)
    transfers = Transfers(gate)

    async def throttled_then_many() -> None:
        async with gate.async_slot(), gate.async_slot():
            gate.throttled(None)  # two active: the host tolerates one
        await transfers.many(6)

    asyncio.run(throttled_then_many())
    assert gate.limit == 1
    assert transfers.peak == 1


def test_a_retry_after_pause_holds_tasks_back() -> None:
    gate = HostGate(2)

    async def paused() -> float:
        gate.throttled(0.3)
        started = time.monotonic()
        async with gate.async_slot():
            return time.monotonic() - started

    assert asyncio.run(paused()) >= 0.3


def test_a_slot_given_back_by_a_thread_wakes_a_waiting_task() -> None:
    gate = HostGate(1)
    held = threading.Event()
    release = threading.Event()

    def thread_transfer() -> None:
        with gate.slot():
            held.set()
            release.wait(10)

    worker = threading.Thread(target=thread_transfer)
    worker.start()
    held.wait(10)

    async def task_transfer() -> str:
        waiting = asyncio.create_task(_enter(gate))
        await asyncio.sleep(0.05)
        assert not waiting.done(), "the task took a slot the thread still held"
        release.set()
        return await asyncio.wait_for(waiting, 5)

    try:
        assert asyncio.run(task_transfer()) == "entered"
    finally:
        release.set()
        worker.join()


async def _enter(gate: HostGate) -> str:
    async with gate.async_slot():
        return "entered"

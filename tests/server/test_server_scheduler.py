"""The shared-model scheduler: finals first, round-robin across sessions, stale partials
dropped, a failing decode reported as such while the others go on."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest

from conftest import NO_SERVER_EXTRA

pytest.importorskip("faster_whisper", reason=NO_SERVER_EXTRA)

from roomscribe.server.scheduler import Scheduler
from roomscribe.server.session import DecodeJob, Settle
from server_support import Deliver, Result, run_held_scheduler
from timing import scaled

pytestmark = pytest.mark.server


def job(session: str, item: str, final: bool = True, seq: int = 0) -> DecodeJob:
    return DecodeJob(session, item, final, np.zeros(1600, dtype=np.int16), seq)


def run_order(jobs: list[DecodeJob], expect: int, fail: str = "") -> list[Result]:
    """Queue `jobs` while the worker is held busy, release it, and return the first
    `expect` results in the order they were decoded."""

    async def submit_all(sched: Scheduler, deliver: Deliver) -> None:
        for j in jobs:
            sched.submit(j, deliver)

    return run_held_scheduler(submit_all, expect, fail)


def test_finals_round_robin_then_newest_partial() -> None:
    jobs = [job("a", "a1"), job("a", "a2"), job("a", "a3"), job("b", "b1"),
            job("b", "bp1", final=False, seq=1), job("b", "bp2", final=False, seq=2),
            job("b", "b2")]
    order = [item for item, _, _ in run_order(jobs, expect=6)]
    # a and b take turns (whether a2 joined the line before b1 depends on when the
    # dispatcher took a1).
    finals = [i for i in order if "p" not in i]
    assert finals == ["a1", "b1", "a2", "b2", "a3"] or finals == ["a1", "a2", "b1", "a3", "b2"]
    assert "bp1" not in order  # the stale partial was dropped
    assert order[-1] == "bp2"  # partials only after every final


def test_a_failing_decode_is_reported_and_the_rest_go_on() -> None:
    order = run_order([job("a", "a1"), job("a", "a2"), job("a", "a3")], expect=3, fail="boom")
    assert order[0] == ("a1", "text", None)
    assert order[1][0] == "a2" and order[1][1] is None and "boom" in (order[1][2] or "")
    assert order[2] == ("a3", "text", None)


class HeldModel:
    """A model whose decodes start when the scheduler hands them over and finish only
    when the test releases them; jobs are told apart by their length in samples."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self._release: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    def transcribe(self, pcm: np.ndarray, final: bool, context: str = "") -> str:
        with self._lock:
            self.started.append(len(pcm))
            gate = self._release.setdefault(len(pcm), threading.Event())
        gate.wait(scaled(10))
        return "text"

    def release(self, n: int) -> None:
        with self._lock:
            self._release.setdefault(n, threading.Event()).set()


def sized(session: str, item: str, n: int, final: bool = True) -> DecodeJob:
    return DecodeJob(session, item, final, np.zeros(n, dtype=np.int16), seq=1)


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + scaled(timeout_s)
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def dispatching(model: HeldModel) -> AsyncIterator[tuple[Scheduler, Deliver, list[str]]]:
    """A two-worker scheduler over `model`, its deliver callback, and the items
    delivered so far."""
    sched = Scheduler(model.transcribe, workers=2)
    runner = asyncio.create_task(sched.run(), name="test-dispatcher")
    delivered: list[str] = []

    def deliver(j: DecodeJob, text: str | None, error: str | None) -> None:
        delivered.append(j.item_id)

    try:
        yield sched, deliver, delivered
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        sched.close()


def test_partials_leave_a_worker_free_for_a_final() -> None:
    model = HeldModel()

    async def main() -> None:
        async with dispatching(model) as (sched, deliver, delivered):
            sched.submit(sized("a", "pa", 1001, final=False), deliver)
            sched.submit(sized("b", "pb", 1002, final=False), deliver)
            await until(lambda: model.started == [1001])
            await asyncio.sleep(0.2)
            assert model.started == [1001]  # the second partial waits: a worker stays free
            sched.submit(sized("c", "fc", 2001), deliver)
            await until(lambda: 2001 in model.started)  # the final starts beside the partial
            for n in (1001, 1002, 2001):
                model.release(n)
            await until(lambda: len(delivered) == 3)
            assert model.started == [1001, 2001, 1002]

    asyncio.run(main())


def test_one_decode_per_session_at_a_time_so_results_stay_in_order() -> None:
    model = HeldModel()

    async def main() -> None:
        async with dispatching(model) as (sched, deliver, delivered):
            for item, n in (("a1", 3001), ("a2", 3002)):
                sched.submit(sized("a", item, n), deliver)
            sched.submit(sized("b", "b1", 4001), deliver)
            await until(lambda: sorted(model.started) == [3001, 4001])
            model.release(3002)  # a2 could finish first, were it allowed to start
            await asyncio.sleep(0.2)
            assert 3002 not in model.started  # a1 still runs: a2 waits its turn
            model.release(3001)
            await until(lambda: delivered[:2] == ["a1", "a2"])
            model.release(4001)
            await until(lambda: len(delivered) == 3)

    asyncio.run(main())


def test_a_dropped_guess_still_decoding_no_longer_holds_its_room() -> None:
    """Speech resumed after a short pause: the session dropped its speculative final,
    which is already decoding. Its partial (and its final) start at once on the other
    worker instead of waiting for a text nobody will read."""
    model = HeldModel()

    async def main() -> None:
        async with dispatching(model) as (sched, deliver, delivered):
            sched.submit(DecodeJob("a", "a1", True, np.zeros(5001, dtype=np.int16),
                                   spec=1), deliver)
            await until(lambda: model.started == [5001])
            sched.submit(sized("a", "a1", 1001, final=False), deliver)
            await asyncio.sleep(0.2)
            assert model.started == [5001]  # the guess may still be kept: it holds a
            sched.settle(Settle("a", 1, keep=False))
            await until(lambda: 1001 in model.started)
            model.release(1001)
            await until(lambda: delivered == ["a1"])
            # The guess still holds its worker until it ends: one final at a time.
            sched.submit(sized("b", "b1", 6001), deliver)
            sched.submit(sized("c", "c1", 6002), deliver)
            await until(lambda: 6001 in model.started)
            await asyncio.sleep(0.2)
            assert 6002 not in model.started
            model.release(5001)
            await until(lambda: 6002 in model.started)
            for n in (6001, 6002):
                model.release(n)
            await until(lambda: len(delivered) == 4)

    asyncio.run(main())


def test_a_replaying_rooms_dropped_guess_still_holds_it() -> None:
    """A room replaying a backlog keeps to one worker, dropped guess or not."""
    model = HeldModel()

    async def main() -> None:
        async with dispatching(model) as (sched, deliver, delivered):
            sched.submit(DecodeJob("r", "r1", True, np.zeros(5001, dtype=np.int16),
                                   spec=1), deliver, bulk=True)
            await until(lambda: model.started == [5001])
            sched.settle(Settle("r", 1, keep=False))
            sched.submit(sized("r", "r1", 5002), deliver, bulk=True)
            await asyncio.sleep(0.2)
            assert model.started == [5001]
            model.release(5001)
            await until(lambda: 5002 in model.started)
            model.release(5002)
            await until(lambda: len(delivered) == 2)

    asyncio.run(main())


def test_a_closed_sessions_waiting_finals_are_dropped() -> None:
    """forget() drops what no one will read; the others still run, and the queue that
    made the server refuse new sessions drains."""
    model = HeldModel()

    async def main() -> None:
        async with dispatching(model) as (sched, deliver, delivered):
            sched.queue_max = 2
            sched.submit(sized("a", "a1", 5001), deliver)
            await until(lambda: model.started == [5001])  # a1 runs and holds a worker
            sched.submit(sized("a", "a2", 5002), deliver)
            sched.submit(sized("a", "a3", 5003), deliver)
            assert sched.overloaded
            sched.submit(sized("b", "b1", 6001), deliver)  # never blocks the caller
            sched.forget("a")
            assert not sched.overloaded
            await until(lambda: 6001 in model.started)
            for n in (5001, 6001):
                model.release(n)
            await until(lambda: sorted(delivered) == ["a1", "b1"])
            assert 5002 not in model.started and 5003 not in model.started

    asyncio.run(main())


def test_live_rooms_finals_go_ahead_of_a_replayed_backlog() -> None:
    """A room replaying a backlog (bulk) must not delay the live rooms' sentences."""

    async def script(sched: Scheduler, deliver: Deliver) -> None:
        sched.submit(job("z", "busy"), deliver)  # holds the worker
        await asyncio.sleep(0.05)
        for item in ("a1", "a2", "a3"):
            sched.submit(job("a", item), deliver, bulk=True)
        sched.submit(job("b", "b1"), deliver)  # a live room, later in line
        sched.submit(job("a", "a4"), deliver, bulk=True)
        sched.submit(job("c", "c1"), deliver)

    order = [item for item, _, _ in run_held_scheduler(script, expect=7)]
    assert order[0] == "busy"
    assert set(order[1:3]) == {"b1", "c1"}
    assert order[3:] == ["a1", "a2", "a3", "a4"]


def test_a_replayed_final_waits_while_a_live_rooms_decode_runs() -> None:
    model = HeldModel()

    async def main() -> None:
        async with dispatching(model) as (sched, deliver, delivered):
            sched.submit(sized("live", "l1", 7001), deliver)
            await until(lambda: model.started == [7001])
            sched.submit(sized("replay", "r1", 8001), deliver, bulk=True)
            await asyncio.sleep(0.2)
            assert model.started == [7001]  # a worker is free, but the live room runs
            model.release(7001)
            await until(lambda: 8001 in model.started)
            model.release(8001)
            await until(lambda: delivered == ["l1", "r1"])

    asyncio.run(main())


def test_a_continued_segment_is_decoded_with_its_turns_text() -> None:
    # Three segments of one turn (cut twice by max_speech) queued before any decode, as
    # a replayed backlog would be, then one new turn: each continuation gets the text
    # decoded so far in its turn, the new turn gets none, another session's none.
    contexts: dict[str, str] = {}
    words = {1601: "one", 1602: "two", 1603: "three", 1604: "four", 1605: "five"}

    def transcribe(pcm: np.ndarray, final: bool, context: str = "") -> str:
        contexts[words[len(pcm)]] = context
        return words[len(pcm)]

    def seg(session: str, item: str, n: int, after: str | None) -> DecodeJob:
        return DecodeJob(session, item, True, np.zeros(n, dtype=np.int16),
                         context_of=after)

    async def main() -> None:
        sched = Scheduler(transcribe)
        done: list[str] = []
        for j in [seg("a", "a1", 1601, None), seg("a", "a2", 1602, "a1"),
                  seg("a", "a3", 1603, "a2"), seg("a", "a4", 1604, None),
                  seg("b", "b1", 1605, "a3")]:
            sched.submit(j, lambda j, t, e: done.append(j.item_id))
        runner = asyncio.create_task(sched.run(), name="test-dispatcher")
        try:
            async with asyncio.timeout(scaled(10)):
                while len(done) < 5:
                    await asyncio.sleep(0.01)
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            sched.close()

    asyncio.run(main())
    assert contexts == {"one": "", "two": "one", "three": "one two", "four": "",
                        "five": ""}

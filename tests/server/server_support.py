"""Shared helpers for the server tests: real speech at 16 kHz, one model per process,
a sans-I/O driver that runs a Session's decode jobs synchronously, and an in-process
server on a free port in a background thread."""

from __future__ import annotations

import asyncio
import base64
import difflib
import functools
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from roomscribe.config import ServerSettings
from roomscribe.server.handshake import ConnectParams
from roomscribe.server.scheduler import Scheduler, TurnText
from roomscribe.server.session import DecodeJob, Limits, Session
from roomscribe.server.transcriber import Transcriber
from roomscribe.server.vad import VadParams
from timing import scaled

FILES = ["jfk-44k1-stereo.wav", "lj002-0020-22k05.wav", "lj002-0035-22k05.wav",
         "ami-es2011a-16k.wav"]
RATE = 16000
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEFAULT_VAD = VadParams()
NUMBERS = {"1813": "eighteen thirteen", "8": "eight"}


def speech(name: str, rate_hz: int = 16000) -> npt.NDArray[np.int16]:
    """A file of /work/shared/audio as mono int16 at `rate_hz` (down-mixed and
    soxr-resampled straight from the file, as a client at that rate would send it)."""
    from stack import read_mono

    return np.asarray(np.clip(np.rint(read_mono(name, rate_hz)), -32768, 32767),
                      dtype=np.int16)


def recording(name: str) -> npt.NDArray[np.int16]:
    """A file of tests/data (its README says where each comes from), as `speech` reads
    one (an absolute path replaces the shared folder)."""
    return speech(str(DATA_DIR / name))


def silence(seconds: float) -> npt.NDArray[np.int16]:
    return np.zeros(int(seconds * RATE), dtype=np.int16)


@functools.cache
def transcriber() -> Transcriber:
    """The bundled tiny.en, loaded once per test process, with the default workers."""
    return Transcriber(workers=ServerSettings().workers)


def normalise(text: str) -> list[str]:
    from conftest import words

    out: list[str] = []
    for word in words(text):
        out += NUMBERS.get(word, word).split()
    return out


def coverage(reference: str, transcript: str) -> float:
    """Share of the reference's words found in the transcript; a near spelling of a
    name counts (tiny.en writes Claflin as Klafflin, Abbie as Abi)."""
    ref = normalise(reference)
    got = set(normalise(transcript))
    found = [w in got or bool(difflib.get_close_matches(w, got, n=1, cutoff=0.75))
             for w in ref]
    return sum(found) / len(ref)


def params(vad: VadParams | None = DEFAULT_VAD, model: str = "openai/whisper-large-v3"
           ) -> ConnectParams:
    return ConnectParams(model=model, input_audio_format="pcm_s16le_16000",
                         intent="transcription", vad=vad)


def append(pcm: npt.NDArray[np.int16]) -> str:
    return json.dumps({"type": "input_audio_buffer.append",
                       "audio": base64.b64encode(pcm.astype("<i2").tobytes()).decode()})


class Driver:
    """Feeds a Session and runs its decode jobs right away, like a server with no load."""

    def __init__(self, session: Session, partials: bool = True):
        self.session = session
        self.partials = partials
        self.events: list[dict[str, Any]] = session.start()
        # input_audio_buffer.processed, kept apart from `events`: (how many events had
        # gone out before it, processed_ms).
        self.processed: list[tuple[int, int]] = []
        self._progress()
        self.jobs: list[DecodeJob] = []
        self.turn = TurnText()  # the scheduler's context keeping, without a scheduler

    def _progress(self) -> None:
        self.processed += [(len(self.events), e["processed_ms"])
                           for e in self.session.progress()]

    def send(self, message: str | bytes) -> list[dict[str, Any]]:
        before = len(self.events)
        self._run(self.session.receive(message))
        return self.events[before:]

    def stream(self, pcm: npt.NDArray[np.int16], chunk_ms: int = 100) -> None:
        step = RATE * chunk_ms // 1000
        for i in range(0, len(pcm), step):
            self.send(append(pcm[i:i + step]))

    def _run(self, outputs: list[Any]) -> None:
        # Like the server: a message's events (and the watermark they moved) go out
        # before its jobs' results.
        self.events += [o for o in outputs if isinstance(o, dict)]
        self._progress()
        for out in outputs:
            if not isinstance(out, DecodeJob):  # events (above), Settle (nothing queued)
                continue
            self.jobs.append(out)
            if out.final or self.partials:
                context = self.turn.context(out)
                text = transcriber().transcribe(out.pcm, out.final, context)
                self.turn.decoded(out, context, text)
                self._run(self.session.decoded(out, text))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def transcripts(self) -> list[str]:
        return [e["transcript"] for e in
                self.of("conversation.item.input_audio_transcription.completed")]


def driver(vad: VadParams | None = DEFAULT_VAD, limits: Limits | None = None,
           partials: bool = True) -> Driver:
    return Driver(Session(params(vad), limits), partials)


@contextmanager
def server(settings: ServerSettings | None = None) -> Iterator[int]:
    """A real server on 127.0.0.1, free port, own event loop in a thread; yields the port."""
    from roomscribe.server.app import RealtimeServer

    base = replace(settings or ServerSettings(), host="127.0.0.1", port=0)
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        srv = RealtimeServer(base, transcriber().transcribe)
        state["port"] = await srv.start()
        stop = asyncio.Event()
        state["loop"], state["stop"] = asyncio.get_running_loop(), stop
        ready.set()
        try:
            await stop.wait()
        finally:
            await srv.close()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="test-server",
                              daemon=True)
    thread.start()
    if not ready.wait(scaled(30)):
        raise TimeoutError("server did not start")
    try:
        yield int(state["port"])
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(scaled(15))


Result = tuple[str, str | None, str | None]  # item id, text, error
Deliver = Callable[[DecodeJob, str | None, str | None], None]


def run_held_scheduler(script: Callable[[Scheduler, Deliver], Awaitable[None]],
                       expect: int, fail: str = "", linger_s: float = 0.0) -> list[Result]:
    """Run `script` (submits, settles) against a real Scheduler whose model is held
    busy, then release it; return the first `expect` results in decode order, after
    waiting `linger_s` more for anything that should not have run."""
    gate = threading.Event()
    done: list[Result] = []

    def transcribe(pcm: npt.NDArray[np.int16], final: bool, context: str) -> str:
        gate.wait(scaled(10))
        if fail and len(done) == 1:  # the second decode breaks (the fault is the point)
            raise RuntimeError(fail)
        return "text"

    async def main() -> None:
        sched = Scheduler(transcribe)
        runner = asyncio.create_task(sched.run(), name="test-dispatcher")
        finished = asyncio.Event()

        def deliver(j: DecodeJob, text: str | None, error: str | None) -> None:
            done.append((j.item_id, text, error))
            if len(done) == expect:
                finished.set()

        await script(sched, deliver)
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.wait_for(finished.wait(), scaled(20))
        await asyncio.sleep(linger_s)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        sched.close()

    asyncio.run(main())
    return done

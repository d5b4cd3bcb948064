"""Speculative finals, driven sans-I/O: once 64 ms of silence follows a segment, the
session sends its final decode early; the close reuses that answer when the segment
closes with the same audio, and drops it when speech resumes first. Either way its
text, if it comes while the item is open, is shown as a delta. The scheduler runs
such a job after every real final and before partials, and settles it as told."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from conftest import NO_SERVER_EXTRA
from server_support import (
    Deliver,
    append,
    coverage,
    params,
    run_held_scheduler,
    silence,
    speech,
    transcriber,
)

pytest.importorskip("faster_whisper", reason=NO_SERVER_EXTRA)

from conftest import reference_texts
from roomscribe.server.scheduler import Scheduler
from roomscribe.server.session import DecodeJob, Output, Session, Settle
from roomscribe.server.vad import VadParams

pytestmark = pytest.mark.server
COMPLETED = "conversation.item.input_audio_transcription.completed"
STOPPED = "input_audio_buffer.speech_stopped"
DELTA = "conversation.item.input_audio_transcription.delta"


def messages(session: Session, pcm: np.ndarray) -> Iterator[list[Output]]:
    """The outputs of each 100 ms append, one append at a time (no job is answered)."""
    for i in range(0, len(pcm), 1600):
        yield session.receive(append(pcm[i:i + 1600]))


def kinds(outputs: list[Output]) -> list[str]:
    return [o["type"] if isinstance(o, dict) else type(o).__name__ + (
        f"(spec={o.spec})" if isinstance(o, DecodeJob) and o.spec else
        f"(final={o.final})" if isinstance(o, DecodeJob) else f"(keep={o.keep})")
        for o in outputs]


def one_clip() -> np.ndarray:
    return np.concatenate([silence(0.5), speech("lj002-0020-22k05.wav"), silence(1.0)])


def two_sentences() -> np.ndarray:
    """0.4 s apart (< min_silence 500 ms): one segment, with a pause that starts a guess."""
    return np.concatenate([silence(0.5), speech("lj002-0020-22k05.wav"), silence(0.4),
                           speech("lj002-0035-22k05.wav"), silence(1.0)])


def test_answered_guess_is_the_completed_with_no_decode_of_its_own() -> None:
    s = Session(params())
    out: list[Output] = []
    guess_text = ""
    shown: list[Output] = []
    at: dict[str, int] = {}  # the append that brought the guess, and the close
    for n, batch in enumerate(messages(s, one_clip())):
        out += batch
        for name in kinds(batch):
            at.setdefault(name, n)
        for job in batch:
            if isinstance(job, DecodeJob) and job.spec:  # answer it at once
                guess_text = transcriber().transcribe(job.pcm, job.final)
                shown = s.decoded(job, guess_text)
    # Its text goes out at once, as the open item's newest hypothesis.
    [delta] = shown
    assert isinstance(delta, dict)
    assert (delta["type"], delta["delta"]) == (DELTA, guess_text.strip())
    names = kinds(out)
    assert names.count("DecodeJob(spec=1)") == 1
    close = names.index(STOPPED)
    assert names.index("DecodeJob(spec=1)") < close
    # speech_stopped, committed and completed together, and no second decode.
    assert names[close:close + 3] == [STOPPED, "input_audio_buffer.committed", COMPLETED]
    assert "DecodeJob(final=True)" not in names
    [done] = [o for o in out if isinstance(o, dict) and o["type"] == COMPLETED]
    assert done["transcript"] == guess_text.strip()
    assert coverage(reference_texts()["lj002-0020-22k05.wav"], done["transcript"]) >= 0.8
    [guess] = [o for o in out if isinstance(o, DecodeJob) and o.spec]
    assert guess.item_id == done["item_id"] == delta["item_id"]
    # The guess decoded the segment's audio from its start: all its speech and the
    # beginning of its 250 ms trailing pad, sent 64 ms into the silence (by the next
    # 100 ms append), not once the whole pad was in. So it had at least 300 ms to
    # decode before min_silence (500 ms) closed the segment.
    span = (done["audio_end_ms"] - done["audio_start_ms"]) * 16
    pad = VadParams().speech_pad_ms * 16
    assert span - pad + 2 * 512 <= len(guess.pcm) <= span - pad + 2 * 512 + 1600
    assert at[STOPPED] - at["DecodeJob(spec=1)"] >= 3


def test_guess_still_decoding_at_the_close_becomes_the_final() -> None:
    s = Session(params())
    out = [o for batch in messages(s, one_clip()) for o in batch]
    [guess] = [o for o in out if isinstance(o, DecodeJob) and o.spec]
    names = kinds(out)
    close = names.index(STOPPED)
    # The close keeps the guess (it is due like a final now) instead of a new decode.
    assert names[close:] == [STOPPED, "input_audio_buffer.committed", "Settle(keep=True)"]
    settle = out[close + 2]
    assert isinstance(settle, Settle) and settle.spec == guess.spec
    assert COMPLETED not in names
    [done] = s.decoded(guess, transcriber().transcribe(guess.pcm, guess.final))
    assert isinstance(done, dict) and done["type"] == COMPLETED
    assert done["item_id"] == guess.item_id
    assert coverage(reference_texts()["lj002-0020-22k05.wav"], done["transcript"]) >= 0.8


def test_guess_is_dropped_when_speech_resumes() -> None:
    s = Session(params(VadParams(max_speech_duration_s=30)))
    pcm = two_sentences()
    out: list[Output] = []
    first: DecodeJob | None = None
    late: list[Any] = []
    for batch in messages(s, pcm):
        out += batch
        for o in batch:
            if isinstance(o, DecodeJob) and o.spec and first is None:
                first = o  # its answer comes late, after the speech resumed
            elif isinstance(o, Settle) and first is not None and o.spec == first.spec \
                    and not o.keep:
                late += s.decoded(first, "a stale guess")
            elif isinstance(o, DecodeJob) and o.final:
                out += s.decoded(o, transcriber().transcribe(o.pcm, o.final))
    assert first is not None
    names = kinds(out)
    # Dropped (the scheduler may skip it) before the segment closed. Its late answer
    # is the turn so far: a delta of the open item, never its completed text.
    assert names.index("Settle(keep=False)") < names.index(STOPPED)
    assert [(e["type"], e["item_id"], e["delta"]) for e in late] == [
        (DELTA, first.item_id, "a stale guess")]
    [done] = [o for o in out if isinstance(o, dict) and o["type"] == COMPLETED]
    assert "stale" not in done["transcript"]
    refs = reference_texts()
    text = done["transcript"]
    assert coverage(refs["lj002-0020-22k05.wav"], text) >= 0.8
    assert coverage(refs["lj002-0035-22k05.wav"], text) >= 0.8
    # The final covers both sentences: longer than the first guess.
    assert (done["audio_end_ms"] - done["audio_start_ms"]) * 16 > len(first.pcm) + 16000


def test_a_dropped_guess_never_replaces_a_newer_partial() -> None:
    s = Session(params(VadParams(max_speech_duration_s=30)))
    guess: DecodeJob | None = None
    later: DecodeJob | None = None  # the first partial after the guess was dropped
    dropped = False
    for batch in messages(s, two_sentences()):
        for o in batch:
            if isinstance(o, DecodeJob) and o.spec and guess is None:
                guess = o
            elif isinstance(o, Settle) and guess is not None and o.spec == guess.spec:
                dropped = not o.keep
            elif isinstance(o, DecodeJob) and not o.final and dropped and later is None:
                later = o
        if later is not None:
            break
    assert guess is not None and later is not None and later.item_id == guess.item_id
    # The partial, sent after the guess, answers first: shown. The guess then: not.
    [delta] = s.decoded(later, "in eighteen thirteen the press")
    assert isinstance(delta, dict) and delta["type"] == DELTA
    assert s.decoded(guess, "in eighteen thirteen") == []


def test_a_guess_that_reads_what_the_last_partial_did_is_not_said_twice() -> None:
    s = Session(params())
    partial: DecodeJob | None = None
    guess: DecodeJob | None = None
    for batch in messages(s, one_clip()):
        for o in batch:
            if isinstance(o, DecodeJob) and not o.final:
                partial = o
            elif isinstance(o, DecodeJob) and o.spec:
                guess = o
        if guess is not None:
            break
    assert partial is not None and guess is not None and partial.seq < guess.seq
    assert kinds(s.decoded(partial, "In 1813.")) == [DELTA]
    assert s.decoded(guess, "In 1813.") == []  # the same text: the subscriber has it


def job(session: str, item: str, final: bool = True, spec: int = 0) -> DecodeJob:
    return DecodeJob(session, item, final, np.zeros(1600, dtype=np.int16), spec=spec)


def test_scheduler_runs_guesses_after_finals_and_settles_them() -> None:
    async def script(sched: Scheduler, deliver: Deliver) -> None:
        sched.submit(job("a", "busy"), deliver)  # holds the worker
        await asyncio.sleep(0.05)
        sched.submit(job("a", "a-partial", final=False), deliver)
        sched.submit(job("a", "a-guess", spec=1), deliver)
        sched.submit(job("b", "b-stale", spec=1), deliver)
        sched.submit(job("b", "b1"), deliver)
        sched.submit(job("c", "c-kept", spec=1), deliver)
        sched.submit(job("c", "c-next"), deliver)  # waits behind c's guess
        sched.settle(Settle("b", 1, keep=False))
        sched.settle(Settle("c", 1, keep=True))

    done = [item for item, _, _ in run_held_scheduler(script, expect=6, linger_s=0.3)]
    # b's stale guess never runs; c's kept guess is a final; a's guess after every
    # final, the partial last; each session's results in submission order.
    assert done[0] == "busy"
    assert set(done[1:4]) == {"b1", "c-kept", "c-next"}
    assert done.index("c-kept") < done.index("c-next")
    assert done[4:] == ["a-guess", "a-partial"]
    assert "b-stale" not in done


def test_commit_during_the_pause_uses_the_guess_once() -> None:
    s = Session(params())
    pcm = np.concatenate([silence(0.5), speech("lj002-0020-22k05.wav"), silence(0.4)])
    out = [o for batch in messages(s, pcm) for o in batch]
    [guess] = [o for o in out if isinstance(o, DecodeJob) and o.spec]
    new = s.receive('{"type": "input_audio_buffer.commit"}')
    # One item: the open segment, closed by the commit with the guessed audio.
    assert kinds(new) == [STOPPED, "input_audio_buffer.committed", "Settle(keep=True)"]
    [done] = s.decoded(guess, transcriber().transcribe(guess.pcm, guess.final))
    assert isinstance(done, dict) and done["type"] == COMPLETED
    assert coverage(reference_texts()["lj002-0020-22k05.wav"], done["transcript"]) >= 0.8

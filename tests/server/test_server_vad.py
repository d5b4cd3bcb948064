"""Streaming VAD: the segmentation rules on chosen probabilities, and real speech."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from conftest import NO_SERVER_EXTRA
from server_support import FILES, RATE, coverage, driver, silence, speech

pytest.importorskip("faster_whisper", reason=NO_SERVER_EXTRA)

from conftest import reference_texts
from roomscribe.server.vad import (
    WINDOW,
    Closed,
    Segmenter,
    SileroStream,
    Started,
    VadParams,
)

pytestmark = pytest.mark.server
MS = RATE // 1000


# Together's 5 s limit (ours is 15 s): the split rules on shorter inputs.
FIVE = VadParams(max_speech_duration_s=5.0)


def run(probs: list[float], params: VadParams | None = None,
        flush: bool = False) -> list[Started | Closed]:
    seg = Segmenter(params or FIVE)
    events: list[Started | Closed] = []
    for p in probs:
        events += seg.push(p)
    if flush:
        events += seg.flush(len(probs) * WINDOW)
    return events


def windows(ms: float) -> int:
    return round(ms * MS / WINDOW)


def test_streaming_probabilities_equal_one_pass() -> None:
    from faster_whisper.vad import get_vad_model

    audio = speech("jfk-44k1-stereo.wav").astype(np.float32) / 32768.0
    audio = audio[: len(audio) // WINDOW * WINDOW]
    whole = get_vad_model()(audio).reshape(-1)
    stream = SileroStream()
    parts = [stream.probabilities(audio[i:i + 7 * WINDOW].reshape(-1, WINDOW))
             for i in range(0, len(audio), 7 * WINDOW)]
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-5)


def test_segment_is_padded_and_closed_after_min_silence() -> None:
    probs = [0.0] * windows(1000) + [0.9] * windows(1000) + [0.0] * windows(1000)
    events = run(probs)
    start = windows(1000) * WINDOW
    end = start + windows(1000) * WINDOW
    assert events == [Started(start - 250 * MS), Closed(start - 250 * MS, end + 250 * MS)]


def test_short_blip_is_dropped() -> None:
    probs = [0.0] * 20 + [0.9] * windows(100) + [0.0] * windows(1500)
    assert run(probs) == []


def test_a_quick_word_is_kept_at_any_alignment() -> None:
    # A quick "Yes." that Silero is sure of covers 7 or 8 windows, by where the audio
    # falls on the 32 ms grid; Together's 250 ms minimum dropped the 7-window one.
    for n in (7, 8):
        probs = [0.0] * 20 + [0.97] * n + [0.0] * windows(1500)
        events = run(probs, VadParams())
        assert [type(e) for e in events] == [Started, Closed], n


def test_pause_shorter_than_min_silence_keeps_one_segment() -> None:
    probs = [0.0] * 20 + [0.9] * 30 + [0.0] * windows(300) + [0.9] * 30 + [0.0] * 40
    assert [type(e) for e in run(probs)] == [Started, Closed]


def test_overlapping_pads_split_the_gap_at_its_midpoint() -> None:
    params = VadParams(min_silence_duration_ms=200, speech_pad_ms=250,
                       max_speech_duration_s=5.0)
    gap = windows(300)
    probs = [0.0] * 20 + [0.9] * 40 + [0.0] * gap + [0.9] * 40 + [0.0] * 60
    closed = [e for e in run(probs, params) if isinstance(e, Closed)]
    assert len(closed) == 2
    first_end = (20 + 40) * WINDOW
    assert closed[0].end == first_end + gap * WINDOW // 2
    assert closed[1].start == closed[0].end  # nothing between them is lost


def test_long_speech_splits_at_longest_internal_silence() -> None:
    # 2 s speech, 200 ms pause, 1 s speech, 400 ms pause, 2 s speech: over 5 s.
    probs = ([0.0] * 20 + [0.9] * windows(2000) + [0.0] * windows(200)
             + [0.9] * windows(1000) + [0.0] * windows(400) + [0.9] * windows(2000)
             + [0.0] * windows(1000))
    closed = [e for e in run(probs) if isinstance(e, Closed)]
    assert len(closed) == 2
    long_pause_start = (20 + windows(2000) + windows(200) + windows(1000)) * WINDOW
    long_pause_end = long_pause_start + windows(400) * WINDOW
    assert closed[0].end == (long_pause_start + long_pause_end) // 2
    assert closed[1].start == closed[0].end


def test_speech_without_pauses_is_cut_hard_without_losing_samples() -> None:
    probs = [0.0] * 20 + [0.9] * windows(12000) + [0.0] * windows(1000)
    events = run(probs)
    closed = [e for e in events if isinstance(e, Closed)]
    assert len(closed) == 3
    for a, b in itertools.pairwise(closed):
        assert a.end == b.start
        assert b.end - b.start <= 5 * RATE
    assert sum(isinstance(e, Started) for e in events) == 3


def test_flush_closes_the_open_segment_at_the_last_sample() -> None:
    probs = [0.0] * 20 + [0.9] * 40
    events = run(probs, flush=True)
    assert events[-1] == Closed(20 * WINDOW - 250 * MS, 60 * WINDOW)


def test_real_speech_separated_by_silence_segments_in_order() -> None:
    refs = reference_texts()
    gap = silence(1.5)
    pieces, bounds, pos = [silence(0.5)], [], len(silence(0.5))
    for name in FILES:
        clip = speech(name)
        bounds.append((pos, pos + len(clip)))
        pieces += [clip, gap]
        pos += len(clip) + len(gap)
    d = driver(partials=False)
    d.stream(np.concatenate(pieces))
    done = d.of("conversation.item.input_audio_transcription.completed")
    spans = [(e["audio_start_ms"] * MS, e["audio_end_ms"] * MS) for e in done]
    assert spans == sorted(spans)
    for (_a_start, a_end), (b_start, _) in itertools.pairwise(spans):
        assert a_end <= b_start + MS  # segments never overlap
    # Every segment lies within one file (plus pad): none bridges a 1.5 s gap.
    per_file: list[list[str]] = [[] for _ in FILES]
    for (start, end), event in zip(spans, done, strict=True):
        owner = [i for i, (lo, hi) in enumerate(bounds)
                 if start < hi + 300 * MS and end > lo - 300 * MS]
        assert len(owner) == 1, (start, end)
        per_file[owner[0]].append(event["transcript"])
    for name, texts in zip(FILES, per_file, strict=True):
        assert texts, f"no segment for {name}"
        assert coverage(refs[name], " ".join(texts)) >= 0.8, (name, texts)
    # The short files are one segment each.
    assert [len(t) for t in per_file[1:]] == [1, 1, 1]
    # Memory stays bounded: only audio that can still join a segment is kept.
    assert d.session.buffered_samples < 2 * RATE


def test_a_loud_non_speech_sound_does_not_hide_the_speech_after_it() -> None:
    """30 s of a full-scale square wave used to leave Silero's state where the next
    seconds of speech scored ~0.01: the state is reset after 2 s of non-speech."""
    t = np.arange(30 * RATE) / RATE
    square = (np.sign(np.sin(2 * np.pi * 50 * t)) * 32767).astype(np.int16)
    d = driver(partials=False)
    d.stream(np.concatenate([square, silence(0.5), speech("jfk-44k1-stereo.wav"),
                             silence(1.5)]))
    text = " ".join(d.transcripts())
    assert coverage(reference_texts()["jfk-44k1-stereo.wav"], text) >= 0.8, text


def test_speech_without_pauses_is_cut_at_the_deepest_dip() -> None:
    # 8 s of speech whose probability dips for two windows at 4.0 s and, less, at
    # 3.0 s (word boundaries); max_speech 5 s: the cut falls between the two dipping
    # windows at 4.0 s, and the next segment continues the turn from that sample.
    onset = 20
    probs = [0.0] * onset + [0.95] * windows(8000) + [0.0] * windows(1000)
    dip = onset + windows(4000)
    probs[dip - 1] = probs[dip] = 0.5
    probs[onset + windows(3000)] = 0.6
    events = run(probs)
    closed = [e for e in events if isinstance(e, Closed)]
    assert len(closed) == 2
    assert closed[0].end == dip * WINDOW
    assert closed[0].split and not closed[1].split
    assert closed[1].start == closed[0].end


def test_a_short_rest_after_a_cut_is_kept() -> None:
    # max_speech (5 s less a window and two pads: 140 windows) is reached in speech
    # that ends 4 windows later; the deepest dip is 3 windows before the limit. The
    # rest (6 or 7 windows, ~200 ms) is shorter than min_speech, but its words were heard.
    onset = 20
    limit = (5 * RATE - WINDOW - 2 * 250 * MS) // WINDOW + 1
    probs = [0.0] * onset + [0.95] * (limit + 4) + [0.0] * windows(1500)
    probs[onset + limit - 3] = 0.35
    closed = [e for e in run(probs) if isinstance(e, Closed)]
    assert len(closed) == 2
    assert closed[0].split
    dip = onset + limit - 3
    assert closed[0].end in (dip * WINDOW, (dip + 1) * WINDOW)  # either side of it
    assert closed[1].start == closed[0].end
    assert closed[1].end >= (onset + limit + 4) * WINDOW


def test_a_pause_split_continues_the_turn_only_if_speech_goes_on() -> None:
    # Long speech with a 200 ms pause: split there, the rest continues the turn.
    probs = ([0.0] * 20 + [0.9] * windows(2500) + [0.0] * windows(200)
             + [0.9] * windows(3000) + [0.0] * windows(1000))
    closed = [e for e in run(probs) if isinstance(e, Closed)]
    assert [c.split for c in closed] == [True, False]

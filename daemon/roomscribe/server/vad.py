"""Streaming Silero VAD: speech probabilities per 512-sample window, then segments.

`SileroStream` runs faster-whisper's bundled Silero v6 ONNX model incrementally: the
LSTM state (h, c) and the 64-sample context carry over between calls, so feeding audio
in pieces gives exactly the probabilities of one pass over the whole file.

`Segmenter` is the segmentation rule of faster_whisper.vad.get_speech_timestamps (the
one Together runs) turned into a state machine that sees one probability at a time:
a segment opens when a window reaches `threshold` and closes once `min_silence` of
windows below `threshold - 0.15` follow it; segments not longer than `min_speech` are
dropped; a segment longer than `max_speech` is split at its longest internal silence
(at least 98 ms), as Silero does; where it has none, it is cut at the deepest dip of
speech probability in its second half (a cut inside a word turns it into another
word; between words the probability dips, if only for a window or two). Each kept
segment is padded by `pad` on both sides, and where the pads of neighbours would
overlap the gap is split at its midpoint. All positions are absolute sample numbers
since the session's first sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from ..audio import SAMPLE_RATE_HZ

WINDOW = 512  # samples per Silero window at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous window the v6 model sees
MIN_SPLIT_SILENCE = SAMPLE_RATE_HZ * 98 // 1000  # silero's shortest silence to split at
# A segment's close is guessed (and its final decoded early) after two windows of
# silence, not after its whole trailing pad: the final of a 15 s turn takes ~450 ms
# to decode here (~2 s at a Pi's pace), so starting at the pad (250 ms) answered
# ~700 ms after the speech ended, where min_silence alone would allow ~550 ms.
GUESS_AFTER = 2 * WINDOW


# name -> (type, low, high); the same bounds as config.RANGES for uplink.vad.
VAD_FIELDS: dict[str, tuple[type, float, float]] = {
    "threshold": (float, 0.0, 1.0),
    "min_silence_duration_ms": (int, 0, 60000),
    "min_speech_duration_ms": (int, 0, 60000),
    "max_speech_duration_s": (float, 0.5, 600.0),
    "speech_pad_ms": (int, 0, 5000),
}
# OpenAI's names for the same knobs.
VAD_ALIASES = {"silence_duration_ms": "min_silence_duration_ms",
               "prefix_padding_ms": "speech_pad_ms"}


@dataclass(frozen=True)
class VadParams:
    """Together's turn_detection fields, with Together's defaults but two.

    Segments are split at 15 s, not 5 s. On ten minutes of continuous reading
    (bench/real_speech.py) 5 s splits cost 4.1 WER points against the same model on
    whole files; at 15 s, with the turn's text as context, streamed is as good as whole
    files, and a final still fits the 20 s decode window (see docs/architecture.md,
    "Turn length").

    Segments down to 150 ms are kept, not 250 ms: a quick "Yes." is 7 or 8 of Silero's
    32 ms windows (224-256 ms), so at 250 ms it was dropped at 9 of 16 alignments of the
    audio to the windows. 150 ms changed no text over the corpus's 21 min of speech and
    no invented word over its 39 min of non-speech (11 more segments there, over
    music, none with words)."""

    threshold: float = 0.3
    min_silence_duration_ms: int = 500
    min_speech_duration_ms: int = 150
    max_speech_duration_s: float = 15.0
    speech_pad_ms: int = 250

    def updated(self, values: dict[str, Any]) -> VadParams:
        """A copy with `values` applied; ValueError names the bad field."""
        changes: dict[str, Any] = {}
        for key, raw in values.items():
            name = VAD_ALIASES.get(key, key)
            if name not in VAD_FIELDS:
                continue  # "type", "create_response", ... are not ours to check
            kind, low, high = VAD_FIELDS[name]
            value = coerce_number(raw, kind)
            if value is None or not low <= value <= high:
                raise ValueError(f"{key} must be a number in [{low:g}, {high:g}], not {raw!r}")
            changes[name] = value
        return replace(self, **changes)

    def as_json(self) -> dict[str, Any]:
        return {"type": "server_vad", "threshold": self.threshold,
                "min_silence_duration_ms": self.min_silence_duration_ms,
                "min_speech_duration_ms": self.min_speech_duration_ms,
                "max_speech_duration_s": self.max_speech_duration_s,
                "speech_pad_ms": self.speech_pad_ms}


def coerce_number(raw: Any, kind: type) -> float | int | None:
    """A JSON number or a query-string number as `kind`, or None if it is not one."""
    if isinstance(raw, bool):
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value):
        return None
    if kind is int:
        return int(value) if value == int(value) else None
    return value


class SileroStream:
    """Speech probability of each full 512-sample window, state kept across calls."""

    def __init__(self) -> None:
        from faster_whisper.vad import get_vad_model

        # One ONNX session for the process (lru_cache); run() is thread-safe.
        self._session = get_vad_model().session
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)

    def probabilities(self, windows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """`windows` has shape (n, 512), float in [-1, 1]; returns n probabilities."""
        if len(windows) == 0:
            return np.zeros(0, dtype=np.float32)
        contexts = np.concatenate([self._context[None, :], windows[:-1, -CONTEXT:]])
        batch = np.concatenate([contexts, windows], axis=1)
        out, self._h, self._c = self._session.run(
            None, {"input": batch, "h": self._h, "c": self._c})
        self._context = windows[-1, -CONTEXT:].copy()
        return np.asarray(out, dtype=np.float32).reshape(-1)


@dataclass(frozen=True)
class Started:
    """A segment is confirmed (longer than min_speech); `start` is padded."""

    start: int


@dataclass(frozen=True)
class Closed:
    """A segment is final: audio [start, end) is its padded extent. `split`: closed by
    `max_speech` while speech went on; the next segment continues the same turn."""

    start: int
    end: int
    split: bool = False


VadEvent = Started | Closed


@dataclass
class _Open:
    start: int  # raw speech onset
    silences: list[tuple[int, int]] = field(default_factory=list)  # finished, >= 98 ms
    confirmed: bool = False
    # One probability per window since `start`, to choose a cut if the segment gets
    # too long: at most max_speech / 32 ms floats (600 s: 18 750, 150 kB as a list).
    probs: list[float] = field(default_factory=list)
    # Cut from a longer segment mid-speech: kept however short (its words were heard).
    continued: bool = False


class Segmenter:
    """Silero's segmentation as a state machine over one probability per window."""

    def __init__(self, params: VadParams, origin: int = 0, cap_samples: int | None = None):
        self.params = params
        self.position = origin  # first sample of the next window
        self.floor = origin  # no padded start may reach before this
        self._cap = cap_samples
        self._open: _Open | None = None
        self._temp_end = 0  # onset of the silence in progress inside the open segment
        self._pending: tuple[int, int] | None = None  # closed raw (start, end), pad undecided
        self._pending_started = False
        self._pending_split = False  # closed at a pause inside a turn (max_speech)

    # -- derived sample counts -------------------------------------------------
    @property
    def _pad(self) -> int:
        return SAMPLE_RATE_HZ * self.params.speech_pad_ms // 1000

    @property
    def _max_speech(self) -> int:
        p = self.params
        limit = int(SAMPLE_RATE_HZ * p.max_speech_duration_s) - WINDOW - 2 * self._pad
        if self._cap is not None:
            limit = min(limit, self._cap - 2 * self._pad)
        return max(limit, SAMPLE_RATE_HZ // 4)

    @property
    def keep_from(self) -> int:
        """The earliest sample that can still belong to a segment."""
        if self._pending is not None:
            return max(self.floor, self._pending[0] - self._pad)
        if self._open is not None:
            return max(self.floor, self._open.start - self._pad)
        return max(self.floor, self.position - self._pad)

    @property
    def in_speech(self) -> bool:
        """A confirmed segment is open and not in a pause: a partial is worth its cost
        (in a pause the final may be due within min_silence; it goes first)."""
        return self._open is not None and self._open.confirmed and not self._temp_end

    def open_start(self) -> int:
        assert self._open is not None
        return max(self.floor, self._open.start - self._pad)

    def likely_close(self) -> tuple[int, int] | None:
        """The padded [start, end) the next Closed will have if no speech comes first.

        Guessed once a confirmed segment has been followed by GUESS_AFTER of silence
        (or its whole pad, if shorter); the rest of its trailing pad is still to come,
        and is silence if the guess holds. It is a guess: speech may resume (the
        segment goes on) or begin within 2 pads of its end (the gap is split)."""
        if self._pending is not None:
            if not self._pending_started:
                return None
            start, end = self._pending
        elif self._open is not None and self._open.confirmed and self._temp_end:
            start, end = self._open.start, self._temp_end
            if self._too_short(self._open, end):
                return None  # _close() would drop it
        else:
            return None
        if self.position < end + min(self._pad, GUESS_AFTER):
            return None
        return max(self.floor, start - self._pad), end + self._pad

    # -- feeding ---------------------------------------------------------------
    def push(self, prob: float) -> list[VadEvent]:
        p = self.params
        neg = max(p.threshold - 0.15, 0.01)
        pos = self.position
        self.position += WINDOW
        events: list[VadEvent] = []
        if self._pending is not None and self._pending_ready(pos):
            events += self._finish_pending(next_start=None)
        seg = self._open
        if seg is None:
            if prob >= p.threshold:
                events += self._finish_pending(next_start=pos)
                self._open = _Open(start=pos, probs=[prob])
                self._temp_end = 0
                events += self._confirm_if_long()
            return events
        seg.probs.append(prob)
        if prob >= p.threshold and self._temp_end:
            if pos - self._temp_end >= MIN_SPLIT_SILENCE:
                seg.silences.append((self._temp_end, pos))
            self._temp_end = 0
        if pos + WINDOW - seg.start > self._max_speech:
            return events + self._split(pos)
        if prob < neg:
            if not self._temp_end:
                self._temp_end = pos
            if pos + WINDOW - self._temp_end >= int(
                    SAMPLE_RATE_HZ * p.min_silence_duration_ms / 1000):
                events += self._close(self._temp_end)
                if self._pending is not None and self._pending_ready(self.position):
                    events += self._finish_pending(next_start=None)
                return events
        if not self._temp_end:
            events += self._confirm_if_long()
        return events

    def flush(self, total: int) -> list[VadEvent]:
        """End of input at sample `total` (a commit): close whatever is open."""
        events: list[VadEvent] = []
        if self._open is not None:
            end = self._temp_end or total
            events += self._close(end)
        if self._pending is not None:
            start, end = self._pending
            events += self._emit(start, min(total, end + self._pad))
        self.floor = max(self.floor, total)
        self._temp_end = 0
        return events

    def drop(self, total: int) -> None:
        """Forget the open and pending segments (input_audio_buffer.clear)."""
        self._open = None
        self._pending = None
        self._pending_started = False
        self._temp_end = 0
        self.floor = max(self.floor, total)

    # -- internals ---------------------------------------------------------------
    def _confirm_if_long(self) -> list[VadEvent]:
        seg = self._open
        min_speech = SAMPLE_RATE_HZ * self.params.min_speech_duration_ms / 1000
        if seg is None or seg.confirmed or self.position - seg.start <= min_speech:
            return []
        if self._pending is not None:
            return []  # its start pad waits for the pending segment's end
        seg.confirmed = True
        return [Started(max(self.floor, seg.start - self._pad))]

    def _close(self, end: int) -> list[VadEvent]:
        seg = self._open
        assert seg is not None
        self._open = None
        self._temp_end = 0
        if self._too_short(seg, end):
            return []
        self._pending = (seg.start, end)
        self._pending_started = seg.confirmed
        return []

    def _too_short(self, seg: _Open, end: int) -> bool:
        min_speech = SAMPLE_RATE_HZ * self.params.min_speech_duration_ms / 1000
        return end - seg.start <= min_speech and not seg.continued

    def _pending_ready(self, pos: int) -> bool:
        # The next onset can no longer be within 2 pads of this end: pad it fully.
        assert self._pending is not None
        return pos >= self._pending[1] + 2 * self._pad

    def _finish_pending(self, next_start: int | None) -> list[VadEvent]:
        if self._pending is None:
            return []
        start, end = self._pending
        pad_end = end + self._pad
        if next_start is not None and next_start - end < 2 * self._pad:
            pad_end = end + (next_start - end) // 2
        # A split at a pause still counts as one turn if speech came back in time.
        min_silence = SAMPLE_RATE_HZ * self.params.min_silence_duration_ms // 1000
        split = (self._pending_split and next_start is not None
                 and next_start - end < min_silence)
        return self._emit(start, pad_end, split)

    def _emit(self, start: int, end: int, split: bool = False) -> list[VadEvent]:
        padded_start = max(self.floor, start - self._pad)
        events: list[VadEvent] = []
        if not self._pending_started:
            events.append(Started(padded_start))
        events.append(Closed(padded_start, end, split))
        self._pending = None
        self._pending_started = False
        self._pending_split = False
        self.floor = end
        if self._open is not None and not self._open.confirmed:
            events += self._confirm_if_long()
        return events

    def _split(self, pos: int) -> list[VadEvent]:
        """max_speech reached at window `pos`: split at the longest silence, or at the
        deepest dip of probability."""
        seg = self._open
        assert seg is not None
        candidates = list(seg.silences)
        if self._temp_end and pos - self._temp_end >= MIN_SPLIT_SILENCE:
            candidates.append((self._temp_end, pos))
        if not candidates:
            # No pause: cut between the two windows where speech is least likely; the
            # next segment starts at the same sample and goes on from there.
            first = self._dip(seg.probs)
            cut = seg.start + first * WINDOW
            self._pending_started = seg.confirmed
            self._open = None  # so that _emit does not try to confirm the old one
            events = self._emit(seg.start, cut, split=True)
            self._open = _Open(start=cut, probs=seg.probs[first:], continued=True)
            self._temp_end = 0
            return events + self._confirm_if_long()
        sil_start, sil_end = max(candidates, key=lambda s: (s[1] - s[0], s[0]))
        self._pending, self._pending_started = (seg.start, sil_start), seg.confirmed
        self._pending_split = True
        if sil_end >= pos:  # the pause is still going on: no speech after it yet
            self._open = None
            self._temp_end = 0
            return []
        rest = _Open(start=sil_end, silences=[s for s in seg.silences if s[0] > sil_end],
                     probs=seg.probs[(sil_end - seg.start) // WINDOW:], continued=True)
        self._open = rest
        return self._finish_pending(next_start=sil_end)

    @staticmethod
    def _dip(probs: list[float]) -> int:
        """The window index to cut before: the boundary in the second half whose two
        neighbouring windows have the lowest probability (the later one on a tie, so
        that the segment stays long)."""
        first = max(1, len(probs) // 2)
        return min(range(first, len(probs)),
                   key=lambda i: (probs[i - 1] + probs[i], -i), default=len(probs) - 1)


class StreamingVad:
    """Silero probabilities and segmentation for audio arriving in pieces of any size.

    The model's LSTM state is reset after RESET_AFTER_QUIET_S of non-speech and on
    `reset()` (a commit): a long loud non-speech sound (30 s of a full-scale square
    wave) otherwise leaves the state where the next seconds of speech score ~0.01."""

    RESET_AFTER_QUIET_S = 2.0

    def __init__(self, params: VadParams, origin: int = 0, cap_samples: int | None = None):
        self.segmenter = Segmenter(params, origin, cap_samples)
        self._silero = SileroStream()
        # Fewer than 512 samples waiting for the rest of their window.
        self._tail = np.zeros(0, dtype=np.float32)
        self._quiet = 0  # windows in a row below the segmenter's non-speech level

    def reset(self) -> None:
        self._silero.reset()
        self._quiet = 0

    def feed(self, pcm: npt.NDArray[np.int16]) -> list[VadEvent]:
        audio = np.concatenate([self._tail, pcm.astype(np.float32) / 32768.0])
        full = len(audio) // WINDOW * WINDOW
        self._tail = audio[full:]
        events: list[VadEvent] = []
        for prob in self._probabilities(audio[:full].reshape(-1, WINDOW)):
            events += self.segmenter.push(float(prob))
        return events

    def _probabilities(self, windows: npt.NDArray[np.float32]) -> list[float]:
        reset_after = int(self.RESET_AFTER_QUIET_S * SAMPLE_RATE_HZ) // WINDOW
        quiet_below = max(self.segmenter.params.threshold - 0.15, 0.01)
        out: list[float] = []
        while len(windows):
            probs = self._silero.probabilities(windows)
            for i, prob in enumerate(probs):
                out.append(float(prob))
                self._quiet = self._quiet + 1 if prob < quiet_below else 0
                if self._quiet >= reset_after:
                    self.reset()  # the windows after this one need the fresh state
                    windows = windows[i + 1:]
                    break
            else:
                break
        return out

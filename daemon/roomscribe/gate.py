"""The voice gate: decides which captured audio is worth streaming upstream, no I/O.

An always-on mic hears mostly silence, and the realtime API bills for every second it
is sent. The gate sits between convert and uplink. It reads 16 kHz mono int16 audio in
fixed windows, asks a detector "speech or not" per window, and emits events in the
ring's numbering (absolute sample numbers since capture start):

- `Open(from_sample)`: speech began; send from `from_sample` (the pre-roll included),
- `Close(to_sample)`: speech ended a hangover ago; send up to `to_sample` (exclusive),
  then commit,
- `IdleTimeout(at_sample)`: nothing sent for idle_disconnect_s; the socket may close.
  The next Open reconnects and the waiting audio comes from the ring, so nothing is cut.

Sent ranges never overlap: a pre-roll never reaches back before the previous Close.
Detection runs on whole windows counted from the first sample fed, so the events do
not depend on how the audio is cut into blocks.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from .audio import SAMPLE_RATE_HZ
from .config import GateSettings

log = logging.getLogger("roomscribe.gate")

Windows = npt.NDArray[np.int16]  # shape (n, window_samples)
Decisions = npt.NDArray[np.bool_]  # shape (n,)


@dataclass(frozen=True, slots=True)
class Open:
    from_sample: int  # first sample to send (pre-roll included)


@dataclass(frozen=True, slots=True)
class Close:
    to_sample: int  # last sample to send + 1 (hangover included); then commit


@dataclass(frozen=True, slots=True)
class IdleTimeout:
    at_sample: int  # idle_disconnect_s after the last sent sample


GateEvent = Open | Close | IdleTimeout


class DetectorUnavailable(Exception):
    """An optional detector's package or model is missing: one line, says what to install."""


class Detector(Protocol):
    name: str
    window_samples: int

    def classify(self, windows: Windows) -> Decisions:
        """Speech or not for consecutive windows; state carries over between calls."""
        ...

    def reset(self) -> None: ...


class EnergyDetector:
    """Band energy (300-4000 Hz) against an adaptive noise floor. Pure numpy, any Pi.

    The band drops most fan rumble and mains hum. The floor falls at once to a quieter
    window and climbs at most `rise_db_per_s`, so a steady new background (a fan
    switched on) is learnt in seconds while speech, which keeps dipping between words,
    does not drag the floor up.
    """

    name = "energy"
    window_samples = 512  # 32 ms
    _BAND = (10, 129)  # rfft bins of 31.25 Hz: 312-4000 Hz

    def __init__(self, snr_db: float = 4.0, min_dbfs: float = -70.0,
                 rise_db_per_s: float = 3.0) -> None:
        self.snr_db = snr_db
        self.min_dbfs = min_dbfs
        self._rise_db = rise_db_per_s * self.window_samples / SAMPLE_RATE_HZ
        self.floor_dbfs: float | None = None

    def reset(self) -> None:
        self.floor_dbfs = None

    def levels_dbfs(self, windows: Windows) -> npt.NDArray[np.float64]:
        spectrum = np.fft.rfft(windows.astype(np.float32), axis=1)
        lo, hi = self._BAND
        band = np.abs(spectrum[:, lo:hi]) ** 2
        # Parseval: mean square of the band-limited signal, relative to full scale.
        mean_square = band.sum(axis=1) * 2.0 / (self.window_samples**2 * 32768.0**2)
        levels: npt.NDArray[np.float64] = 10.0 * np.log10(mean_square + 1e-12)
        return levels

    def classify(self, windows: Windows) -> Decisions:
        out = np.zeros(len(windows), dtype=np.bool_)
        floor = self.floor_dbfs
        for i, level in enumerate(self.levels_dbfs(windows).tolist()):
            if floor is None:
                floor = level
            out[i] = level >= max(floor + self.snr_db, self.min_dbfs)
            floor = level if level < floor else min(level, floor + self._rise_db)
        self.floor_dbfs = floor
        return out


class WebrtcDetector:
    """Google's WebRTC GMM VAD (package webrtcvad-wheels, not a default dependency)."""

    name = "webrtc"
    window_samples = 480  # 30 ms, one of the frame sizes it accepts

    def __init__(self, aggressiveness: int = 3) -> None:
        try:
            import webrtcvad  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise DetectorUnavailable(
                "gate.mode = 'webrtc' needs the package webrtcvad-wheels "
                "(pip install webrtcvad-wheels)") from None
        self._vad: Any = webrtcvad.Vad(aggressiveness)

    def reset(self) -> None:
        pass  # the VAD adapts per frame; nothing worth clearing

    def classify(self, windows: Windows) -> Decisions:
        return np.array([self._vad.is_speech(w.astype("<i2").tobytes(), SAMPLE_RATE_HZ)
                         for w in windows], dtype=np.bool_)


def silero_model_path() -> Path:
    """faster-whisper's bundled Silero VAD v6, found without importing faster-whisper."""
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise DetectorUnavailable(
            "gate.mode = 'silero' needs faster-whisper and onnxruntime "
            "(the [server] extra; not installable on 32-bit Raspberry Pi OS)")
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / "silero_vad_v6.onnx"
    if not path.is_file():
        raise DetectorUnavailable(f"gate.mode = 'silero': model file missing: {path}")
    return path


class SileroDetector:
    """Silero VAD v6 via onnxruntime: a small LSTM, far better on TV/music than energy.

    The model takes 512-sample windows each prefixed with the previous window's last
    64 samples, and carries its LSTM state (h, c) across calls. Like silero's own
    helper, a window stays speech until the probability drops 0.15 below threshold.
    """

    name = "silero"
    window_samples = 512  # 32 ms
    _CONTEXT = 64

    def __init__(self, threshold: float = 0.3) -> None:
        path = silero_model_path()
        try:
            import onnxruntime
        except ImportError:
            raise DetectorUnavailable(
                "gate.mode = 'silero' needs onnxruntime (the [server] extra; "
                "not installable on 32-bit Raspberry Pi OS)") from None
        opts = onnxruntime.SessionOptions()
        # One thread: the Pi's other cores capture, convert and talk to the network.
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        self._session: Any = onnxruntime.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(self._CONTEXT, dtype=np.float32)
        self._speaking = False

    def probabilities(self, windows: Windows) -> npt.NDArray[np.float32]:
        audio = windows.astype(np.float32) / 32768.0
        context = np.vstack([self._context[None, :], audio[:-1, -self._CONTEXT:]])
        batch = np.concatenate([context, audio], axis=1)
        probs, self._h, self._c = self._session.run(
            None, {"input": batch, "h": self._h, "c": self._c})
        self._context = audio[-1, -self._CONTEXT:].copy()
        result: npt.NDArray[np.float32] = np.asarray(probs, dtype=np.float32).reshape(-1)
        return result

    def classify(self, windows: Windows) -> Decisions:
        out = np.zeros(len(windows), dtype=np.bool_)
        if not len(windows):
            return out
        for i, p in enumerate(self.probabilities(windows).tolist()):
            limit = self.threshold - 0.15 if self._speaking else self.threshold
            self._speaking = out[i] = p >= limit
        return out


def make_detector(settings: GateSettings) -> Detector | None:
    """The configured detector (None for mode off); energy if an optional one is missing."""
    try:
        if settings.mode == "off":
            return None
        if settings.mode == "webrtc":
            return WebrtcDetector(settings.webrtc_aggressiveness)
        if settings.mode == "silero":
            return SileroDetector(settings.silero_threshold)
    except DetectorUnavailable as exc:
        log.error("%s; using gate.mode = 'energy' instead", exc)
    return EnergyDetector(settings.energy_snr_db, settings.energy_min_dbfs,
                          settings.energy_floor_rise_db_per_s)


class Gate:
    """Speech gate state machine: PCM in (absolute sample numbers), GateEvents out.

    Memory: less than one detector window (512 samples, 1 KB) of PCM, 2 x
    min_speech_ms of window decisions and REACH_BACK_S of speech-window numbers.
    """

    REACH_BACK_S = 2.0

    def __init__(self, settings: GateSettings, detector: Detector | None = None) -> None:
        self.settings = settings
        self.detector = make_detector(settings) if detector is None else detector
        window = self.detector.window_samples if self.detector else 512
        self._window = window
        self._preroll = settings.preroll_ms * SAMPLE_RATE_HZ // 1000
        self._hangover = settings.hangover_ms * SAMPLE_RATE_HZ // 1000
        self._idle = round(settings.idle_disconnect_s * SAMPLE_RATE_HZ)
        # Opening needs min_speech_ms of speech windows within twice that span, so
        # speech's short gaps don't reset the count but one knock can't reach it.
        self._min_windows = max(1, math.ceil(settings.min_speech_ms * SAMPLE_RATE_HZ
                                             / 1000 / window))
        self._recent: deque[int | None] = deque(maxlen=2 * self._min_windows)
        # Speech windows seen while closed, for reaching the onset back at most
        # REACH_BACK_S before the triggering span.
        self._reach = round(self.REACH_BACK_S * SAMPLE_RATE_HZ)
        self._history: deque[int] = deque(maxlen=math.ceil(self._reach / window))
        self.is_open = False
        self._next: int | None = None
        self.reset()

    @property
    def lookback_samples(self) -> int:
        """How far before the newest fed sample an Open's from_sample can reach.

        While the gate is closed the ring must keep at least this much (defaults:
        0.5 s pre-roll + 2 s reach-back + 0.51 s triggering span + 2 windows = 3.08 s,
        98.4 KB); anything older may be released.
        """
        return (self._preroll + self._reach + (self._recent.maxlen or 0) * self._window
                + 2 * self._window)

    def reset(self) -> list[GateEvent]:
        """Forget everything (after mute or a gap); a Close if the gate was open."""
        events: list[GateEvent] = []
        if self.is_open and self._next is not None:
            events.append(Close(self._next))
        self.is_open = False
        self._next = None  # next sample expected; None until the first feed
        self._pending = np.zeros(0, dtype=np.int16)  # < one window, starts at _win_start
        self._win_start = 0
        self._recent.clear()
        self._recent_count = 0
        self._history.clear()
        self._sent_to = 0  # the previous Close: a pre-roll never reaches before it
        self._last_speech_end = 0
        self._idle_fired = False
        if self.detector is not None:
            self.detector.reset()
        return events

    @property
    def idle(self) -> bool:
        """True once IdleTimeout fired and no speech has opened the gate since."""
        return self._idle_fired and not self.is_open

    def feed(self, pcm: bytes, first_sample: int) -> list[GateEvent]:
        if len(pcm) % 2:
            raise ValueError(f"gate: {len(pcm)} bytes is not whole 16-bit samples")
        events: list[GateEvent] = []
        if self._next is not None and first_sample != self._next:
            events += self.reset()  # audio was dropped or repeated: start over
        if self._next is None:
            self._next = self._win_start = self._sent_to = first_sample
            if self.detector is None:
                self.is_open = True
                events.append(Open(first_sample))
        samples = np.frombuffer(pcm, dtype="<i2")
        self._next += len(samples)
        if self.detector is None or not len(samples):
            return events
        buf = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        n = len(buf) // self._window
        if n:
            decisions = self.detector.classify(buf[:n * self._window].reshape(n, self._window))
            for speech in decisions.tolist():
                events += self._step(self._win_start, speech)
                self._win_start += self._window
        self._pending = buf[n * self._window:].copy()
        return events

    def _open(self, end: int) -> Open:
        # The onset is the first speech window of the triggering span, reached back
        # across earlier speech no more than a pre-roll apart, so a short first word
        # ("Eight. The press yard.") that alone could not open the gate is still sent.
        onset = next(s for s in self._recent if s is not None)
        limit = end - (self._recent.maxlen or 0) * self._window - self._reach
        for s in reversed(self._history):
            if s >= onset:
                continue
            if s < limit or onset - (s + self._window) > self._preroll:
                break
            onset = s
        self._recent.clear()
        self._recent_count = 0
        self._history.clear()
        self.is_open = True
        self._last_speech_end = end
        return Open(max(onset - self._preroll, self._sent_to))

    def _step(self, start: int, speech: bool) -> list[GateEvent]:
        end = start + self._window
        if self.is_open:
            if speech:
                self._last_speech_end = end
            elif end - self._last_speech_end >= self._hangover:
                self.is_open = False
                self._sent_to = self._last_speech_end + self._hangover
                self._idle_fired = False
                return [Close(self._sent_to)]
            return []
        if len(self._recent) == self._recent.maxlen and self._recent[0] is not None:
            self._recent_count -= 1
        self._recent.append(start if speech else None)
        self._recent_count += speech
        if speech:
            self._history.append(start)
        if self._recent_count >= self._min_windows:
            return [self._open(end)]
        if not self._idle_fired and end - self._sent_to >= self._idle:
            self._idle_fired = True
            return [IdleTimeout(end)]
        return []

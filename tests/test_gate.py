"""The voice gate on real speech: what it opens on, what it sends, when it lets go."""

from __future__ import annotations

import importlib.util
import logging
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import soxr

from conftest import AUDIO_DIR, NO_SERVER_EXTRA, reference_texts
from roomscribe.config import ConfigError, GateSettings, parse
from roomscribe.gate import (
    Close,
    DetectorUnavailable,
    EnergyDetector,
    Gate,
    GateEvent,
    IdleTimeout,
    Open,
    SileroDetector,
    WebrtcDetector,
    make_detector,
)

SR = 16_000
CLIPS = sorted(reference_texts())
HAVE_SILERO = importlib.util.find_spec("onnxruntime") is not None and \
    importlib.util.find_spec("faster_whisper") is not None
MODES = ["energy", pytest.param("silero", marks=pytest.mark.skipif(
    not HAVE_SILERO, reason=NO_SERVER_EXTRA))]


def clip16k(name: str) -> np.ndarray:
    """A real recording as the convert stage would hand it over, peak frame at -20 dBFS."""
    with wave.open(str(AUDIO_DIR / name)) as w:
        raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        x = raw.reshape(-1, w.getnchannels()).mean(axis=1) / 32768
        x = soxr.resample(x, w.getframerate(), SR)
    frames = x[: len(x) // 160 * 160].reshape(-1, 160)
    peak = np.sqrt((frames**2).mean(axis=1).max())
    return np.asarray(x * 10 ** (-20 / 20) / peak)


def speech_span(x: np.ndarray, below_peak_db: float = 22.0) -> tuple[int, int]:
    """First and last+1 sample of 10 ms frames within below_peak_db of the loudest.

    22 dB finds the words; 40 dB also finds what the recordings carry around them
    (JFK's crowd, AMI's far talker), still well above the -66 dBFS room noise added.
    """
    frames = x[: len(x) // 160 * 160].reshape(-1, 160)
    db = 10 * np.log10((frames**2).mean(axis=1) + 1e-12)
    loud = np.flatnonzero(db >= db.max() - below_peak_db)
    return int(loud[0]) * 160, int(loud[-1] + 1) * 160


def noise(seconds: float, seed: int = 0, dbfs: float = -66.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.asarray(rng.standard_normal(int(seconds * SR)) * 10 ** (dbfs / 20))


def pcm(x: np.ndarray) -> bytes:
    return bytes(np.clip(x * 32768, -32768, 32767).astype("<i2").tobytes())


def run(gate: Gate, data: bytes, block: int = 4096, first: int = 0) -> list[GateEvent]:
    events: list[GateEvent] = []
    for i in range(0, len(data), 2 * block):
        events += gate.feed(data[i:i + 2 * block], first + i // 2)
    return events


def settings(mode: str = "energy", **kw: float) -> GateSettings:
    return GateSettings(mode=mode, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", CLIPS)
def test_speech_after_long_silence_opens_with_preroll(mode: str, name: str) -> None:
    speech = clip16k(name)
    lead = noise(20.0)
    audio = np.concatenate([lead, speech + noise(len(speech) / SR, 1), noise(3.0, 2)])
    gate = Gate(settings(mode))
    data, events, fed = pcm(audio), [], 123_456  # the ring's numbering, not zero-based
    for i in range(0, len(data), 8192):
        new = gate.feed(data[i:i + 8192], fed)
        fed += len(data[i:i + 8192]) // 2
        # The ring must still hold an Open's start: it keeps lookback_samples.
        assert all(e.from_sample >= fed - gate.lookback_samples
                   for e in new if isinstance(e, Open))
        events += new
    opens = [e for e in events if isinstance(e, Open)]
    assert opens, f"{name}: the gate never opened"
    first_word = 123_456 + len(lead) + speech_span(speech)[0]
    first_sound = 123_456 + len(lead) + speech_span(speech, 40.0)[0]
    window = gate.detector.window_samples if gate.detector else 0
    preroll = gate.settings.preroll_ms * SR // 1000
    assert first_sound - preroll - window <= opens[0].from_sample <= first_word
    assert not any(isinstance(e, IdleTimeout) for e in events), "idle is 30 s by default"


@pytest.mark.parametrize("mode", MODES)
def test_click_length_bursts_do_not_open(mode: str) -> None:
    rng = np.random.default_rng(5)
    parts = [noise(20.0)]
    for seed in range(3):  # three loud 100 ms bursts (a knock, a click), 2 s apart
        parts += [rng.standard_normal(int(0.10 * SR)) * 0.3, noise(2.0, seed + 10)]
    events = run(Gate(settings(mode)), pcm(np.concatenate(parts)))
    assert not [e for e in events if isinstance(e, Open)]


def test_a_quick_word_alone_in_a_noisy_room_opens() -> None:
    # The first 200 ms of "Eight." (a quick "Yes." is as long) over a -45 dBFS floor,
    # at every offset against the 32 ms windows: its energy stands out for 6 windows.
    word = clip16k("lj002-0035-22k05.wav")[: int(0.2 * SR)]
    for offset in range(0, 512, 64):
        x = np.concatenate([noise(10.0 + offset / SR, dbfs=-45.0), word,
                            noise(3.0, seed=1, dbfs=-45.0)])
        opens = [e for e in run(Gate(settings()), pcm(x)) if isinstance(e, Open)]
        assert len(opens) == 1 and opens[0].from_sample < 10 * SR + offset, offset


def test_a_fan_switched_on_is_learnt_and_stops_holding_the_gate_open() -> None:
    rng = np.random.default_rng(7)
    rumble = np.cumsum(rng.standard_normal(60 * SR))
    rumble -= np.convolve(rumble, np.ones(801) / 801, mode="same")  # no DC drift
    fan = rumble / rumble.std() * 10 ** (-40 / 20) + noise(60.0, 8, -50.0)  # +16..26 dB
    events = run(Gate(settings()), pcm(np.concatenate([noise(10.0), fan])))
    assert not events or isinstance(events[-1], (Close, IdleTimeout))
    closes = [e for e in events if isinstance(e, Close)]
    assert all(c.to_sample < 30 * SR for c in closes), "took over 20 s to learn the fan"


def test_closes_after_speech_and_hangover() -> None:
    speech = clip16k("lj002-0020-22k05.wav")
    audio = np.concatenate([noise(5.0), speech + noise(len(speech) / SR, 1), noise(5.0, 2)])
    gate = Gate(settings(hangover_ms=800))
    events = run(gate, pcm(audio))
    assert [type(e) for e in events] == [Open, Close]
    close = events[1]
    assert isinstance(close, Close)
    speech_end = 5 * SR + speech_span(speech)[1]
    hangover = 800 * SR // 1000
    # The last speech window ends within one window of the true end of speech.
    assert speech_end + hangover - 512 <= close.to_sample <= speech_end + hangover + 512


def test_idle_timeout_after_no_speech_and_reconnect_on_speech() -> None:
    speech = clip16k("lj002-0035-22k05.wav")
    audio = np.concatenate([noise(12.0), speech + noise(len(speech) / SR, 1), noise(12.0, 2)])
    gate = Gate(settings(idle_disconnect_s=5.0, hangover_ms=500))
    events = run(gate, pcm(audio[: 12 * SR]))
    assert [type(e) for e in events] == [IdleTimeout]
    first = events[0]
    assert isinstance(first, IdleTimeout)
    assert 5 * SR <= first.at_sample <= 5 * SR + 512
    assert gate.idle
    rest = run(gate, pcm(audio[12 * SR:]), first=12 * SR)
    assert [type(e) for e in rest] == [Open, Close, IdleTimeout]
    close, idle = rest[1], rest[2]
    assert isinstance(close, Close) and isinstance(idle, IdleTimeout)
    assert close.to_sample + 5 * SR <= idle.at_sample <= close.to_sample + 5 * SR + 512
    assert gate.idle


def test_events_do_not_depend_on_block_size() -> None:
    speech = clip16k("jfk-44k1-stereo.wav")
    data = pcm(np.concatenate([noise(6.0), speech + noise(len(speech) / SR, 1), noise(4.0, 2)]))
    reference = run(Gate(settings()), data, block=len(data))
    assert [type(e) for e in reference][:2] == [Open, Close]
    for block in (4096, 1000, 333, 1):
        if block == 1:  # one sample at a time over the first 2 s, then large blocks
            gate = Gate(settings())
            events = run(gate, data[: 2 * 2 * SR], block=1)
            events += run(gate, data[2 * 2 * SR:], block=8000, first=2 * SR)
        else:
            events = run(Gate(settings()), data, block=block)
        assert events == reference, f"block of {block} samples"


def test_gap_in_numbering_closes_and_starts_over() -> None:
    speech = clip16k("lj002-0020-22k05.wav")
    gate = Gate(settings())
    events = run(gate, pcm(np.concatenate([noise(3.0), speech])))
    assert [type(e) for e in events] == [Open] and gate.is_open
    resumed = 3 * SR + len(speech) + 10 * SR  # e.g. after a privacy mute
    assert gate.feed(pcm(noise(1.0)), resumed) == [Close(3 * SR + len(speech))]
    assert not gate.is_open
    assert gate.reset() == []


def test_mode_off_sends_everything() -> None:
    gate = Gate(settings("off"))
    assert gate.detector is None
    events = run(gate, pcm(noise(40.0)), first=1000)
    assert events == [Open(1000)]


def test_missing_optional_detectors_fall_back_to_energy(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "webrtcvad", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(DetectorUnavailable, match="webrtcvad-wheels"):
        WebrtcDetector()
    if HAVE_SILERO:
        with pytest.raises(DetectorUnavailable, match="onnxruntime"):
            SileroDetector()
    for mode in ("webrtc", "silero"):
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="roomscribe.gate"):
            detector = make_detector(settings(mode))
        assert isinstance(detector, EnergyDetector)
        [record] = caplog.records
        message = record.getMessage()
        assert "\n" not in message and f"gate.mode = '{mode}'" in message
        assert "'energy' instead" in message


def test_gate_settings_from_toml(tmp_path: Path) -> None:
    s = parse("[gate]\nmode = 'silero'\npreroll_ms = 300\nidle_disconnect_s = 60\n")
    assert (s.gate.mode, s.gate.preroll_ms, s.gate.idle_disconnect_s) == ("silero", 300, 60.0)
    with pytest.raises(ConfigError, match=r"gate\.silero_threshold"):
        parse("[gate]\nsilero_threshold = 2\n", "room.toml")
    with pytest.raises(ConfigError, match=r"gate\.mode"):
        parse("[gate]\nmode = 'loud'\n")

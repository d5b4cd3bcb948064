"""The convert stage: pitch, level, length and block-size independence of the resampler."""

from __future__ import annotations

import wave

import numpy as np
import pytest
import soxr

from conftest import AUDIO_DIR
from roomscribe.convert import Converter


def sine(freq_hz: float, rate_hz: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    return np.round(amp * 32767 * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


def as_array(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def peak_hz(x: np.ndarray, rate_hz: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate_hz / len(x))


def rms_db(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(x**2)) / 32768))


def convert_all(conv: Converter, block: np.ndarray) -> np.ndarray:
    return as_array(conv.feed(block) + conv.flush())


def test_44k1_stereo_sine_comes_out_16k_mono_at_pitch_and_level() -> None:
    tone = sine(1000, 44100, 2.0)
    stereo = np.stack([tone, tone], axis=1)
    out = convert_all(Converter(44100, 2, -1), stereo)
    assert abs(len(out) - 32000) <= 1
    middle = out[1600:-1600]  # keep the filter's ramp-in/out out of the measurement
    assert abs(peak_hz(middle) - 1000) < 3
    assert abs(rms_db(middle) - rms_db(tone.astype(np.float64))) < 0.5


def test_downmix_is_the_mean_of_the_channels() -> None:
    tone = sine(440, 16000, 0.5)
    # Opposite phase cancels in a true mean; a channel pick would keep the tone.
    stereo = np.stack([tone, -tone], axis=1)
    assert np.max(np.abs(as_array(Converter(16000, 2, -1).feed(stereo)))) <= 1
    picked = as_array(Converter(16000, 2, 1).feed(stereo))
    assert np.array_equal(picked, -tone.astype(np.float64))


def test_48k_six_channels_picks_the_asked_channel() -> None:
    freqs = [300, 500, 700, 900, 1100, 1300]
    block = np.stack([sine(f, 48000, 1.0) for f in freqs], axis=1)
    for channel in (0, 3, 5):
        out = convert_all(Converter(48000, 6, channel), block)
        assert abs(len(out) - 16000) <= 1
        assert abs(peak_hz(out[800:-800]) - freqs[channel]) < 3


@pytest.mark.parametrize("rate_hz", [8000, 22050, 44100, 48000])
def test_output_length_matches_duration(rate_hz: int) -> None:
    seconds = 3.3
    block = np.zeros((int(rate_hz * seconds), 1), dtype=np.int16)
    out = convert_all(Converter(rate_hz, 1), block)
    assert abs(len(out) - round(seconds * 16000)) <= 1


def test_odd_blocks_give_the_same_output_as_one_block() -> None:
    with wave.open(str(AUDIO_DIR / "jfk-44k1-stereo.wav")) as w:
        pcm = w.readframes(w.getnframes())
    audio = np.frombuffer(pcm, dtype="<i2").reshape(-1, 2)
    whole = convert_all(Converter(44100, 2), audio)

    conv = Converter(44100, 2)
    parts, i, sizes = [], 0, [1, 7, 333, 4097, 1024, 50]
    while i < len(audio):
        n = sizes[len(parts) % len(sizes)]
        parts.append(conv.feed(audio[i : i + n]))
        i += n
    pieces = as_array(b"".join(parts) + conv.flush())
    assert len(pieces) == len(whole)
    assert np.max(np.abs(pieces - whole)) <= 1  # float32 summation order only


def test_real_speech_matches_a_one_shot_resample() -> None:
    with wave.open(str(AUDIO_DIR / "jfk-44k1-stereo.wav")) as w:
        audio = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    out = convert_all(Converter(44100, 2), audio)
    reference = soxr.resample(audio.astype(np.float64).mean(axis=1), 44100, 16000)
    assert abs(len(out) - len(reference)) <= 1
    n = min(len(out), len(reference))
    assert np.corrcoef(out[:n], reference[:n])[0, 1] > 0.999


def test_16k_mono_is_passed_through_untouched() -> None:
    conv = Converter(16000, 1)
    assert conv.passthrough
    pcm = sine(1000, 16000, 0.1).tobytes()
    assert conv.feed_pcm(pcm) is pcm
    assert conv.flush() == b""


def test_flush_readies_the_converter_for_a_new_run() -> None:
    conv = Converter(48000, 1)
    block = sine(1000, 48000, 1.0).reshape(-1, 1)
    first = conv.feed(block) + conv.flush()
    second = conv.feed(block) + conv.flush()
    assert first == second


def test_wrong_shape_and_channel_are_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        Converter(44100, 2).feed(np.zeros((10, 3), dtype=np.int16))
    with pytest.raises(ValueError, match="channel 2"):
        Converter(44100, 2, 2)

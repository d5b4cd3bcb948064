"""The level meter: dBFS arithmetic on known signals, and `run_level` on real speech."""

from __future__ import annotations

import asyncio
import io
import math

import numpy as np
import pytest

from conftest import AUDIO_DIR
from roomscribe.config import CaptureSettings
from roomscribe.level import FLOOR_DBFS, Meter, format_level, run_level


def test_full_scale_sine_reads_minus_3_dbfs_rms_and_0_peak() -> None:
    t = np.arange(16000) / 16000
    tone = np.round(32767 * np.sin(2 * np.pi * 1000 * t)).astype("<i2")
    meter = Meter()
    meter.add(tone[:7000].tobytes())
    meter.add(tone[7000:].tobytes())  # the window spans blocks
    level = meter.take()
    assert level.rms_dbfs == pytest.approx(-3.01, abs=0.05)
    assert level.peak_dbfs == pytest.approx(0.0, abs=0.01)
    assert level.samples == 16000


def test_clipping_is_counted_and_take_starts_a_new_window() -> None:
    meter = Meter()
    meter.add(np.array([32767, -32768, 100, -32767, 0], dtype="<i2").tobytes())
    level = meter.take()
    assert level.clipped == 3
    assert "CLIP x3" in format_level(level)
    after = meter.take()
    assert after.clipped == 0 and after.samples == 0 and after.rms_dbfs == FLOOR_DBFS


def test_silence_is_the_floor_not_minus_infinity() -> None:
    meter = Meter()
    meter.add(bytes(3200))
    level = meter.take()
    assert level.rms_dbfs == FLOOR_DBFS and level.peak_dbfs == FLOOR_DBFS
    assert not math.isinf(level.rms_dbfs)


def test_a_quiet_signal_at_minus_40_dbfs() -> None:
    amplitude = 32768 * 10 ** (-40 / 20)
    square = np.where(np.arange(3200) % 2, amplitude, -amplitude).round().astype("<i2")
    meter = Meter()
    meter.add(square.tobytes())
    assert meter.take().rms_dbfs == pytest.approx(-40, abs=0.1)


def test_run_level_prints_lines_for_real_speech() -> None:
    out = io.StringIO()  # not a terminal: one reading per line
    settings = CaptureSettings(source="file", file=str(AUDIO_DIR / "ami-es2011a-16k.wav"),
                               file_realtime=False)
    asyncio.run(run_level(settings, out=out, duration_s=2.0, interval_s=0.0))
    lines = out.getvalue().splitlines()
    assert lines and all(line.startswith("rms ") for line in lines)
    rms = [float(line.split()[1]) for line in lines]
    # Speech in a meeting headset mix sits well above the floor and below full scale.
    assert -60 < max(rms) < 0

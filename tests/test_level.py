"""The level meter: dBFS arithmetic on known signals, and `run_level` on real speech."""

from __future__ import annotations

import asyncio
import io
import math
from collections.abc import AsyncGenerator

import numpy as np
import pytest

from conftest import AUDIO_DIR
from roomscribe.audio import Frame
from roomscribe.config import CaptureSettings
from roomscribe.level import FLOOR_DBFS, HUSH_S, Hush, Meter, format_level, run_level


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


def test_a_mic_another_program_holds_is_named_with_how_to_free_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`roomscribe level` reads the service's config on an installed Pi, so the program
    holding the mic is most likely the service: not "is the mic plugged in?"."""
    from roomscribe import level
    from roomscribe.capture import CaptureError, CaptureStats

    async def retrying() -> AsyncGenerator[Frame, None]:
        await asyncio.sleep(60)  # the capture stage retrying a busy device: no frame
        yield Frame(b"", 0.0)

    async def first(stats: CaptureStats) -> None:
        settings = CaptureSettings(device="plughw:CARD=Device,DEV=0")
        async for _ in level._soon(retrying(), settings, stats):
            break

    monkeypatch.setattr(level, "FIRST_AUDIO_S", 0.2)
    busy = CaptureStats()
    busy.last_error = "capture.device 'plughw:CARD=Device,DEV=0': Device or resource busy"
    with pytest.raises(CaptureError) as err:
        asyncio.run(first(busy))
    assert str(err.value) == (
        "level: capture.device 'plughw:CARD=Device,DEV=0': Device or resource busy "
        "(another program has the mic open, most likely the roomscribe service: "
        "`sudo systemctl stop roomscribe`, then try again)")
    gone = CaptureStats()
    gone.last_error = "capture.device 'plughw:CARD=Device,DEV=0': No such device"
    with pytest.raises(CaptureError) as err:
        asyncio.run(first(gone))
    assert "is the mic plugged in" in str(err.value)


def test_a_mic_that_hears_nothing_from_the_start_is_said_once_and_its_sound_too() -> None:
    zeros, second = bytes(3200), 0.1  # 100 ms frames of digital silence
    rng = np.random.default_rng(1)
    floor = (rng.normal(0, 32768 * 10 ** (-70 / 20), 1600)).round().astype("<i2").tobytes()
    speech = (rng.normal(0, 3000, 1600)).round().astype("<i2").tobytes()

    muted = Hush("capture.device 'mic'")
    said = [muted.feed(zeros, second) for _ in range(int(HUSH_S / second) + 100)]
    assert [s for s in said if s] == [
        f"capture: capture.device 'mic' has heard nothing for {HUSH_S:.0f} s (every sample "
        "under -80 dBFS): is its capture switch off or its gain at 0? (alsamixer, F4; "
        "`roomscribe level` shows what it hears)"]
    assert said.index(next(s for s in said if s)) == round(HUSH_S / second) - 1
    assert muted.feed(speech, second).startswith("capture: capture.device 'mic' hears sound")
    assert muted.heard and not any(muted.feed(zeros, second) for _ in range(1000))

    # A quiet room on a working mic (a noise floor at -70 dBFS) is sound.
    quiet = Hush("mic")
    assert not any(quiet.feed(floor, second) for _ in range(1000))
    # A mic that gates a quiet room to zeros after it heard something: no fault.
    gated = Hush("mic")
    assert not any(gated.feed(frame, second) for frame in [speech, *[zeros] * 1000])

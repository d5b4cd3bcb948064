"""`roomscribe level`: a live input meter for placing and gain-staging the microphone.

`Meter` is plain arithmetic on 16 kHz s16le (no I/O); `run_level` is the shell that
prints one updating line about every 200 ms. Clipping is counted after conversion: a
full-scale sample there means the input hit full scale (a clip in just one channel of
a down-mix can hide).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from .audio import Frame
from .capture import CaptureError, CaptureStats, busy_fix, frames, source_name
from .config import CaptureSettings

FLOOR_DBFS = -120.0
# A device that has delivered nothing by then is reported, not waited for.
FIRST_AUDIO_S = 3.0
_FULL_SCALE = 32768.0
_CLIP_AT = 32767  # |sample| at or above this is clipped (-32768 included)
_BAR_WIDTH = 30
_BAR_RANGE_DB = 60.0  # the bar spans -60..0 dBFS, where speech and noise floors live


@dataclass(frozen=True)
class Level:
    rms_dbfs: float
    peak_dbfs: float
    clipped: int
    samples: int


def dbfs(value: float) -> float:
    return max(FLOOR_DBFS, 20 * math.log10(value / _FULL_SCALE)) if value > 0 else FLOOR_DBFS


class Meter:
    """RMS, peak and clipped-sample count over everything added since the last take()."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._sum_squares = 0.0
        self._peak = 0
        self._clipped = 0
        self._samples = 0

    def add(self, pcm: bytes) -> None:
        x = np.frombuffer(pcm, dtype="<i2")
        if not len(x):
            return
        wide = x.astype(np.float64)  # squares overflow int32; abs(-32768) overflows int16
        self._sum_squares += float(np.dot(wide, wide))
        mags = np.abs(wide)
        self._peak = max(self._peak, int(mags.max()))
        self._clipped += int(np.count_nonzero(mags >= _CLIP_AT))
        self._samples += len(x)

    def take(self) -> Level:
        rms = math.sqrt(self._sum_squares / self._samples) if self._samples else 0.0
        level = Level(dbfs(rms), dbfs(self._peak), self._clipped, self._samples)
        self._reset()
        return level


# A peak this low is no microphone at all: a quiet room's noise floor on a working mic
# is tens of dB above it; a capture switch off or a gain of 0 gives exact zeros.
SILENT_PEAK_DBFS = -80.0
# How long a mic may hear nothing, from the start, before the daemon says so.
HUSH_S = 60.0


class Hush:
    """Tells a microphone that hears nothing (no I/O: frames in, a line to log out).

    `roomscribe check --connect` and `level` find a capture switch left off or a gain
    at 0; a daemon started without them streamed digital silence and said nothing, so
    no transcript ever came and nothing told why. Said once, after HUSH_S of audio with
    no sample above SILENT_PEAK_DBFS from the start; and once more when sound comes.
    Only from the start: some USB mics gate a quiet room to exact zeros, and a night's
    silence after a day's speech is no fault.
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self._meter = Meter()
        self._quiet_s = 0.0
        self._heard = False
        self._said = False

    @property
    def heard(self) -> bool:
        return self._heard

    def feed(self, pcm: bytes, duration_s: float) -> str:
        """What to log about this frame ("" for nothing)."""
        if self._heard:
            return ""
        self._meter.add(pcm)
        peak = self._meter.take().peak_dbfs
        if peak > SILENT_PEAK_DBFS:
            self._heard = True
            return (f"capture: {self._what} hears sound now (peak {peak:.0f} dBFS)"
                    if self._said else "")
        self._quiet_s += duration_s
        if self._said or self._quiet_s < HUSH_S:
            return ""
        self._said = True
        return (f"capture: {self._what} has heard nothing for {HUSH_S:.0f} s (every "
                f"sample under {SILENT_PEAK_DBFS:.0f} dBFS): is its capture switch off or "
                "its gain at 0? (alsamixer, F4; `roomscribe level` shows what it hears)")


def format_level(level: Level) -> str:
    filled = round(_BAR_WIDTH * (1 + level.rms_dbfs / _BAR_RANGE_DB))
    filled = min(_BAR_WIDTH, max(0, filled))
    bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
    clip = f"  CLIP x{level.clipped}" if level.clipped else ""
    return (f"rms {level.rms_dbfs:6.1f} dBFS  peak {level.peak_dbfs:6.1f} dBFS  "
            f"[{bar}]{clip}")


async def _soon(source: AsyncGenerator[Frame, None], settings: CaptureSettings,
                stats: CaptureStats) -> AsyncGenerator[Frame, None]:
    """The source's frames; a CaptureError (one line) if the first does not come soon.

    Why: the capture stage retries a missing device forever, as the daemon must. Here
    a user watches a meter that would sit still under a line that says "retrying".
    """
    try:
        async with asyncio.timeout(FIRST_AUDIO_S):
            first = await anext(source)
    except TimeoutError:
        why = (stats.last_error
               or f"{source_name(settings)}: no audio within {FIRST_AUDIO_S:.0f} s")
        fix = busy_fix(why) or ("is the mic plugged in, and is it the right "
                                "capture.device? `roomscribe devices` lists them")
        raise CaptureError(f"level: {why} ({fix})") from None
    except StopAsyncIteration:
        return
    yield first
    async for frame in source:
        yield frame


async def run_level(settings: CaptureSettings, out: TextIO = sys.stdout,
                    duration_s: float | None = None, interval_s: float = 0.2) -> None:
    """Print the level until `duration_s` has been captured (None: until cancelled)."""
    stats = CaptureStats()
    meter = Meter()
    live = out.isatty()
    captured = 0
    next_print = time.monotonic() + interval_s

    def show(line: str) -> None:
        # On a terminal one line updates in place; piped, every reading is a line.
        out.write(f"\r{line}\x1b[K" if live else f"{line}\n")
        out.flush()

    try:
        async with (contextlib.aclosing(frames(settings, stats)) as source,
                    contextlib.aclosing(_soon(source, settings, stats)) as soon):
            async for frame in soon:
                meter.add(frame.pcm)
                captured += frame.samples
                done = duration_s is not None and captured >= duration_s * 16000
                if time.monotonic() >= next_print or done:
                    next_print = time.monotonic() + interval_s
                    line = format_level(meter.take())
                    if stats.overruns or stats.dropped_samples:
                        line += (f"  overruns {stats.overruns} dropped "
                                 f"{stats.dropped_samples / 16000:.1f} s")
                    show(line)
                if done:
                    break
    finally:
        if live:
            out.write("\n")
            out.flush()

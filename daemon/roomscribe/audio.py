"""The audio unit that flows down the pipeline, and the format's arithmetic.

After the convert stage all audio is 16 kHz mono signed 16-bit little-endian PCM:
one second is 32 000 bytes, which is the figure every buffer's memory math uses.
"""

from __future__ import annotations

from dataclasses import dataclass

SAMPLE_RATE_HZ = 16_000
BYTES_PER_SAMPLE = 2
BYTES_PER_SECOND = SAMPLE_RATE_HZ * BYTES_PER_SAMPLE  # 32 000


@dataclass(frozen=True, slots=True)
class Frame:
    """A run of 16 kHz mono s16le audio and the capture time of its first sample.

    Capture times are time.monotonic(), not the wall clock: a Pi has no real-time
    clock, so NTP steps its wall clock (by hours after a power cut) some seconds after
    boot, while audio is already being captured. The uplink turns them into wall
    time when a transcript comes back (`ClientCore.receive`), so audio captured
    before the step and transcribed after it is dated on the corrected clock."""

    pcm: bytes
    captured_at: float

    @property
    def samples(self) -> int:
        return len(self.pcm) // BYTES_PER_SAMPLE

    @property
    def duration_s(self) -> float:
        return self.samples / SAMPLE_RATE_HZ

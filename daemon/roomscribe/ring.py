"""The outage/replay buffer: bounded, indexed by absolute sample number, no I/O.

It holds every sample that no transcript has settled yet: audio captured while the
uplink was away and audio already sent but not yet covered by a `completed`. Sample
numbers count from the daemon's first captured sample and never repeat, so the uplink
can say "send from 1 234 567" or "settled up to 1 250 000" without caring what was
dropped in between.

Memory: capacity_s x 32 000 bytes of PCM (600 s = 19.2 MB) plus about 100 bytes of
bookkeeping per appended frame.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .audio import BYTES_PER_SAMPLE, SAMPLE_RATE_HZ, Frame


@dataclass(slots=True)
class _Chunk:
    start: int  # absolute sample number of the first sample
    captured_at: float  # capture (monotonic) time of that sample
    pcm: bytes

    @property
    def end(self) -> int:
        return self.start + len(self.pcm) // BYTES_PER_SAMPLE


class Ring:
    def __init__(self, capacity_s: float) -> None:
        self.capacity_samples = int(capacity_s * SAMPLE_RATE_HZ)
        self._chunks: deque[_Chunk] = deque()
        self._held = 0  # samples in _chunks, trimmed to start..end
        self.start = 0  # first sample still held
        self.end = 0  # next sample number to be written
        self.dropped_samples = 0  # unsettled audio lost to a full buffer
        # Time of sample 0 of the newest chunk, kept so time_at() works after release.
        self._last_anchor: tuple[int, float] | None = None

    # -- writing -------------------------------------------------------------
    def append(self, frame: Frame) -> None:
        if not frame.pcm:
            return
        chunk = _Chunk(self.end, frame.captured_at, frame.pcm)
        self._chunks.append(chunk)
        self._held += chunk.end - chunk.start
        self.end = chunk.end
        self._last_anchor = (chunk.start, chunk.captured_at)
        overflow = self._held - self.capacity_samples
        if overflow > 0:
            self.dropped_samples += overflow
            self._discard(self.start + overflow)

    def release(self, upto: int) -> None:
        """Forget audio before `upto`: a transcript has settled it."""
        self._discard(min(upto, self.end))

    def _discard(self, upto: int) -> None:
        if upto <= self.start:
            return
        self.start = upto
        while self._chunks and self._chunks[0].end <= upto:
            self._chunks.popleft()
        if self._chunks and self._chunks[0].start < upto:
            first = self._chunks[0]
            cut = upto - first.start
            first.captured_at += cut / SAMPLE_RATE_HZ
            first.pcm = first.pcm[cut * BYTES_PER_SAMPLE:]
            first.start = upto
        self._held = self.end - self.start

    # -- reading -------------------------------------------------------------
    @property
    def held_s(self) -> float:
        return self._held / SAMPLE_RATE_HZ

    def read(self, pos: int, max_samples: int) -> tuple[int, bytes]:
        """Up to max_samples from pos (or from start, if pos was dropped meanwhile)."""
        pos = max(pos, self.start)
        stop = min(self.end, pos + max_samples)
        parts: list[bytes] = []
        for chunk in self._chunks:
            if chunk.end <= pos:
                continue
            if chunk.start >= stop:
                break
            lo = max(pos, chunk.start) - chunk.start
            hi = min(stop, chunk.end) - chunk.start
            parts.append(chunk.pcm[lo * BYTES_PER_SAMPLE:hi * BYTES_PER_SAMPLE])
        return pos, b"".join(parts)

    def time_at(self, sample: int) -> float:
        """Capture (monotonic) time of a sample number (extrapolated outside the held
        span)."""
        anchor: tuple[int, float] | None = None
        for chunk in self._chunks:
            if chunk.start > sample:
                break
            anchor = (chunk.start, chunk.captured_at)
        if anchor is None:
            if self._chunks:
                anchor = (self._chunks[0].start, self._chunks[0].captured_at)
            elif self._last_anchor is not None:
                anchor = self._last_anchor
            else:
                return 0.0
        return anchor[1] + (sample - anchor[0]) / SAMPLE_RATE_HZ

"""Down-mix or channel pick, then streaming resample to 16 kHz mono int16. No I/O.

One `Converter` per continuous run of audio: soxr keeps filter state across blocks, so
block boundaries leave no clicks and the output does not depend on how the input was
cut. After a gap (overrun, reopen) call `flush()`, which also readies it for a new run.

CPU (measured on the dev machine, 48 kHz stereo in 100 ms blocks): down-mix by column
adds ~0.35 CPU-s per audio hour (numpy's `sum(axis=1)` costs 10x that), soxr "HQ" ~0.8;
"HQ" costs within 15 % of "LQ", so there is no reason to take less.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

from .audio import SAMPLE_RATE_HZ

Int16Array = npt.NDArray[np.int16]
Float32Array = npt.NDArray[np.float32]
_EMPTY = np.zeros(0, dtype=np.float32)


class Converter:
    def __init__(self, rate_hz: int, channels: int, channel: int = -1) -> None:
        if channels < 1:
            raise ValueError(f"channels must be >= 1, not {channels}")
        if not -1 <= channel < channels:
            raise ValueError(f"channel {channel} is not in -1..{channels - 1}")
        self.rate_hz = rate_hz
        self.channels = channels
        # A pick of the only channel is the same as no mixing at all.
        self.channel = 0 if channels == 1 else channel
        self.passthrough = rate_hz == SAMPLE_RATE_HZ and channels == 1
        self._resampler: soxr.ResampleStream | None = None
        if rate_hz != SAMPLE_RATE_HZ:
            # float32, not int16: soxr dithers int16 output, which makes the result
            # depend on how the input was cut into blocks.
            self._resampler = soxr.ResampleStream(
                rate_hz, SAMPLE_RATE_HZ, 1, dtype="float32", quality="HQ"
            )
        # Reused accumulator for the down-mix; grown only when a bigger block arrives.
        self._acc = np.empty(0, dtype=np.float32)

    def feed(self, block: Int16Array) -> bytes:
        """(n, channels) int16 in; 16 kHz mono s16le out (may be empty while soxr fills)."""
        if block.ndim != 2 or block.shape[1] != self.channels:
            raise ValueError(f"expected shape (n, {self.channels}), got {block.shape}")
        if self.passthrough:
            return block.tobytes()
        mono = self._mono(block)
        if self._resampler is None:
            return _to_s16le(mono)
        return _to_s16le(self._resampler.resample_chunk(mono))

    def feed_pcm(self, pcm: bytes) -> bytes:
        """Interleaved s16le bytes in, as ALSA, stdin and WAV deliver them."""
        if self.passthrough:
            return pcm
        block = np.frombuffer(pcm, dtype="<i2").reshape(-1, self.channels)
        return self.feed(block)

    def flush(self) -> bytes:
        """The resampler's tail; the converter is then ready for a new, unrelated run."""
        if self._resampler is None:
            return b""
        out = self._resampler.resample_chunk(_EMPTY, last=True)
        self._resampler.clear()
        return _to_s16le(out)

    def _mono(self, block: Int16Array) -> Float32Array:
        n = len(block)
        if len(self._acc) < n:
            self._acc = np.empty(n, dtype=np.float32)
        acc = self._acc[:n]
        if self.channel >= 0:
            np.copyto(acc, block[:, self.channel], casting="unsafe")
            return acc
        # Column by column: numpy's reduce along a short axis is ten times slower.
        np.copyto(acc, block[:, 0], casting="unsafe")
        for c in range(1, self.channels):
            np.add(acc, block[:, c], out=acc, casting="unsafe")
        acc *= 1.0 / self.channels
        return acc


def _to_s16le(x: Float32Array) -> bytes:
    """Round and clip in place (x is scratch), then pack as s16le."""
    np.rint(x, out=x)
    np.clip(x, -32768, 32767, out=x)
    return x.astype("<i2").tobytes()

"""The capture stage: ALSA, a WAV file or stdin in; 16 kHz mono `Frame`s out.

`frames()` is the whole public surface for the pipeline. The ALSA and stdin sources
block, so each runs in ONE daemon thread that converts and hands frames to asyncio with
`call_soon_threadsafe` into a bounded queue (`queue_s` x 32 000 bytes; when full the
oldest frame is dropped and counted). Close the iterator with `contextlib.aclosing` so
the thread is stopped; that takes at most one ALSA period plus `_JOIN_S`.

Timestamps: each continuous run of samples is anchored once (wall clock of its first
sample: time of the first read minus what ALSA still buffers) and then advanced by the
sample count, so read jitter never shows. A run ends at an overrun or a reopen, and the
next run is anchored afresh; `resync_drift_s` re-anchors slowly drifting device clocks.

ALSA's `file` plugin (used by the tests instead of a sound card) cannot signal the end
of its `infile`: past EOF it keeps returning stale, non-silent buffer contents at full
speed. A capture device never ends, so the alsa source never ends either; only `file`
and `stdin` sources end, at EOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import math
import re
import sys
import threading
import time
import wave
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import alsaaudio
import numpy as np

from .audio import BYTES_PER_SAMPLE, SAMPLE_RATE_HZ, Frame
from .config import CaptureSettings
from .convert import Converter

log = logging.getLogger(__name__)

COMMON_RATES_HZ = (8000, 11025, 16000, 22050, 32000, 44100, 48000)
COMMON_CHANNELS = (1, 2, 4, 6, 8)
# A blocking read never comes back empty from a working device; this many in a row
# means it is gone without saying so.
_MAX_EMPTY_READS = 10
_JOIN_S = 2.0
_WAIT_POLL_S = 0.2  # stdin waiting for room in the queue checks this often for a stop
_OVERRUN_LOG_EVERY_S = 60.0


class CaptureError(Exception):
    """A capture problem the user must fix: printed as one line."""


class DeviceUnavailable(CaptureError):
    """ALSA knows the device but cannot open or read it now (unplugged, busy, failed)."""


@dataclass
class CaptureStats:
    """Mutable counters read by state/health reporting. `frames` counts 16 kHz samples."""

    frames: int = 0
    overruns: int = 0
    dropped_samples: int = 0  # lost to a full queue; reported in the state's dropped_s
    reopens: int = 0  # attempts to open the device again after a fault
    last_error: str = ""
    device_open: bool = False
    # A file or stdin ran out: the daemon stops, and that is no fault of the device.
    ended: bool = False
    last_frame_monotonic: float = 0.0


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    rates_hz: tuple[int, ...] = ()
    channels: tuple[int, ...] = ()
    error: str = ""


class Pcm(Protocol):
    """The part of `alsaaudio.PCM` used here (a fake stands in where a fault is tested)."""

    def read(self) -> tuple[int, bytes]: ...
    def avail(self) -> int: ...
    def close(self) -> None: ...


class Stream:
    """Batching, conversion and timestamps of one source; no I/O."""

    def __init__(self, rate_hz: int, channels: int, channel: int, handoff_ms: int) -> None:
        self.rate_hz = rate_hz
        self.frame_bytes = BYTES_PER_SAMPLE * channels
        self.handoff_frames = max(1, rate_hz * handoff_ms // 1000)
        self._conv = Converter(rate_hz, channels, channel)
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.running = False
        self._anchor = 0.0
        self._in_frames = 0
        self._out_samples = 0

    def begin(self, first_sample_at: float) -> None:
        """Start a continuous run whose first sample was captured at this time
        (time.monotonic(), like every capture time: see `audio.Frame`)."""
        self.running = True
        self._anchor = first_sample_at
        self._in_frames = 0
        self._out_samples = 0

    def push(self, pcm: bytes) -> Frame | None:
        """Whole interleaved s16le frames in; a Frame once `handoff_ms` has gathered."""
        self._pending.append(pcm)
        self._pending_bytes += len(pcm)
        self._in_frames += len(pcm) // self.frame_bytes
        if self._pending_bytes < self.handoff_frames * self.frame_bytes:
            return None
        return self._convert(final=False)

    def end(self) -> Frame | None:
        """End the run (gap or EOF): the rest of the batch and the resampler's tail."""
        if not self.running:
            return None
        self.running = False
        return self._convert(final=True)

    def drift(self, newest_sample_at: float) -> float:
        """System (monotonic) clock minus sample clock at the newest input sample."""
        return newest_sample_at - (self._anchor + self._in_frames / self.rate_hz)

    def shift(self, seconds: float) -> None:
        self._anchor += seconds

    def _convert(self, final: bool) -> Frame | None:
        pcm = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        out = self._conv.feed_pcm(pcm) if pcm else b""
        if final:
            out += self._conv.flush()
        if not out:
            return None
        frame = Frame(out, self._anchor + self._out_samples / SAMPLE_RATE_HZ)
        self._out_samples += len(out) // BYTES_PER_SAMPLE
        return frame


# ---------------------------------------------------------------- ALSA


def _reason(exc: BaseException) -> str:
    # pyalsaaudio appends " [device]"; the caller names the device itself.
    return re.sub(r"\s*\[[^\]]*\]$", "", str(exc)) or type(exc).__name__


@functools.cache
def _libasound() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libasound.so.2")
    except OSError:
        return None


# alsa-lib prints its own multi-line complaints to stderr on every failed open (each
# retry while a mic is unplugged); our one-line errors say it better, so its messages
# go to the debug log. The handler is variadic in C; the extra arguments are ignored.
_ErrorHandler = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                                 ctypes.c_int, ctypes.c_char_p)


# The handler runs inside alsa-lib (pyalsaaudio calls it with the GIL released):
# logging from there crashed the process (SIGSEGV at debug level), so it only keeps
# the message, and _log_alsa_lib() logs it once the ALSA call has returned.
# Bounded: the last 16 messages.
_ALSA_MESSAGES: deque[tuple[bytes, int, bytes, int, bytes]] = deque(maxlen=16)


def _alsa_lib_message(file: bytes, line: int, function: bytes, err: int, fmt: bytes) -> None:
    _ALSA_MESSAGES.append((file, line, function, err, fmt))


def _log_alsa_lib() -> None:
    while _ALSA_MESSAGES:
        file, line, function, err, fmt = _ALSA_MESSAGES.popleft()
        log.debug("alsa-lib %s:%d %s (%d): %s", file.decode(errors="replace"), line,
                  function.decode(errors="replace"), err, fmt.decode(errors="replace"))


_HANDLER = _ErrorHandler(_alsa_lib_message)
_quiet = False


def _quiet_alsa_lib() -> None:
    global _quiet
    lib = _libasound()
    if not _quiet and lib is not None:
        lib.snd_lib_error_set_handler(_HANDLER)
        _quiet = True


def alsa_knows(device: str) -> bool:
    """Whether ALSA's configuration defines the PCM (`pcm.<base>`), as snd_pcm_open
    looks it up. An unplugged card's `hw:1,0` is known; a typo is not. True when
    libasound cannot be asked, so that nothing is refused by mistake."""
    _quiet_alsa_lib()
    lib = _libasound()
    if lib is None:
        return True
    try:
        if lib.snd_config_update() < 0:
            return True
        top = ctypes.c_void_p.in_dll(lib, "snd_config")
        node = ctypes.c_void_p()
        key = f"pcm.{device.split(':', 1)[0]}".encode()
        found: int = lib.snd_config_search(top, key, ctypes.byref(node))
        return found >= 0
    except (AttributeError, ValueError):
        return True


def source_name(settings: CaptureSettings) -> str:
    """The audio source as the config names it, for messages."""
    if settings.source == "stdin":
        return "stdin"
    if settings.source == "file":
        return f"capture.file {settings.file!r}"
    return f"capture.device {settings.device!r}"


def check_device(device: str) -> None:
    if not alsa_knows(device):
        names = ", ".join(alsaaudio.pcms(alsaaudio.PCM_CAPTURE)) or "none"
        raise CaptureError(f"capture.device {device!r}: ALSA has no such PCM "
                           f"(capture PCMs: {names})")


def open_pcm(settings: CaptureSettings) -> Pcm:
    """Open for capture exactly as configured; CaptureError (one line) otherwise."""
    _quiet_alsa_lib()
    try:
        pcm = alsaaudio.PCM(type=alsaaudio.PCM_CAPTURE, mode=alsaaudio.PCM_NORMAL,
                            device=settings.device, channels=settings.channels,
                            rate=settings.rate_hz, format=alsaaudio.PCM_FORMAT_S16_LE,
                            periodsize=settings.period_frames or settings.rate_hz // 10)
    except alsaaudio.ALSAAudioError as exc:
        _log_alsa_lib()
        raise DeviceUnavailable(f"capture.device {settings.device!r}: {_reason(exc)}") from None
    _log_alsa_lib()
    info = pcm.info()
    got = (info["rate"], info["channels"], info["format_name"])
    if got != (settings.rate_hz, settings.channels, "S16_LE"):
        pcm.close()
        # pyalsaaudio takes the nearest rate silently; converting from the wrong rate
        # would change the pitch of everything, so this is a configuration error.
        raise CaptureError(
            f"capture.device {settings.device!r} gives {got[0]} Hz, {got[1]} channel(s), "
            f"{got[2]} instead of {settings.rate_hz} Hz, {settings.channels}, S16_LE: "
            "set capture.rate_hz/channels to match or use a plughw: device"
        )
    opened: Pcm = pcm
    return opened


def _avail(pcm: Pcm) -> int:
    try:
        return max(0, int(pcm.avail()))
    except (alsaaudio.ALSAAudioError, OSError, ValueError):
        return 0


Emit = Callable[[Frame | None], None]


def alsa_loop(settings: CaptureSettings, stats: CaptureStats, emit: Emit,
              stop: threading.Event, open_device: Callable[[CaptureSettings], Pcm] = open_pcm,
              ) -> None:
    """The capture thread's body: open, read, reopen with backoff, until `stop`."""
    stream = Stream(settings.rate_hz, settings.channels, settings.channel, settings.handoff_ms)
    delay = settings.reopen_min_s
    attempts = 0
    while not stop.is_set():
        if attempts:
            stats.reopens += 1
        attempts += 1
        try:
            pcm = open_device(settings)
        except DeviceUnavailable as exc:
            _fault(stats, str(exc), delay, first=stats.last_error != str(exc))
            stop.wait(delay)
            delay = min(delay * 2, settings.reopen_max_s)
            continue
        stats.device_open = True
        log.info("capture: %s open (%d Hz, %d ch)", settings.device, settings.rate_hz,
                 settings.channels)
        try:
            delivered, fault = _read_until_stop(pcm, settings, stats, stream, emit, stop)
        finally:
            with contextlib.suppress(Exception):
                pcm.close()
            stats.device_open = False
            emit(stream.end())
        if stop.is_set():
            return
        if delivered:
            delay = settings.reopen_min_s
        _fault(stats, fault, delay, first=True)
        stop.wait(delay)
        delay = min(delay * 2, settings.reopen_max_s)


def _fault(stats: CaptureStats, message: str, delay: float, first: bool) -> None:
    stats.last_error = message
    # Repeats of the same failure while waiting for a device are not news.
    log.log(logging.WARNING if first else logging.DEBUG,
            "capture: %s; retrying in %.3g s", message, delay)


def _read_until_stop(pcm: Pcm, settings: CaptureSettings, stats: CaptureStats,
                     stream: Stream, emit: Emit, stop: threading.Event) -> tuple[bool, str]:
    """(whether audio came, the fault that ended reading or "" for `stop`)."""
    rate = settings.rate_hz
    empty = 0
    delivered = False
    last_log = -math.inf
    while not stop.is_set():
        try:
            n, data = pcm.read()
        except alsaaudio.ALSAAudioError as exc:
            return delivered, f"capture.device {settings.device!r}: read failed: {_reason(exc)}"
        if n < 0:  # -EPIPE: the device overran; pyalsaaudio re-prepares on the next read
            stats.overruns += 1
            if time.monotonic() - last_log >= _OVERRUN_LOG_EVERY_S:
                last_log = time.monotonic()
                log.warning("capture: overrun, audio lost (%d so far)", stats.overruns)
            emit(stream.end())
            continue
        if n == 0:
            empty += 1
            if empty >= _MAX_EMPTY_READS:
                return delivered, f"capture.device {settings.device!r}: delivers no audio"
            continue
        empty = 0
        delivered = True
        newest_at = time.monotonic() - _avail(pcm) / rate
        if not stream.running:
            stream.begin(newest_at - n / rate)
        frame = stream.push(data)
        if settings.resync_drift_s > 0:
            drift = stream.drift(newest_at)
            if abs(drift) >= settings.resync_drift_s:
                stream.shift(drift)
                log.info("capture: the sound card's clock drifted %.3f s from the "
                         "system's; timestamps re-anchored", drift)
        emit(frame)
    return delivered, ""


# ---------------------------------------------------------------- stdin and file


def stdin_loop(settings: CaptureSettings, stats: CaptureStats, emit: Emit,
               stop: threading.Event, source: BinaryIO) -> None:
    """Raw s16le at rate_hz/channels until EOF."""
    stream = Stream(settings.rate_hz, settings.channels, settings.channel, settings.handoff_ms)
    want = stream.handoff_frames * stream.frame_bytes
    carry = b""
    stats.device_open = True
    try:
        while not stop.is_set():
            data = source.read(want)
            if not data:
                stats.ended = True
                break
            data = carry + data
            whole = len(data) - len(data) % stream.frame_bytes
            carry = data[whole:]
            if not whole:
                continue
            if not stream.running:
                stream.begin(time.monotonic() - whole / stream.frame_bytes / stream.rate_hz)
            emit(stream.push(data[:whole]))
    finally:
        stats.device_open = False
        emit(stream.end())


def _to_s16(raw: bytes, width: int) -> bytes:
    if width == 2:
        return raw
    if width == 1:  # unsigned 8-bit
        return ((np.frombuffer(raw, np.uint8).astype(np.int16) - 128) << 8).tobytes()
    if width == 3:  # keep the top two bytes of each little-endian 24-bit sample
        return np.frombuffer(raw, np.uint8).reshape(-1, 3)[:, 1:].tobytes()
    return (np.frombuffer(raw, "<i4") >> 16).astype("<i2").tobytes()


async def _file_frames(settings: CaptureSettings,
                       stats: CaptureStats) -> AsyncGenerator[Frame, None]:
    where = f"capture.file {settings.file}"
    try:
        wav = wave.open(settings.file, "rb")  # noqa: SIM115 - `with` below, after the checks
    except FileNotFoundError:
        raise CaptureError(f"{where}: no such file") from None
    except (OSError, EOFError, wave.Error) as exc:
        raise CaptureError(f"{where}: not a readable PCM WAV file ({exc})") from None
    with wav:
        rate, nch, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
        if width not in (1, 2, 3, 4):
            raise CaptureError(f"{where}: {8 * width}-bit samples are not supported")
        if settings.channel >= nch:
            raise CaptureError(f"{where}: has {nch} channel(s), capture.channel = "
                               f"{settings.channel}")
        stream = Stream(rate, nch, settings.channel, settings.handoff_ms)
        start_mono = time.monotonic()
        stream.begin(start_mono)
        frames_read = 0
        stats.device_open = True
        try:
            while raw := wav.readframes(stream.handoff_frames):
                frames_read += len(raw) // (width * nch)
                if settings.file_realtime:
                    # Deliver each block when its last sample "has been captured".
                    await asyncio.sleep(max(0.0, start_mono + frames_read / rate
                                            - time.monotonic()))
                else:
                    await asyncio.sleep(0)  # let the rest of the daemon run
                if frame := stream.push(_to_s16(raw, width)):
                    _count(stats, frame)
                    yield frame
            stats.ended = True
            if frame := stream.end():
                _count(stats, frame)
                yield frame
        finally:
            stats.device_open = False


def _count(stats: CaptureStats, frame: Frame) -> None:
    stats.frames += frame.samples
    stats.last_frame_monotonic = time.monotonic()


# ---------------------------------------------------------------- the public iterator


@dataclass(frozen=True)
class _End:
    error: BaseException | None = None


async def frames(settings: CaptureSettings, stats: CaptureStats) -> AsyncGenerator[Frame, None]:
    """16 kHz mono Frames from the configured source; ends only for file/stdin EOF."""
    if settings.source == "file":
        async for frame in _file_frames(settings, stats):
            yield frame
        return
    if settings.source == "alsa":
        check_device(settings.device)
    loop = asyncio.get_running_loop()
    # Memory: queue_s x 32 000 bytes (frames of handoff_ms each; 10 s = 320 kB).
    queue: asyncio.Queue[Frame | _End] = asyncio.Queue(
        max(2, math.ceil(settings.queue_s * 1000 / settings.handoff_ms)))
    stop = threading.Event()

    def put(item: Frame | _End) -> None:
        if queue.full():
            # The pipeline has not taken audio for queue_s: the device cannot wait, so
            # the oldest goes, and is counted as lost. One line, the same each time, so
            # that logs.RepeatFilter lets it through once a minute.
            lost = queue.get_nowait()
            stats.dropped_samples += lost.samples if isinstance(lost, Frame) else 0
            log.warning("capture: the pipeline fell %g s behind; the oldest audio is "
                        "dropped (counted in dropped_s)", settings.queue_s)
        queue.put_nowait(item)

    def wait_for_room(item: Frame | _End) -> None:
        waiting = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        while True:
            try:
                waiting.result(timeout=_WAIT_POLL_S)
                return
            except TimeoutError:
                if stop.is_set():  # nobody will take it
                    waiting.cancel()
                    return

    def hand_over(item: Frame | _End | None) -> None:
        if item is None:
            return
        try:
            # A microphone cannot wait: its oldest audio goes (put). A pipe can: stdin's
            # reader waits for room, so a file piped in faster than real time loses
            # nothing (it lost 34 s of 120 with a 10 s queue).
            if settings.source == "alsa":
                loop.call_soon_threadsafe(put, item)
            else:
                wait_for_room(item)
        except RuntimeError:  # the loop is gone: nobody listens any more
            stop.set()

    def body() -> None:
        try:
            if settings.source == "alsa":
                alsa_loop(settings, stats, hand_over, stop)
            else:
                # The raw file, not the BufferedReader: a read blocked on an idle pipe
                # holds the buffer's lock, and at exit the interpreter aborts ("could
                # not acquire lock for <stdin>") instead of exiting 0.
                stdin = getattr(sys.stdin.buffer, "raw", sys.stdin.buffer)
                stdin_loop(settings, stats, hand_over, stop, stdin)
        except BaseException as exc:
            hand_over(_End(exc))
        else:
            hand_over(_End())

    thread = threading.Thread(target=body, name=f"capture-{settings.source}", daemon=True)
    thread.start()
    try:
        while True:
            item = await queue.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            _count(stats, item)
            yield item
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, _JOIN_S)


# ---------------------------------------------------------------- device listing


def _accepts(name: str, rate_hz: int, channels: int) -> str:
    """"" when the PCM opens with exactly these parameters, else why not."""
    try:
        pcm = alsaaudio.PCM(type=alsaaudio.PCM_CAPTURE, mode=alsaaudio.PCM_NONBLOCK,
                            device=name, channels=channels, rate=rate_hz,
                            format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=1024)
    except alsaaudio.ALSAAudioError as exc:
        return _reason(exc)
    try:
        info = pcm.info()
        if (info["rate"], info["channels"]) != (rate_hz, channels):
            return "parameters not supported"
        return ""
    finally:
        pcm.close()


def busy_fix(error: str) -> str:
    """The fix for a device another program holds ("Device or resource busy"), else "".

    Why its own hint: `roomscribe level` and `check --connect` read the service's config
    by default, so on an installed Pi the program holding the mic is most likely the
    service itself, and "is the mic plugged in?" sends the user the wrong way."""
    if "busy" not in error.lower():
        return ""
    return ("another program has the mic open, most likely the roomscribe service: "
            "`sudo systemctl stop roomscribe`, then try again")


def probe_device(name: str) -> DeviceInfo:
    """The common rates and channel counts a capture PCM accepts as S16_LE. A busy or
    absent device comes back with `error` set; a name ALSA does not know raises."""
    check_device(name)
    # Not PCM.getrates()/getchannels(): on plugins such as `null` they walk billions
    # of values. Opening with each candidate is a few milliseconds each.
    first_error = ""
    for channels in COMMON_CHANNELS:
        for rate in (48000, 16000, 44100):
            why = _accepts(name, rate, channels)
            if not why:
                return DeviceInfo(
                    name,
                    tuple(r for r in COMMON_RATES_HZ if not _accepts(name, r, channels)),
                    tuple(c for c in COMMON_CHANNELS if not _accepts(name, rate, c)),
                )
            first_error = first_error or why
            if "busy" in why.lower() or "no such" in why.lower():
                return DeviceInfo(name, error=why)
    return DeviceInfo(name, error=first_error or "accepts no common S16_LE format")


def list_devices() -> list[DeviceInfo]:
    """Every ALSA capture PCM with what it accepts, for `roomscribe devices`."""
    return [probe_device(name) for name in alsaaudio.pcms(alsaaudio.PCM_CAPTURE)]

"""systemd notifications (sd_notify): READY, STATUS, STOPPING and a frame-gated watchdog.

The watchdog is the point of this module. systemd restarts the unit when WATCHDOG=1
stops arriving for WatchdogSec, so the pings must mean "audio is flowing and the event
loop is turning", not merely "the process exists":

- `Watchdog` (no I/O) pings at half the interval, and only while a frame arrived within
  `stall_after_s` (capped at the interval, so a stall always ends in a restart);
- `Notifier.run_watchdog` is an asyncio task: a wedged loop never runs it, so it stops
  pinging by itself. It also says in the journal when pings stop for want of audio (and
  when audio comes back), so the restart that follows has its reason next to it.

Outside systemd ($NOTIFY_SOCKET unset) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Literal

log = logging.getLogger(__name__)

# A microphone that delivers nothing for this long counts as stalled.
STALL_AFTER_S = 10.0
# ...and that is noticed this much later at most.
STALL_NOTICE_S = 0.05
# systemd shows one line; a long error would push the useful part off screen.
STATUS_ERROR_CHARS = 120


def status_line(status: str, buffered_s: float, last_error: str) -> str:
    """The one line `systemctl status` shows, e.g. 'streaming, 0 s buffered': the
    status the state topic has (health.py), and the last error while there is one."""
    text = f"{status}, {buffered_s:.0f} s buffered"
    error = " ".join(last_error.split()) if status in ("reconnecting", "failing") else ""
    if error:
        if len(error) > STATUS_ERROR_CHARS:
            error = error[: STATUS_ERROR_CHARS - 1] + "…"
        text += f" (last error: {error})"
    return text


class Watchdog:
    """Decides when to send WATCHDOG=1; the caller supplies the monotonic clock."""

    def __init__(self, interval_s: float, stall_after_s: float = STALL_AFTER_S) -> None:
        if interval_s <= 0 or stall_after_s <= 0:
            raise ValueError("watchdog interval and stall bound must be positive")
        self.interval_s = interval_s
        self.period_s = interval_s / 2
        # Longer than the interval would let systemd's timer fire first, which is the
        # same restart, but later and without our reason in the journal.
        self.stall_after_s = min(stall_after_s, interval_s)
        self._last_frame: float | None = None
        self._last_ping: float | None = None
        self._stopped = False
        self._stall_said = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str], pid: int,
                 stall_after_s: float = STALL_AFTER_S) -> Watchdog | None:
        """The watchdog systemd asked for, or None (not asked, or asked of another PID)."""
        usec = environ.get("WATCHDOG_USEC", "")
        if not usec:
            return None
        owner = environ.get("WATCHDOG_PID", "")
        if owner and owner != str(pid):
            return None
        try:
            interval_s = int(usec) / 1e6
        except ValueError:
            log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
            return None
        if interval_s <= 0:
            return None
        return cls(interval_s, stall_after_s)

    def frame_arrived(self, now: float) -> None:
        self._last_frame = now

    def stop(self) -> None:
        """No more pings: the unit is shutting down on purpose."""
        self._stopped = True

    def healthy(self, now: float) -> bool:
        return (not self._stopped and self._last_frame is not None
                and now - self._last_frame <= self.stall_after_s)

    def quiet_s(self, now: float) -> float | None:
        """Seconds since the last frame; None before the first."""
        return None if self._last_frame is None else now - self._last_frame

    def stall_change(self, now: float) -> Literal["stalled", "resumed"] | None:
        """"stalled" once when frames that were arriving stop for longer than the stall
        bound (pings stop), "resumed" once when they come back; None otherwise, and
        always after stop(): a shutdown on purpose is no stall."""
        if self._stopped or self._last_frame is None:
            return None
        stalled = now - self._last_frame > self.stall_after_s
        if stalled == self._stall_said:
            return None
        self._stall_said = stalled
        return "stalled" if stalled else "resumed"

    def poll(self, now: float) -> tuple[bool, float]:
        """(send WATCHDOG=1 now?, seconds until the next poll)."""
        if not self.healthy(now):
            # Re-check often enough that audio coming back resumes pings well within
            # the interval systemd still grants.
            return False, self.period_s / 2
        # Also poll just after the stall bound would pass with no new frame, so that a
        # stall is noticed (and said, stall_change) then, not up to a period later.
        last_frame = now if self._last_frame is None else self._last_frame  # healthy: set
        until_stall = last_frame + self.stall_after_s - now + STALL_NOTICE_S
        if self._last_ping is None or now - self._last_ping >= self.period_s:
            self._last_ping = now
            return True, min(self.period_s, until_stall)
        return False, min(self._last_ping + self.period_s - now, until_stall)


def _socket_address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]  # Linux abstract namespace
    if value.startswith("/"):
        return value
    return None


class Notifier:
    def __init__(self, address: str | None, watchdog: Watchdog | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._address = address
        self._watchdog = watchdog if address else None
        self._clock = clock
        self._sock: socket.socket | None = None
        self._last_status = ""
        self._warned = False
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # systemd drains its queue quickly; if it ever doesn't, drop the message
            # rather than block the event loop.
            self._sock.setblocking(False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *,
                 stall_after_s: float = STALL_AFTER_S) -> Notifier:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        address = _socket_address(raw) if raw else None
        if raw and address is None:
            log.warning("ignoring NOTIFY_SOCKET=%r: not a path or @abstract name", raw)
        watchdog = Watchdog.from_env(env, os.getpid(), stall_after_s) if address else None
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @property
    def watchdog(self) -> Watchdog | None:
        return self._watchdog

    def _send(self, message: str) -> None:
        if self._sock is None or self._address is None:
            return
        try:
            self._sock.sendto(message.encode("utf-8"), self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("systemd notification failed: %s", exc.strerror or exc)

    def ready(self) -> None:
        self._send("READY=1")

    def status(self, text: str) -> None:
        # sd_notify separates assignments with newlines, so a status is one line.
        line = " ".join(text.split())
        if line == self._last_status:
            return  # the app reports every few seconds; systemd keeps the last one
        self._last_status = line
        self._send(f"STATUS={line}")

    def stopping(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
        self._send("STOPPING=1")

    def frame_arrived(self, now: float) -> None:
        if self._watchdog is not None:
            self._watchdog.frame_arrived(now)

    async def run_watchdog(self) -> None:
        """Ping while audio flows; returns at once when systemd asked for no watchdog."""
        watchdog = self._watchdog
        if watchdog is None:
            return
        while True:
            now = self._clock()
            send, wait_s = watchdog.poll(now)
            if send:
                self._send("WATCHDOG=1")
            change = watchdog.stall_change(now)
            if change == "stalled":
                log.warning("capture stalled: no audio for %.0f s; the systemd watchdog is "
                            "no longer fed, so systemd restarts the service within %.3g s "
                            "unless audio comes back", watchdog.quiet_s(now) or 0.0,
                            watchdog.interval_s)
            elif change == "resumed":
                log.info("capture: audio again; the systemd watchdog is fed again")
            await asyncio.sleep(wait_s)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

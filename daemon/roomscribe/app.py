"""Wires capture → convert → buffer → uplink → publish into one TaskGroup.

Shutdown is ordered and bounded: capture stops first, the uplink flushes and waits
for the last transcript (uplink.final_timeout_s), the publisher drains its outbox
(SHUTDOWN_PUBLISH_S) and says `offline`, then the helpers are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator

from . import config, credentials, identity, statedir
from .audio import Frame
from .capture import CaptureStats, frames, source_name
from .config import Settings
from .gate import Close, Gate, GateEvent, Open
from .health import Health, Status, available
from .integrations import Integrations
from .level import Hush
from .notify import Notifier, status_line
from .outbox import Outbox
from .protocol import ClientCore
from .publish import Publisher
from .ring import Ring
from .uplink import Uplink

log = logging.getLogger("roomscribe")

SHUTDOWN_PUBLISH_S = 5.0
# How often the state is sampled; the publisher decides what is worth publishing
# (payload.StateReporter), so this only bounds how stale a published value can be.
STATE_INTERVAL_S = 1.0


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        up = settings.uplink
        self.ring = Ring(settings.buffer.seconds)
        self.gate = Gate(settings.gate)
        self.core = ClientCore(
            self.ring, model=up.model, chunk_samples=up.chunk_ms * 16,
            window_samples=int(up.window_s * 16000),
            min_silence_ms=up.vad.min_silence_duration_ms, pad_ms=up.vad.speech_pad_ms,
            keep_samples=self.gate.lookback_samples,
            idle_disconnect_s=settings.gate.idle_disconnect_s,
        )
        state = statedir.prepare(settings)
        self._state_lock = statedir.lock(state)
        outbox = Outbox(state / "outbox.sqlite3",
                        max_entries=settings.mqtt.outbox_max_entries)
        self._state_dir = state
        self._mqtt_password = credentials.mqtt_password(settings)
        self.publisher = Publisher(settings, outbox, self._mqtt_password)
        self.integrations = Integrations(settings, self.publisher, state)
        partial = self.publisher.partial if settings.mqtt.publish_partials else None
        self.uplink = Uplink(up, self.core, credentials.endpoint_keys(settings),
                             on_transcript=self.integrations.transcript,
                             on_partial=partial or (lambda _t: None),
                             on_status=self._uplink_status)
        self.capture_stats = CaptureStats()
        self.hush = Hush(source_name(settings.capture))
        self.health = Health()
        self.notifier = Notifier.from_env()
        self.started = time.monotonic()
        self._stop = asyncio.Event()
        # What state reports while stopping: the status the daemon was stopped in. The
        # capture closing and the socket going are the stop, not an outage.
        self._stopped_in: Status | None = None
        self.exit_status = 0

    def request_stop(self) -> None:
        self._stop.set()

    def _uplink_status(self, connected: bool, error: str) -> None:
        self._report()

    def _status(self) -> Status:
        if self._stopped_in is not None:
            return self._stopped_in
        cap = self.capture_stats
        return self.health.status(
            time.monotonic(), muted=self.integrations.mute.muted,
            connected=self.uplink.connected, wants_connection=self.core.wants_connection(),
            capture_open=cap.device_open or cap.ended)

    def _report(self) -> None:
        ring, cap, up = self.ring, self.capture_stats, self.uplink
        last_error = up.last_error or cap.last_error or self.publisher.trouble
        status = self._status()
        self.publisher.update_state(
            status=status,
            transcription_available=available(status),
            uplink_connected=up.connected,
            buffered_s=round(ring.held_s, 1),
            dropped_s=round((ring.dropped_samples + cap.dropped_samples) / 16000, 1),
            overruns=cap.overruns,
            last_error=last_error or None,
            uptime_s=round(time.monotonic() - self.started),
            muted=self.integrations.mute.muted,
        )
        self.notifier.status(status_line(status, ring.held_s, last_error))

    def _account_unflushed(self) -> None:
        """Stopping: audio that did not get through in time is said, counted in
        dropped_s, and makes the exit status non-zero."""
        lost = 0.0 if self.uplink.flushed else self.core.abandon()
        if lost >= 0.1:
            self.exit_status = 1
            log.warning("stopping with %.1f s of captured audio not transcribed (it did "
                        "not get through within uplink.final_timeout_s = %.0f s)", lost,
                        self.settings.uplink.final_timeout_s)

    async def _capture(self) -> None:
        source = frames(self.settings.capture, self.capture_stats)
        async with contextlib.aclosing(source):
            await self._pump(source)
        log.info("capture: end of input")
        self._stop.set()

    async def _pump(self, source: AsyncIterator[Frame]) -> None:
        mute = self.integrations.mute
        async for frame in source:
            self.notifier.frame_arrived(time.monotonic())
            if said := self.hush.feed(frame.pcm, frame.duration_s):
                log.log(logging.INFO if self.hush.heard else logging.WARNING, "%s", said)
            if mute.muted:
                # Privacy: nothing leaves the device, nothing is kept for later.
                if self.gate.is_open:
                    self._gate_events(self.gate.reset())
                self.core.gate_idle()  # nothing to send: no socket held open either
                continue
            events = self.gate.feed(frame.pcm, self.ring.end)
            self.ring.append(frame)
            self._gate_events(events)
            self.uplink.audio_arrived()

    def _gate_events(self, events: list[GateEvent]) -> None:
        for event in events:
            if isinstance(event, Open):
                self.core.gate_open(event.from_sample)
            elif isinstance(event, Close):
                self.core.gate_close(event.to_sample)
            else:
                self.core.gate_idle()

    async def _state(self) -> None:
        while True:
            self._report()
            await asyncio.sleep(STATE_INTERVAL_S)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            capture = tg.create_task(self._capture(), name="capture")
            uplink = tg.create_task(self.uplink.run(), name="uplink")
            publish = tg.create_task(self.publisher.run(), name="publish")
            helpers = [tg.create_task(self._state(), name="state"),
                       tg.create_task(self.notifier.run_watchdog(), name="watchdog"),
                       tg.create_task(identity.retire_previous(
                           self.settings, self._state_dir, self._mqtt_password),
                           name="retire-old-device")]
            self.notifier.ready()
            log.info("roomscribe %s: capturing from %s, sending to %s",
                     self.settings.device.id, self.settings.capture.source,
                     ", ".join(u.split("?")[0] for u in config.endpoints(self.settings)))
            if self.integrations.mute.muted:
                # Saved from before the restart: without this line a silent daemon
                # looks broken.
                log.warning("privacy mute is ON (saved in %s): no audio leaves the device "
                            "until it is switched off", self.integrations.mute.path)
            await self._stop.wait()
            self._stopped_in = self._status()
            self.notifier.stopping()
            capture.cancel()
            self.uplink.stop()
            # The uplink keeps its own deadline (final_timeout_s); this is the backstop.
            bound = self.settings.uplink.final_timeout_s + 5.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(bound):
                    await asyncio.shield(uplink)
            uplink.cancel()
            self._account_unflushed()
            self._report()
            await self.publisher.close(SHUTDOWN_PUBLISH_S)
            if self.publisher.lost_at_close:
                self.exit_status = 1  # as for audio left untranscribed
            publish.cancel()
            for task in helpers:
                task.cancel()


async def serve_forever(settings: Settings) -> int:
    """Run until stopped; the exit status (non-zero: audio was left untranscribed)."""
    daemon = Daemon(settings)
    loop = asyncio.get_running_loop()
    # SIGHUP too: a terminal or ssh session that closes must not cost the sentence
    # being said (under systemd, Restart=always then makes it a reload).
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, daemon.request_stop)
    await daemon.run()
    return daemon.exit_status

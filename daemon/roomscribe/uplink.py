"""The uplink stage: a thin websockets shell around protocol.ClientCore.

It keeps one connection to the realtime server, sends the ring's audio as it arrives
(the backlog first, as fast as the server takes it), and hands each transcript on.
Reconnects use tenacity; whether to retry, and how fast, comes from retry.classify.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import websockets
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from . import protocol
from .config import UplinkSettings, VadSettings
from .protocol import ClientCore, Partial, Ready, ServerError
from .retry import (
    Endpoints,
    UplinkError,
    Verdict,
    classify,
    describe,
    server_event_error,
    settings_refused,
    should_retry,
)
from .transcript import Transcript

log = logging.getLogger("roomscribe.uplink")

# Largest server event we accept; a transcript event is a few KB. Bigger frames close
# the connection with 1009 and count as a transient fault.
MAX_EVENT_BYTES = 1 << 20


# After the first endpoint is back, wait at most this long for the open segment's
# transcript before moving to it (the ring replays whatever was not settled).
SWITCH_BACK_GRACE_S = 10.0


class _HealthyDrop(Exception):
    """A long, healthy session ended: reconnect at once with a fresh backoff."""


class _QuietEnd(Exception):
    """The server closed the connection normally with nothing owed (its idle timeout):
    not an error; the next audio opens a new one."""


def endpoint_model(url: str, model: str) -> str:
    """The model an endpoint is asked for: its URL's own `model=`, else uplink.model."""
    return parse_qs(urlsplit(url).query).get("model", [model])[-1]


class Uplink:
    def __init__(
        self,
        settings: UplinkSettings,
        core: ClientCore,
        api_key: str | Sequence[str],
        on_transcript: Callable[[Transcript], None],
        on_partial: Callable[[str], None] = lambda _text: None,
        on_status: Callable[[bool, str], None] = lambda _up, _err: None,
    ) -> None:
        self.settings = settings
        self.core = core
        self.urls = settings.urls or (settings.url,)
        # One secret per endpoint (credentials.endpoint_keys); a str is everyone's.
        self._keys = (tuple(api_key for _ in self.urls) if isinstance(api_key, str)
                      else tuple(api_key))
        self.endpoints = Endpoints(len(self.urls), settings.failover_after_s)
        # Endpoints that refused our turn_detection settings: they get their defaults.
        self._vad_refused: set[int] = set()
        self._first_is_back = 0.0  # when a probe found the first endpoint healthy
        self._on_transcript = on_transcript
        self._on_partial = on_partial
        self._on_status = on_status
        self._audio = asyncio.Event()  # set when the ring has new audio
        self._stopping = asyncio.Event()
        self.connected = False
        self.last_error = ""
        self.reconnects = 0
        self._tries_since_stop = 0  # connection attempts after stop(): one, no more
        self._deadline = float("inf")  # after stop(): give up the flush then
        # The last commit after stop() was answered and every segment came back.
        self.flushed = False
        # Whether each endpoint sends `processed` (Together's older servers do not, ours
        # does), as learned on an earlier connection to it.
        self._paces: dict[int, bool | None] = {}
        self._paces_logged: bool | None = None

    # -- called by the app ---------------------------------------------------
    def audio_arrived(self) -> None:
        self._audio.set()

    def stop(self) -> None:
        """End of capture: send the rest, commit, and wait for the last transcript,
        all within uplink.final_timeout_s from now."""
        self._deadline = asyncio.get_running_loop().time() + self.settings.final_timeout_s
        self._stopping.set()
        self._audio.set()

    def _past_deadline(self) -> bool:
        return asyncio.get_running_loop().time() >= self._deadline

    # -- the loop ------------------------------------------------------------
    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        bound = None if exc is None else self.endpoints.failed(exc, time.monotonic())
        if bound == 0.0:
            return 0.0  # another endpoint: try it now
        if exc is not None and classify(exc) is Verdict.SLOW:
            wait = self.settings.fatal_retry_s
        else:
            backoff = wait_random_exponential(multiplier=0.5,
                                              max=self.settings.backoff_max_s)
            wait = float(backoff(state))
        # Never sleep past the moment this endpoint's failover time is up.
        return wait if bound is None else min(wait, bound)

    @property
    def endpoint(self) -> str:
        return self.urls[self.endpoints.current].split("?")[0]

    async def _sleep(self, seconds: float) -> None:
        # A stop cuts the backoff short: one more attempt to flush before giving up.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if exc is None:
            return
        slow = classify(exc) is Verdict.SLOW
        wait = state.next_action.sleep if state.next_action else 0.0
        self.last_error = describe(exc)
        self._on_status(False, self.last_error)
        if wait == 0.0 and len(self.urls) > 1:
            log.warning("uplink: %s; trying %s now (%.0f s of audio buffered)",
                        self.last_error, self.endpoint, self.core.ring.held_s)
        elif slow:
            log.error("uplink: %s; this will not fix itself (check the API key and model); "
                      "retrying in %.0f s", self.last_error, wait)
        else:
            log.warning("uplink: %s; reconnecting in %.1f s (%.0f s of audio buffered)",
                        self.last_error, wait, self.core.ring.held_s)

    async def run(self) -> None:
        while not self._stopping.is_set() or (self.core.backlog_s > 0
                                              and not self._past_deadline()):
            retrying = AsyncRetrying(
                wait=self._wait,
                retry=retry_if_exception(lambda e: not isinstance(e, _HealthyDrop) and
                                         should_retry(e, after_stop=self._tries_since_stop > 0)),
                before_sleep=self._before_sleep,
                sleep=self._sleep,
                reraise=True,
            )
            try:
                await self._wanted()
                if self._stopping.is_set() and not self.core.wants_connection():
                    return  # stopped while idle: nothing to flush, no need to connect
                async for attempt in retrying:
                    with attempt:
                        await self._session()
                if self._stopping.is_set():
                    return  # the last session flushed and ended cleanly
            except _HealthyDrop:
                self.reconnects += 1
                continue
            except Exception as exc:
                # Retrying gave up: only a failed last attempt after stop() is expected
                # (the app then reports what was not transcribed).
                if not self._tries_since_stop or classify(exc) is Verdict.FATAL:
                    raise
                log.info("uplink: the last attempt to flush failed: %s", describe(exc))
                return

    async def _wanted(self) -> None:
        """With the gate idle there is nothing to send: stay disconnected until speech."""
        while not self.core.wants_connection() and not self._stopping.is_set():
            self._audio.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._audio.wait()
            self.core.tick(time.monotonic())

    def _settings_for(self, index: int) -> UplinkSettings:
        s = dataclasses.replace(self.settings, url=self.urls[index])
        if index in self._vad_refused:
            s = dataclasses.replace(s, vad=dataclasses.replace(s.vad, send=False))
        return s

    async def _connect(self, index: int) -> ClientConnection:
        s = self._settings_for(index)
        async with asyncio.timeout(s.connect_timeout_s):
            return await websockets.connect(
                protocol.connect_url(s),
                additional_headers=protocol.headers(self._keys[index]),
                max_size=MAX_EVENT_BYTES,
                ping_interval=s.ping_interval_s,
                ping_timeout=s.ping_timeout_s,
                open_timeout=s.connect_timeout_s,
                close_timeout=2,
            )

    async def _session(self) -> None:
        s = self.settings
        started = time.monotonic()
        if self._stopping.is_set():
            self._tries_since_stop += 1
        index = self.endpoints.current
        try:
            ws = await self._open(index)
        except Exception:
            self.core.connection_lost()
            raise
        self.core.model = endpoint_model(self.urls[index], s.model)
        vad = self._settings_for(index).vad  # what this session was opened with
        self.core.connection_made(time.monotonic(), self._paces.get(index))
        self._paces_logged = self._paces.get(index)  # say only what is new of it
        self._first_is_back = 0.0
        try:
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(self._read(ws), name="uplink-reader")
                probe = tg.create_task(self._probe_first(), name="uplink-failback-probe") \
                    if index != 0 else None
                tg.create_task(self._write(ws, reader, probe, vad), name="uplink-writer")
        except* _QuietEnd:
            pass
        except* Exception as group:
            exc = group.exceptions[0]
            self._lost(exc)
            if time.monotonic() - started >= s.healthy_after_s and \
                    classify(exc) is Verdict.TRANSIENT:
                log.warning("uplink: %s after a healthy session; reconnecting now",
                            describe(exc))
                raise _HealthyDrop() from exc
            raise exc from None
        finally:
            self._paces[index] = self.core.server_paces
            with contextlib.suppress(Exception):
                await ws.close()
        self.connected = False
        self._on_status(False, "")

    async def _open(self, index: int) -> ClientConnection:
        """Connect; if the endpoint refuses our turn_detection settings, connect again
        at once without them, and keep to its own defaults from then on."""
        try:
            return await self._connect(index)
        except InvalidStatus as exc:
            if (not self.settings.vad.send or index in self._vad_refused
                    or not settings_refused(exc)):
                raise
            self._vad_refused.add(index)
            log.warning("uplink: %s refused the connection with our turn_detection "
                        "settings (%s); connecting with its own VAD defaults instead (set "
                        "[uplink.vad] to values it accepts, or send = false)",
                        self.urls[index].split("?")[0], describe(exc))
        return await self._connect(index)

    def _lost(self, exc: BaseException) -> None:
        self.connected = False
        self.core.connection_lost()
        self.last_error = describe(exc)
        self._on_status(False, self.last_error)

    async def _read(self, ws: ClientConnection) -> None:
        async for message in ws:
            for out in self.core.receive(message, time.monotonic(), time.time()):
                self._handle(out)
            if self.core.window_full:
                self._audio.set()  # the server may have made room: the writer looks
            self._log_pacing()
        if ws.close_code in (1000, 1001) and self.core.settled:
            log.info("uplink: the server closed the connection (%s) with nothing owed",
                     ws.close_reason or ws.close_code)
            raise _QuietEnd()
        raise UplinkError("server closed the connection")

    async def _probe_first(self) -> None:
        """On a fallback endpoint: every failback_probe_s, see whether the first one
        gives a session again; when it does, the writer moves back to it."""
        while True:
            await asyncio.sleep(self.settings.failback_probe_s)
            try:
                ws = await self._connect(0)
                try:
                    async with asyncio.timeout(self.settings.connect_timeout_s):
                        created = protocol.is_session_created(await ws.recv())
                finally:
                    await ws.close()
            except Exception as exc:
                if classify(exc) is Verdict.FATAL:
                    raise
                log.debug("uplink: %s still unavailable: %s", self.urls[0].split("?")[0],
                          describe(exc))
                continue
            if created:
                self._first_is_back = time.monotonic()
                self._audio.set()
                return

    def _log_pacing(self) -> None:
        paces = self.core.server_paces
        if paces is None or paces is self._paces_logged:
            return
        self._paces_logged = paces
        if paces:
            log.debug("uplink: the server reports its progress; sending at most %.0f s "
                      "ahead of it", self.core.window_samples / 16000)
        else:
            log.info("uplink: the server does not report its progress "
                     "(input_audio_buffer.processed); sending without a window")

    def _handle(self, out: Any) -> None:
        if isinstance(out, Transcript):
            self._on_transcript(out)
        elif isinstance(out, Partial):
            self._on_partial(out.text)
        elif isinstance(out, Ready):
            self.endpoints.session_up()
            self.connected = True
            self.last_error = ""
            self._on_status(True, "")
            log.info("uplink: session %s ready; sending %.1f s of buffered audio",
                     out.session_id, self.core.backlog_s)
            self._audio.set()
        elif isinstance(out, ServerError):
            if out.malformed:
                log.warning("uplink: ignored a malformed server event: %s", out.message)
                return
            ends = server_event_error(out.code, out.message, fatal=out.fatal)
            if ends is not None:
                raise ends
            log.warning("uplink: server error %s: %s", out.code, out.message)

    async def _write(self, ws: ClientConnection, reader: asyncio.Task[None],
                     probe: asyncio.Task[None] | None, vad: VadSettings) -> None:
        try:
            await self._write_until_done(ws, reader, vad)
        finally:
            if probe is not None:
                probe.cancel()

    def _switch_back_due(self, now: float) -> bool:
        back = self._first_is_back
        return bool(back) and (not self.core.segment_open or now - back >= SWITCH_BACK_GRACE_S)

    async def _write_until_done(self, ws: ClientConnection, reader: asyncio.Task[None],
                                vad: VadSettings) -> None:
        s = self.settings
        # Wait for session.created: the server wants no audio before it.
        async with asyncio.timeout(s.connect_timeout_s):
            while not self.core.ready:
                self._audio.clear()
                await self._audio.wait()
        if vad.send:
            await ws.send(protocol.session_update_event(vad))
        while True:
            now = time.monotonic()
            if self._stopping.is_set() and self._past_deadline():
                reader.cancel()  # out of time to send the rest: the caller counts it
                return
            frame = self.core.next_append(now, flush=self._stopping.is_set())
            if frame is not None:
                await ws.send(frame)
                continue
            if self.core.commit_due(now):
                await ws.send(self.core.commit())
                continue
            if self._stopping.is_set() and not self.core.window_full:
                await self._finish(ws, reader)
                return
            if not self.core.wants_connection():
                log.info("uplink: no speech for a while; closing the connection until "
                         "the next words")
                reader.cancel()
                return
            if self._switch_back_due(now):
                log.info("uplink: %s is back; moving to it", self.urls[0].split("?")[0])
                self.endpoints.back_to_first()
                self.core.connection_lost()  # what it did not settle is replayed there
                reader.cancel()
                return
            if self.core.stalled(now, s.answer_timeout_s):
                raise UplinkError(f"server silent for {s.answer_timeout_s:.0f} s "
                                  "with a segment open")
            self.core.tick(now)
            self._audio.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._audio.wait()

    async def _finish(self, ws: ClientConnection, reader: asyncio.Task[None]) -> None:
        """Commit what was sent and wait (bounded) for the transcripts still owed.

        The server answers a commit only after it has handled all audio before it, so
        once it has, every segment it found is known and open segments are what we
        still wait for.
        """
        await ws.send(self.core.commit())
        while (not self.core.commit_answered or self.core.segment_open) \
                and not self._past_deadline() and not reader.done():
            await asyncio.sleep(0.05)
        self.flushed = self.core.commit_answered and not self.core.segment_open
        reader.cancel()

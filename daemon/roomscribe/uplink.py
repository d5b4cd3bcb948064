"""The uplink stage: a thin websockets shell around protocol.ClientCore.

It keeps one connection to the realtime server, sends the ring's audio as it arrives
(the backlog first, as fast as the server takes it), and hands each transcript on.
Reconnects use tenacity; whether to retry, and how fast, comes from retry.classify.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import websockets
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential
from websockets.asyncio.client import ClientConnection

from . import protocol
from .config import UplinkSettings
from .protocol import ClientCore, Partial, Ready, ServerError
from .retry import SLOW_CODES, UplinkError, Verdict, classify, describe, should_retry
from .transcript import Transcript

log = logging.getLogger("roomscribe.uplink")

# Largest server event we accept; a transcript event is a few KB. Bigger frames close
# the connection with 1009 and count as a transient fault.
MAX_EVENT_BYTES = 1 << 20


class _HealthyDrop(Exception):
    """A long, healthy session ended: reconnect at once with a fresh backoff."""


class Uplink:
    def __init__(
        self,
        settings: UplinkSettings,
        core: ClientCore,
        api_key: str,
        on_transcript: Callable[[Transcript], None],
        on_partial: Callable[[str], None] = lambda _text: None,
        on_status: Callable[[bool, str], None] = lambda _up, _err: None,
    ) -> None:
        self.settings = settings
        self.core = core
        self._api_key = api_key
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
        if exc is not None and classify(exc) is Verdict.SLOW:
            return self.settings.fatal_retry_s
        backoff = wait_random_exponential(multiplier=0.5, max=self.settings.backoff_max_s)
        return float(backoff(state))

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
        if slow:
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

    async def _session(self) -> None:
        s = self.settings
        started = time.monotonic()
        if self._stopping.is_set():
            self._tries_since_stop += 1
        try:
            async with asyncio.timeout(s.connect_timeout_s):
                ws = await websockets.connect(
                    protocol.connect_url(s),
                    additional_headers=protocol.headers(self._api_key),
                    max_size=MAX_EVENT_BYTES,
                    ping_interval=s.ping_interval_s,
                    ping_timeout=s.ping_timeout_s,
                    open_timeout=s.connect_timeout_s,
                    close_timeout=2,
                )
        except Exception:
            self.core.connection_lost()
            raise
        self.core.connection_made(time.monotonic())
        try:
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(self._read(ws), name="uplink-reader")
                tg.create_task(self._write(ws, reader), name="uplink-writer")
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
            with contextlib.suppress(Exception):
                await ws.close()
        self.connected = False
        self._on_status(False, "")

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
        raise UplinkError("server closed the connection")

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
            self.connected = True
            self.last_error = ""
            self._on_status(True, "")
            log.info("uplink: session %s ready; sending %.1f s of buffered audio",
                     out.session_id, self.core.backlog_s)
            self._audio.set()
        elif isinstance(out, ServerError):
            if out.malformed:
                log.warning("uplink: ignored a malformed server event: %s", out.message)
            elif out.code in SLOW_CODES:
                raise UplinkError(f"server error {out.code}: {out.message}", Verdict.SLOW)
            elif out.code == "session_expired":
                raise UplinkError("server ended the session (session_expired)")
            else:
                log.warning("uplink: server error %s: %s", out.code, out.message)

    async def _write(self, ws: ClientConnection, reader: asyncio.Task[None]) -> None:
        s = self.settings
        # Wait for session.created: the server wants no audio before it.
        async with asyncio.timeout(s.connect_timeout_s):
            while not self.core.ready:
                self._audio.clear()
                await self._audio.wait()
        if s.vad.send:
            await ws.send(protocol.session_update_event(s.vad))
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

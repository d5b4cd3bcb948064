"""The websockets shell around `Session` and `Scheduler`.

Per connection: the handler reads messages and feeds the session; a sender task writes
the session's events in order; a results task turns finished decodes into events.
Handshake failures are HTTP errors with a JSON body, decided in `process_request`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import MAX_LINE_LENGTH, Request, Response
from websockets.typing import Subprotocol

from ..audio import SAMPLE_RATE_HZ
from ..config import ServerSettings
from . import handshake
from .scheduler import Scheduler, Transcribe
from .session import DecodeJob, Event, Limits, Session, Settle

log = logging.getLogger(__name__)

# Messages websockets holds per connection before the handler reads them:
# max_queue x max_message_bytes (4 x 1 MiB default) per connection.
MAX_QUEUE = 4
# Batches of events waiting for a slow client; past it the reader stops reading.
OUT_QUEUE = 64
CLOSE_TIMEOUT_S = 2.0
# Together's "retry elsewhere": a client should go to its next endpoint at once.
CLOSE_TRY_ELSEWHERE = 4503
# Keepalive: ping every 20 s, but never close a connection for a late pong. A busy
# peer's pong can queue behind audio, and a dead one is closed by the idle timeout.
PING_INTERVAL_S = 20.0


class IngestPace:
    """Whether a client is sending faster than real time (replaying a backlog), from
    the audio it sent over the last few seconds: its finals then yield to live rooms'.
    Keeps one mark per second for WINDOW_S seconds."""

    WINDOW_S = 4.0
    FASTER_THAN = 1.5  # x real time

    def __init__(self) -> None:
        self._marks: deque[tuple[float, int]] = deque()

    def update(self, now: float, total_samples: int) -> bool:
        if not self._marks or now - self._marks[-1][0] >= 1.0:
            self._marks.append((now, total_samples))
        while len(self._marks) > 1 and now - self._marks[1][0] >= self.WINDOW_S:
            self._marks.popleft()
        since, then = self._marks[0]
        span = max(now - since, 1.0)
        return (total_samples - then) / SAMPLE_RATE_HZ > self.FASTER_THAN * span


class _Connection(ServerConnection):
    """Mends a request line whose target holds raw spaces (see
    `handshake.repair_request_line`) before websockets parses it. Holds at most
    MAX_LINE_LENGTH (8 KiB) bytes until the first line is complete, websockets' own limit
    for it; past that the bytes go on as they are and websockets refuses them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head: bytearray | None = bytearray()

    def data_received(self, data: bytes) -> None:
        if self._head is None:
            super().data_received(data)
            return
        self._head += data
        end = self._head.find(b"\r\n")
        if end < 0 and len(self._head) <= MAX_LINE_LENGTH:
            return
        head, self._head = bytes(self._head), None
        if end >= 0:
            head = handshake.repair_request_line(head[:end]) + head[end:]
        super().data_received(head)


class _WebsocketsLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets logs a request it cannot read (a port probe, a client that is not
    HTTP) as an ERROR with a traceback; a server log wants one INFO line with why."""

    # log(), not error(): each connection wraps this in an adapter of its own, whose
    # error() ends up here.
    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if msg == "opening handshake failed":
            exc = sys.exc_info()[1]
            reason = (exc.__cause__ or exc) if exc is not None else None
            log.info("handshake failed: %s", reason or "no valid HTTP request")
            return
        super().log(level, msg, *args, **kwargs)


class RealtimeServer:
    def __init__(self, settings: ServerSettings,
                 transcribe: Transcribe):
        self.settings = settings
        self.scheduler = Scheduler(transcribe, settings.queue_max, settings.workers)
        self.limits = Limits(
            buffer_samples=int(settings.session_buffer_s * SAMPLE_RATE_HZ),
            first_partial_samples=settings.first_partial_ms * SAMPLE_RATE_HZ // 1000,
            partial_interval_samples=settings.partial_interval_ms * SAMPLE_RATE_HZ // 1000)
        self.served = handshake.served_names(settings.model)
        # Closed segments a session may have waiting for the model before its socket
        # stops being read (session_backlog_s x 32 000 bytes: 60 s = 1.9 MB a session).
        self.backlog_samples = int(settings.session_backlog_s * SAMPLE_RATE_HZ)
        self.active = 0
        self.port = 0
        self._server: Server | None = None
        self._dispatcher: asyncio.Task[None] | None = None

    # -- handshake -------------------------------------------------------------------
    def _check(self, request: Request) -> handshake.ConnectParams | handshake.HandshakeError:
        offered = [p.strip() for value in request.headers.get_all("Sec-WebSocket-Protocol")
                   for p in value.split(",") if p.strip()]
        return handshake.check(request.path, request.headers.get_all("Authorization"),
                               offered, self.settings.tokens, self.served)

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        result = self._check(request)
        if isinstance(result, handshake.HandshakeError):
            # The message never holds the key (nor the query, where a key may be).
            log.info("handshake from %s refused: %d %s: %s", connection.remote_address,
                     result.status, result.code, result.message)
            return _json_response(connection, result)
        return None

    @staticmethod
    def select_subprotocol(connection: ServerConnection,
                           offered: Sequence[Subprotocol]) -> Subprotocol | None:
        chosen = handshake.select_subprotocol(offered)
        return Subprotocol(chosen) if chosen else None

    # -- connection --------------------------------------------------------------------
    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        params = self._check(ws.request)
        if isinstance(params, handshake.HandshakeError):  # process_request let it by
            await ws.close(CloseCode.POLICY_VIOLATION, params.code)
            return
        if self.active >= self.settings.max_sessions or self.scheduler.overloaded:
            await self._refuse(ws)
            return
        self.active += 1
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self.active -= 1

        try:
            await self._serve(ws, Session(params, self.limits), release)
        finally:
            release()

    async def _refuse(self, ws: ServerConnection) -> None:
        """Full: say so in Together's terms (error `no_healthy_workers`, close 4503), so
        a client goes to another endpoint at once instead of backing off here."""
        busy = "sessions are all in use" if self.active >= self.settings.max_sessions \
            else "the decode queue is full"
        log.info("refused a session from %s: %s", ws.remote_address, busy)
        message = f"no capacity: {busy}; try another endpoint"
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps({
                "type": "error", "event_id": "event_refused", "message": message,
                "error": {"type": "server_error", "code": "no_healthy_workers",
                          "message": message, "param": None}}))
            await ws.close(CLOSE_TRY_ELSEWHERE, "no_healthy_workers")

    async def _serve(self, ws: ServerConnection, session: Session,
                     release: Callable[[], None]) -> None:
        """`release` frees the session's slot (at the latest when this returns)."""
        outq: asyncio.Queue[list[Event]] = asyncio.Queue(OUT_QUEUE)
        # Results of this session's jobs: its finals (at most the audio backlog_samples
        # allows, one per segment of >= min_speech) + one partial running + one queued
        # + one dropped guess still decoding.
        results: asyncio.Queue[tuple[DecodeJob, str | None, str | None]] = asyncio.Queue()
        progressed = asyncio.Event()  # a decode of this session finished
        pace = IngestPace()

        def deliver(job: DecodeJob, text: str | None, error: str | None) -> None:
            results.put_nowait((job, text, error))

        tasks = [asyncio.create_task(self._send(ws, outq), name=f"ws-send-{session.id}"),
                 asyncio.create_task(self._results(session, results, outq, progressed),
                                     name=f"ws-results-{session.id}")]
        log.info("session %s opened from %s", session.id, ws.remote_address)
        loop = asyncio.get_running_loop()
        idle_s = self.settings.idle_timeout_s
        try:
            await outq.put(session.start() + session.progress())
            last_audio = loop.time()
            while not tasks[0].done():
                try:
                    async with asyncio.timeout_at(last_audio + idle_s):
                        message = await ws.recv()
                except TimeoutError:
                    log.info("session %s: no audio for %.0f s; closing it", session.id,
                             idle_s)
                    # Free the slot first: a room that connects as soon as this client
                    # sees the close must not be refused for it.
                    release()
                    await ws.close(CloseCode.NORMAL_CLOSURE, "idle timeout")
                    break
                before = session.total
                try:
                    outputs = session.receive(message)
                except Exception:  # a bug must cost one message, not the server
                    log.exception("session %s: message failed", session.id)
                    continue
                if session.total != before:
                    last_audio = loop.time()
                bulk = pace.update(last_audio, session.total)
                events = [o for o in outputs if isinstance(o, dict)] + session.progress()
                if events:
                    await outq.put(events)
                for job in outputs:  # in order: a Settle may precede the next final
                    if isinstance(job, DecodeJob):
                        if bulk and not job.final:
                            continue  # a delta of replayed speech is old news: save the CPU
                        self.scheduler.submit(job, deliver, bulk=bulk)
                    elif isinstance(job, Settle):
                        self.scheduler.settle(job)
                # A client that sends far ahead of what is decoded (it ignores
                # `processed`) waits here: TCP backpressure, bounded memory.
                if session.awaiting_samples > self.backlog_samples:
                    while session.awaiting_samples > self.backlog_samples and \
                            not tasks[0].done():
                        progressed.clear()
                        await progressed.wait()
                    last_audio = loop.time()  # we made it wait: not idle
        except ConnectionClosed:
            pass
        finally:
            self.scheduler.forget(session.id)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            log.info("session %s closed (%s)", session.id, ws.close_code)

    @staticmethod
    async def _send(ws: ServerConnection, outq: asyncio.Queue[list[Event]]) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                for event in await outq.get():
                    if event["type"] == "echo.response":
                        event["server_sent_at"] = time.time()
                    await ws.send(json.dumps(event))

    @staticmethod
    async def _results(session: Session,
                       results: asyncio.Queue[tuple[DecodeJob, str | None, str | None]],
                       outq: asyncio.Queue[list[Event]], progressed: asyncio.Event) -> None:
        while True:
            job, text, error = await results.get()
            try:
                events = [o for o in session.decoded(job, text, error) if isinstance(o, dict)]
                events += session.progress()
            except Exception:
                log.exception("session %s: result failed", session.id)
                continue
            progressed.set()
            if events:
                await outq.put(events)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, host: str | None = None, port: int | None = None) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        self._dispatcher = asyncio.create_task(self.scheduler.run(), name="asr-dispatcher")
        self._server = await serve(
            self.handler, host or self.settings.host,
            self.settings.port if port is None else port,
            process_request=self.process_request,
            select_subprotocol=self.select_subprotocol, create_connection=_Connection,
            logger=_WebsocketsLog(logging.getLogger("websockets.server")),
            max_size=self.settings.max_message_bytes, max_queue=MAX_QUEUE,
            ping_interval=PING_INTERVAL_S, ping_timeout=None,
            close_timeout=CLOSE_TIMEOUT_S)
        sockets = list(self._server.sockets)
        self.port = int(sockets[0].getsockname()[1]) if sockets else 0
        return self.port

    async def close(self) -> None:
        """Close every connection (1001) and stop the dispatcher; bounded in time."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), CLOSE_TIMEOUT_S * 2)
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        self.scheduler.close()


@contextlib.asynccontextmanager
async def running(settings: ServerSettings,
                  transcribe: Transcribe,
                  host: str | None = None, port: int | None = None,
                  ) -> AsyncIterator[RealtimeServer]:
    server = RealtimeServer(settings, transcribe)
    await server.start(host, port)
    try:
        yield server
    finally:
        await server.close()


def _json_response(connection: ServerConnection,
                   error: handshake.HandshakeError) -> Response:
    response = connection.respond(HTTPStatus(error.status), error.body())
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response

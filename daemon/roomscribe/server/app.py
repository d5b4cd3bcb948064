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
from collections.abc import AsyncIterator, Callable, Sequence
from http import HTTPStatus
from typing import Any

import numpy as np
import numpy.typing as npt
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import MAX_LINE_LENGTH, Request, Response
from websockets.typing import Subprotocol

from ..audio import SAMPLE_RATE_HZ
from ..config import ServerSettings
from . import handshake
from .scheduler import Scheduler
from .session import DecodeJob, Event, Limits, Session, Settle

log = logging.getLogger(__name__)

# Messages websockets holds per connection before the handler reads them:
# max_queue x max_message_bytes (4 x 1 MiB default) per connection.
MAX_QUEUE = 4
# Batches of events waiting for a slow client; past it the reader stops reading.
OUT_QUEUE = 64
CLOSE_TIMEOUT_S = 2.0


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
                 transcribe: Callable[[npt.NDArray[np.int16], bool], str]):
        self.settings = settings
        self.scheduler = Scheduler(transcribe, settings.queue_max, settings.workers)
        self.limits = Limits(
            buffer_samples=int(settings.session_buffer_s * SAMPLE_RATE_HZ),
            first_partial_samples=settings.first_partial_ms * SAMPLE_RATE_HZ // 1000,
            partial_interval_samples=settings.partial_interval_ms * SAMPLE_RATE_HZ // 1000)
        self.served = handshake.served_names(settings.model)
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
        if not isinstance(result, handshake.HandshakeError) and \
                self.active >= self.settings.max_sessions:
            result = handshake.HandshakeError(
                503, "server_busy", f"all {self.settings.max_sessions} sessions are in use; "
                "try again later", type="server_error")
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
        if self.active >= self.settings.max_sessions:  # raced past process_request
            await ws.close(CloseCode.TRY_AGAIN_LATER, "server busy")
            return
        self.active += 1
        session = Session(params, self.limits)
        outq: asyncio.Queue[list[Event]] = asyncio.Queue(OUT_QUEUE)
        # Results of this session's jobs: at most the queued finals (queue_max, the
        # reader stops submitting when outq is full) + one partial running + one queued.
        results: asyncio.Queue[tuple[DecodeJob, str | None, str | None]] = asyncio.Queue(
            self.settings.queue_max + 2)

        def deliver(job: DecodeJob, text: str | None, error: str | None) -> None:
            try:
                results.put_nowait((job, text, error))
            except asyncio.QueueFull:
                log.error("session %s: result queue full, dropping %s", session.id,
                          job.item_id)

        tasks = [asyncio.create_task(self._send(ws, outq), name=f"ws-send-{session.id}"),
                 asyncio.create_task(self._results(session, results, outq),
                                     name=f"ws-results-{session.id}")]
        log.info("session %s opened from %s", session.id, ws.remote_address)
        try:
            await outq.put(session.start())
            async for message in ws:
                try:
                    outputs = session.receive(message)
                except Exception:  # a bug must cost one message, not the server
                    log.exception("session %s: message failed", session.id)
                    continue
                events = [o for o in outputs if isinstance(o, dict)]
                if events:
                    await outq.put(events)
                for job in outputs:  # in order: a Settle may precede the next final
                    if isinstance(job, DecodeJob):
                        await self.scheduler.submit(job, deliver)
                    elif isinstance(job, Settle):
                        await self.scheduler.settle(job)
                if tasks[0].done():
                    break
        except ConnectionClosed:
            pass
        finally:
            await self.scheduler.forget(session.id)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.active -= 1
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
                       outq: asyncio.Queue[list[Event]]) -> None:
        while True:
            job, text, error = await results.get()
            try:
                events = [o for o in session.decoded(job, text, error) if isinstance(o, dict)]
            except Exception:
                log.exception("session %s: result failed", session.id)
                continue
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
                  transcribe: Callable[[npt.NDArray[np.int16], bool], str],
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

"""A TCP proxy the fault tests put between the daemon and a real peer.

The fault is the point here, so this is the one fake in the suite: it forwards bytes
both ways until told to `cut()` every connection (a server crash as the client sees
it), to `blackhole()` (sockets stay open, no byte moves either way: Wi-Fi gone with
nothing closed; `heal()` delivers what was held, as TCP would), to `refuse()` new
connections, or to `refuse_requests()` whose request line holds a text with an HTTP
error (a server that rejects a parameter), or to `refuse_mqtt5()` logins (a broker
without MQTT 5 in front of a real Mosquitto).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any

from conftest import free_port
from timing import scaled


class FaultProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.mode = "pass"  # "pass" | "blackhole" | "refuse"
        self.connections = 0
        self.refused_requests = 0
        self._refuse_text = ""
        self._refusal = b""
        self._refuse_mqtt5 = ""  # "answer" | "close"
        self.refused_mqtt5 = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(scaled(5)):
            raise RuntimeError("fault proxy did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()
        server.close()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(5)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            writer.close()
            return
        self.connections += 1
        head = b""
        if self._refuse_text:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                writer.close()
                return
            if self._refuse_text.encode() in head.split(b"\r\n", 1)[0]:
                self.refused_requests += 1
                writer.write(self._refusal)
                await writer.drain()
                writer.close()
                return
        if self._refuse_mqtt5:
            try:
                head = await self._mqtt_connect(reader)
            except (asyncio.IncompleteReadError, IndexError):
                writer.close()
                return
            if head[-1] == 5:
                self.refused_mqtt5 += 1
                if self._refuse_mqtt5 == "answer":
                    writer.write(bytes([0x20, 2, 0, 1]))  # CONNACK 1: unacceptable version
                    with contextlib.suppress(ConnectionError):  # the client gave up first
                        await writer.drain()
                writer.close()
                return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        up_writer.write(head)
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer),
                             return_exceptions=True)
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    @staticmethod
    async def _mqtt_connect(reader: asyncio.StreamReader) -> bytes:
        """A CONNECT packet's fixed header and variable header up to its protocol level
        byte (the last byte returned): 2 bytes of name length, "MQTT", then the level."""
        head = await reader.readexactly(2)
        while head[-1] & 0x80:  # the remaining length goes on (variable-length integer)
            head += await reader.readexactly(1)
        return head + await reader.readexactly(7)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            while self.mode == "blackhole":
                # Held, not dropped: TCP delivers every byte in order once the path is
                # back, or the connection dies. Bytes dropped from the middle of a stream
                # (as this proxy once did) are a fault no network makes.
                await asyncio.sleep(0.05)
            writer.write(data)
            await writer.drain()
        writer.close()

    async def _cut(self) -> None:
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._writers.clear()

    def cut(self) -> None:
        self._call(self._cut())

    def blackhole(self) -> None:
        self.mode = "blackhole"

    def refuse(self) -> None:
        self.mode = "refuse"

    def refuse_requests(self, text: str, status: int, body: str) -> None:
        """Answer a handshake whose request line holds `text` with HTTP `status` and a
        JSON `body`, and close; forward the others."""
        self._refuse_text = text
        self._refusal = (f"HTTP/1.1 {status} Refused\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body.encode())}\r\nConnection: close\r\n"
                         f"\r\n{body}").encode()

    def refuse_mqtt5(self, answer: bool = True) -> None:
        """Refuse an MQTT 5 login as brokers without it do: answer CONNACK with return
        code 1 (Mosquitto 1.x, Aedes) or close the connection unanswered (RabbitMQ
        before 3.13); forward 3.1.1 ones."""
        self._refuse_mqtt5 = "answer" if answer else "close"

    def heal(self) -> None:
        self.mode = "pass"

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

"""Other people's clients, unmodified but for the host, against `roomscribe serve` started
through the real CLI: Together's documented browser-style handshake (built byte for
byte), Together's SDK session mode, and OpenAI's SDK (beta and GA transcription flows).
Real speech; a test checks what a user would: every word tiny.en gets offline arrives,
in order, once, and the connection stays up."""

from __future__ import annotations

import base64
import difflib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from conftest import NO_SERVER_EXTRA
from server_support import normalise, speech, transcriber

pytest.importorskip("faster_whisper", reason=NO_SERVER_EXTRA)
pytest.importorskip("together")
pytest.importorskip("openai")

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from conftest import assert_heard, free_port, reference_texts

pytestmark = pytest.mark.server
KEY = "tgp-Test-Key-6f1c"
OTHER_KEY = "tgp-Other-Key-2b7d"
ROOMSCRIBE = str(Path(sys.executable).parent / "roomscribe")
JFK, LJ20, LJ35, AMI = ("jfk-44k1-stereo.wav", "lj002-0020-22k05.wav",
                        "lj002-0035-22k05.wav", "ami-es2011a-16k.wav")
ALL = [JFK, LJ20, LJ35, AMI]
# Four passes of the JFK clip with the others between: 65 s of audio with the gaps.
LONG = [JFK, LJ20, JFK, LJ35, JFK, AMI, JFK]
GAP_S = 1.5
COMPLETED = "conversation.item.input_audio_transcription.completed"
COMMIT_EMPTY = "input_audio_buffer_commit_empty"


# -- the server, through the real CLI --------------------------------------------------------
@dataclass
class Served:
    port: int
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("serve")
    config = tmp / "server.toml"
    # The tokens out of the config, as an installed server keeps them: in the
    # server_tokens credential, here beside the config (as `sudo roomscribe serve` finds
    # it on an installed machine), one a line.
    (tmp / "server_tokens").write_text(f"{KEY}\n\n{OTHER_KEY}\n")
    config.write_text('[log]\nlevel = "info"\n')
    port = free_port()
    log = tmp / "server.log"
    # Options after the subcommand, --port before --host: as `--help` shows them.
    with log.open("wb") as out:
        proc = subprocess.Popen([ROOMSCRIBE, "serve", "--port", str(port), "--host",
                                 "127.0.0.1", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "roomscribe serve did not listen"
                time.sleep(0.1)
        yield Served(port, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.mark.parametrize("order", [["--host", "0.0.0.0", "--port", "0"],
                                   ["--port", "0", "--host", "0.0.0.0"]])
def test_serve_takes_host_and_port_in_either_order(order: list[str], tmp_path: Path) -> None:
    # No tokens on a non-loopback host: refused before any model is loaded, which shows
    # the options reached the server (argparse used to refuse them).
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMSCRIBE")}
    done = subprocess.run([ROOMSCRIBE, "serve", *order], capture_output=True, text=True,
                          timeout=60, env=env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "tokens" in lines[0] and "0.0.0.0" in lines[0], lines


def test_serve_without_config_reads_the_one_other_commands_read(tmp_path: Path) -> None:
    # `roomscribe serve` with no --config read the built-in defaults while every other
    # command read $ROOMSCRIBE_CONFIG (else the installed /etc/roomscribe/config.toml).
    # A config that is refused before any model loads shows which one it read.
    cfg = tmp_path / "lan.toml"
    cfg.write_text('[server]\nhost = "0.0.0.0"\n')
    env = {**os.environ, "ROOMSCRIBE_CONFIG": str(cfg)}
    for command in ([ROOMSCRIBE, "serve"], [sys.executable, "-m", "roomscribe.server"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env,
                              cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and str(cfg) in lines[0] and "tokens" in lines[0], lines


# -- audio and words -------------------------------------------------------------------------
def program(names: list[str], rate: int) -> npt.NDArray[np.int16]:
    gap = np.zeros(int(GAP_S * rate), np.int16)
    return np.concatenate([gap, *[np.concatenate([speech(n, rate), gap]) for n in names]])


@functools.cache
def offline_words(name: str) -> tuple[str, ...]:
    """The reference words tiny.en gets on the whole file at once: the target."""
    got = set(normalise(transcriber().transcribe(speech(name), True)))
    return tuple(w for w in normalise(reference_texts()[name]) if w in got)


def check_words(texts: list[str], names: list[str]) -> int:
    """Every offline word of every clip played, in order; none twice (assert_heard's
    length check). Returns how many target words there were."""
    want = [w for n in names for w in offline_words(n)]
    heard = [w for t in texts for w in normalise(t)]
    matcher = difflib.SequenceMatcher(a=want, b=heard, autojunk=False)
    matched = sum(block.size for block in matcher.get_matching_blocks())
    assert matched == len(want), f"missing words\nwant  {want}\nheard {heard}"
    assert_heard(texts, [reference_texts()[n] for n in names])
    return len(want)


def chunks(pcm: npt.NDArray[np.int16], rate: int, ms: int = 100) -> Iterator[bytes]:
    step = rate * ms // 1000
    for i in range(0, len(pcm), step):
        yield pcm[i:i + step].astype("<i2").tobytes()


# -- Together's documented handshake, byte for byte -------------------------------------------
class RawClient:
    """A socket, the request exactly as written, and websockets' sans-I/O framing."""

    def __init__(self, port: int, request: bytes):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.sock.recv(65536)
            if not data:
                break
            head += data
        self.head, _, rest = head.partition(b"\r\n\r\n")
        self.body = b""
        if self.status != 101:  # an HTTP error: its body, up to the server's close
            while data := self.sock.recv(65536):
                rest += data
            self.body, rest = rest, b""
        self.proto = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/"), state=State.OPEN)
        self.proto.receive_data(rest)
        self.frames: list[Frame] = []

    @property
    def status(self) -> int:
        return int(self.head.split(b" ", 2)[1])

    def send(self, event: dict[str, Any]) -> None:
        self.proto.send_text(json.dumps(event).encode())
        self.sock.sendall(b"".join(self.proto.data_to_send()))

    def recv(self) -> dict[str, Any]:
        while not self.frames:
            self.frames += [f for f in self.proto.events_received()
                            if f.opcode is Opcode.TEXT]
            if self.frames:
                break
            data = self.sock.recv(65536)  # the socket's timeout bounds the wait
            assert data, "server closed the connection"
            self.proto.receive_data(data)
            self.sock.sendall(b"".join(self.proto.data_to_send()))  # pongs
        event: dict[str, Any] = json.loads(self.frames.pop(0).data)
        return event

    def close(self) -> None:
        self.sock.close()


def documented_request(port: int, key: str) -> bytes:
    # The key in the query with a raw space, and again in a subprotocol, as Together's
    # browser-style example sends it.
    return (f"GET /v1/realtime?intent=transcription&model=openai/whisper-large-v3"
            f"&input_audio_format=pcm_s16le_16000&authorization=Bearer {key} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: realtime, openai-insecure-api-key.{key}, "
            "openai-beta.realtime-v1\r\n"
            "\r\n").encode()


def test_documented_handshake_byte_for_byte_transcribes(served: Served) -> None:
    client = RawClient(served.port, documented_request(served.port, KEY))
    try:
        assert client.status == 101, client.head
        assert b"\r\nSec-WebSocket-Protocol: realtime" in client.head
        assert client.recv()["type"] == "session.created"
        pcm = program(ALL, 16000)
        for chunk in chunks(pcm, 16000):
            client.send({"type": "input_audio_buffer.append",
                         "audio": base64.b64encode(chunk).decode()})
        client.send({"type": "input_audio_buffer.commit"})
        committed: list[str] = []
        done: dict[str, str] = {}
        answered = False  # the commit: by its error (nothing left), or a last segment
        while not (answered and set(done) >= set(committed)):
            event = client.recv()
            if event["type"] == "input_audio_buffer.committed":
                committed.append(event["item_id"])
                answered |= event["audio_end_ms"] >= len(pcm) // 16
            elif event["type"] == COMPLETED:
                done[event["item_id"]] = event["transcript"]
            elif event["type"] == "error":
                assert event["error"]["code"] == COMMIT_EMPTY, event
                assert event["message"]  # the field the documented example prints
                answered = True
        n = check_words([done[i] for i in committed], ALL)
        print(f"documented handshake: {n} of {n} target words")
    finally:
        client.close()


def test_refused_handshakes_are_http_errors_logged_without_the_key(served: Served) -> None:
    other = RawClient(served.port, documented_request(served.port, OTHER_KEY))
    try:  # the credential's second token is let in too
        assert other.status == 101, other.head
        assert other.recv()["type"] == "session.created"
    finally:
        other.close()
    wrong = "tgp-Wrong-Key-9d2e"
    client = RawClient(served.port, documented_request(served.port, wrong))
    client.close()
    assert client.status == 401
    assert json.loads(client.body)["error"]["code"] == "invalid_api_key"
    twice = documented_request(served.port, KEY).replace(
        b"\r\n\r\n", f"\r\nAuthorization: Bearer {KEY}\r\nAuthorization: Bearer x\r\n\r\n"
        .encode())
    client = RawClient(served.port, twice)
    client.close()
    assert client.status == 400
    assert json.loads(client.body)["error"]["code"] == "invalid_request"
    socket.create_connection(("127.0.0.1", served.port), timeout=10).close()  # a probe
    # One INFO line each, with the reason; the log is written as it happens.
    deadline = time.monotonic() + 30
    while "closed while reading" not in served.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = served.log_text()
    assert "refused: 401 invalid_api_key" in log and "refused: 400 invalid_request" in log
    assert "INFO roomscribe.server.app: handshake failed: connection closed while reading" in log
    assert "Traceback" not in log
    assert wrong not in log and KEY not in log and OTHER_KEY not in log


# -- Together's SDK, session mode ----------------------------------------------------------------
def test_together_session_60s_no_reconnects_every_word(served: Served) -> None:
    from together import Together

    events: list[Any] = []
    pcm = program(LONG, 16000)
    assert len(pcm) / 16000 >= 60
    client = Together(api_key=KEY, base_url=f"http://127.0.0.1:{served.port}")
    with client.beta.realtime.transcription(model="openai/whisper-large-v3",
                                            event_callback=events.append) as session:
        start = time.monotonic()
        for i, chunk in enumerate(chunks(pcm, 16000)):
            session.append(chunk)
            # Paced like a microphone, so the SDK's echo probes (every ~5 s) all run.
            time.sleep(max(0.0, start + (i + 1) * 0.1 - time.monotonic()))
        # Generous quiet period: on a slow CPU the last final may take seconds.
        text = session.flush(quiescence=10.0, timeout=120.0)
        transcripts = list(session.transcripts)
    reconnects = [e for e in events if e.type in ("reconnecting", "reconnected")]
    assert not reconnects, f"{len(reconnects)} reconnect events: {reconnects}"
    assert text == " ".join(transcripts)
    n = check_words(transcripts, LONG)
    print(f"together: {len(pcm) / 16000:.1f} s, 0 reconnects, {n} of {n} target words")


# -- OpenAI's SDK -------------------------------------------------------------------------------
def bounded(conn: Any, seconds: float) -> threading.Timer:
    """Closes the connection after `seconds`, so that no recv() waits forever."""
    timer = threading.Timer(seconds, conn.close)
    timer.daemon = True
    timer.start()
    return timer


def recv(conn: Any) -> Any:
    """The next event but `input_audio_buffer.processed` (Together's watermark, which
    OpenAI's SDK does not know: it files it under some other class, type intact)."""
    while True:  # bounded: bounded() closes the connection
        event = conn.recv()
        if event.type != "input_audio_buffer.processed":
            return event


def test_openai_ga_transcription_60s_every_word(served: Served) -> None:
    from openai import OpenAI
    from openai.types.realtime import (
        ConversationItemInputAudioTranscriptionCompletedEvent,
        RealtimeErrorEvent,
        SessionCreatedEvent,
        SessionUpdatedEvent,
    )

    client = OpenAI(api_key=KEY, base_url=f"http://127.0.0.1:{served.port}/v1")
    pcm = program(LONG, 24000)  # OpenAI's only PCM rate
    assert len(pcm) / 24000 >= 60
    with client.realtime.connect(model="gpt-4o-transcribe") as conn:
        timer = bounded(conn, 280)
        conn.session.update(session={"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "gpt-4o-transcribe"},
            "turn_detection": {"type": "server_vad", "threshold": 0.5,
                               "prefix_padding_ms": 300, "silence_duration_ms": 500}}}})
        assert isinstance(recv(conn), SessionCreatedEvent)
        updated = recv(conn)
        assert isinstance(updated, SessionUpdatedEvent), updated
        assert updated.session.type == "transcription"
        for chunk in chunks(pcm, 24000):
            conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
        conn.input_audio_buffer.commit()
        committed: list[str] = []
        done: dict[str, str] = {}
        answered = False
        while not (answered and set(done) >= set(committed)):
            event = recv(conn)
            if event.type == "input_audio_buffer.committed":
                committed.append(event.item_id)
                answered |= (event.model_extra or {}).get("audio_end_ms", 0) \
                    >= len(pcm) * 1000 // 24000
            elif isinstance(event, ConversationItemInputAudioTranscriptionCompletedEvent):
                done[event.item_id] = event.transcript
            elif isinstance(event, RealtimeErrorEvent):
                assert event.error.code == COMMIT_EMPTY, event
                answered = True
        timer.cancel()
    n = check_words([done[i] for i in committed], LONG)
    print(f"openai GA: {len(pcm) / 24000:.1f} s on one connection, {n} of {n} target words")


def test_openai_ga_deltas_add_up_to_how_the_final_begins(served: Served) -> None:
    """OpenAI's clients add each delta to the text so far (LiveKit's OpenAI plugin:
    `current_text += delta`). Paced as a microphone, so that partials run."""
    from openai import OpenAI
    from openai.types.realtime import (
        ConversationItemInputAudioTranscriptionCompletedEvent,
        ConversationItemInputAudioTranscriptionDeltaEvent,
        RealtimeErrorEvent,
    )

    client = OpenAI(api_key=KEY, base_url=f"http://127.0.0.1:{served.port}/v1")
    pcm = program([JFK], 24000)
    shown: dict[str, str] = {}
    done: dict[str, str] = {}
    with client.realtime.connect(model="gpt-4o-transcribe") as conn:
        timer = bounded(conn, 120)

        def microphone() -> None:
            start = time.monotonic()
            for i, chunk in enumerate(chunks(pcm, 24000)):
                conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
                time.sleep(max(0.0, start + (i + 1) * 0.1 - time.monotonic()))
            conn.input_audio_buffer.commit()

        sender = threading.Thread(target=microphone, daemon=True)
        sender.start()
        committed: list[str] = []
        answered = False
        while not (answered and set(done) >= set(committed)):
            event = recv(conn)
            if isinstance(event, ConversationItemInputAudioTranscriptionDeltaEvent):
                shown[event.item_id] = shown.get(event.item_id, "") + (event.delta or "")
            elif isinstance(event, ConversationItemInputAudioTranscriptionCompletedEvent):
                done[event.item_id] = event.transcript
            elif event.type == "input_audio_buffer.committed":
                committed.append(event.item_id)
                answered |= (event.model_extra or {}).get("audio_end_ms", 0) \
                    >= len(pcm) * 1000 // 24000
            elif isinstance(event, RealtimeErrorEvent):
                assert event.error.code == COMMIT_EMPTY, event
                answered = True
        sender.join(10)
        timer.cancel()
    check_words([done[i] for i in committed], [JFK])
    assert shown, "no deltas"
    for item, text in shown.items():
        # Each word once: whole hypotheses added up would read "And soAnd so my ...".
        assert len(normalise(text)) <= len(normalise(done[item])) + 1, (text, done[item])
    # The words were shown as they came, not only in the finals: how many depends on
    # how fast partials decode beside the other tests (run alone: 12 of 22 words, 6 in
    # one item; in a full run of the suite once 10, at most 4 in one item).
    final_words = sum(len(normalise(done[i])) for i in committed)
    shown_words = sum(len(normalise(t)) for t in shown.values())
    assert shown_words >= 0.4 * final_words, (shown, done)
    assert max(len(normalise(t)) for t in shown.values()) >= 3, shown
    print(f"openai GA deltas: {shown}")


def test_openai_beta_transcription_manual_commits(served: Served) -> None:
    from openai import OpenAI
    from openai.types.beta.realtime import (
        ConversationItemInputAudioTranscriptionCompletedEvent,
        ErrorEvent,
        InputAudioBufferCommittedEvent,
        SessionCreatedEvent,
        TranscriptionSessionUpdatedEvent,
    )

    # The beta client always dials wss:// from base_url; websocket_base_url is its own
    # setting for where the socket is (the host, and plain ws:// on loopback).
    client = OpenAI(api_key=KEY, base_url=f"http://127.0.0.1:{served.port}/v1",
                    websocket_base_url=f"ws://127.0.0.1:{served.port}/v1")
    texts: list[str] = []
    with client.beta.realtime.connect(model="gpt-4o-transcribe",
                                      extra_query={"intent": "transcription"}) as conn:
        timer = bounded(conn, 200)
        conn.transcription_session.update(session={
            "input_audio_format": "pcm16",
            "input_audio_transcription": {"model": "gpt-4o-transcribe"},
            "turn_detection": None})
        assert isinstance(recv(conn), SessionCreatedEvent)
        updated = recv(conn)
        assert isinstance(updated, TranscriptionSessionUpdatedEvent), updated
        assert updated.session.turn_detection is None
        for name in ALL:
            pcm = speech(name, 24000)
            for chunk in chunks(pcm, 24000):
                conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
            conn.input_audio_buffer.commit()
            committed = recv(conn)
            assert isinstance(committed, InputAudioBufferCommittedEvent), committed
            event = recv(conn)
            assert isinstance(event, ConversationItemInputAudioTranscriptionCompletedEvent)
            assert event.item_id == committed.item_id
            texts.append(event.transcript)
        conn.input_audio_buffer.commit(event_id="evt_empty")  # nothing left
        error = recv(conn)
        assert isinstance(error, ErrorEvent), error
        assert error.error.code == COMMIT_EMPTY and error.error.event_id == "evt_empty"
        timer.cancel()
    n = check_words(texts, ALL)
    print(f"openai beta: {n} of {n} target words")

"""The speech gate through the whole daemon: real daemon, real server, real Mosquitto.

The room is a WAV played at real time by the `file` source. Between the daemon and
the server sits a proxy that counts connections and the bytes the daemon sends, so
"the socket closed in the silence", "a knock opened nothing" and "nothing left the
device while muted" are what a user (or their bill) would see.
"""

from __future__ import annotations

import datetime as dt
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import Broker, assert_heard, normal_words, reference_texts
from faultproxy import FaultProxy
from mqttkit import Subscriber, wait
from stack import Proc, daemon_config, read_mono_16k, start_daemon, start_server

pytestmark = pytest.mark.server

JFK, LJ20 = "jfk-44k1-stereo.wav", "lj002-0020-22k05.wav"  # "And so, ..." / "In 1813."
IDLE_CLOSE = "closing the connection until the next words"
SR = 16000


class CountingProxy(FaultProxy):
    """FaultProxy that also counts the bytes the daemon sends to the server."""

    def __init__(self, target_port: int) -> None:
        self.upstream_bytes = 0
        super().__init__(target_port)

    async def _pump(self, reader, writer) -> None:  # type: ignore[no-untyped-def]
        upstream = writer.get_extra_info("peername")[1] == self.target_port
        while data := await reader.read(65536):
            if upstream:
                self.upstream_bytes += len(data)
            writer.write(data)
            await writer.drain()
        writer.close()


@dataclass
class Room:
    path: Path
    spans: list[tuple[str, float, float]]  # (clip, start_s, end_s)


def build_room(path: Path, parts: list[tuple[str, float] | str]) -> Room:
    """16 kHz mono WAV: ("quiet", s) is -72 dBFS hiss, ("burst", s) loud noise (a
    cough or a door), a bare name is that recording from ../shared/audio."""
    rng = np.random.default_rng(11)
    pcm: list[np.ndarray] = []
    spans: list[tuple[str, float, float]] = []
    t = 0.0
    for part in parts:
        if isinstance(part, str):
            chunk = read_mono_16k(part)
            spans.append((part, t, t + len(chunk) / SR))
        elif part[0] == "quiet":
            chunk = rng.normal(0, 8, int(part[1] * SR))
        else:
            chunk = rng.normal(0, 4000, int(part[1] * SR))  # about -18 dBFS
        pcm.append(np.asarray(chunk, dtype=np.float32))
        t += len(chunk) / SR
    data = np.clip(np.concatenate(pcm), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(data.tobytes())
    return Room(path, spans)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    proc, port = start_server(tmp_path_factory.mktemp("server"))
    yield port
    proc.stop()


@pytest.fixture
def proxy(server: int) -> Iterator[CountingProxy]:
    p = CountingProxy(server)
    yield p
    p.close()


def run_daemon(tmp: Path, room: Room, proxy: CountingProxy, broker: Broker,
               gate: str) -> Proc:
    config = daemon_config(tmp, server_port=proxy.port, broker_port=broker.port,
                           wav=room.path, realtime=True, extra=f"[gate]\n{gate}\n")
    return start_daemon(tmp, config)


def finish(daemon: Proc, sub: Subscriber, timeout_s: float = 120) -> str:
    """The file ends: the daemon flushes, exits 0; its log for the assertions."""
    try:
        code = daemon.wait(timeout_s)
    finally:
        daemon.stop()
        sub.close()
    out = daemon.output()
    assert code == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    return out


def iso(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def first_words(text: str, n: int = 3) -> list[str]:
    return normal_words(text)[:n]


def test_first_word_after_a_long_silence_and_the_idle_disconnect(
        tmp_path: Path, broker: Broker, proxy: CountingProxy) -> None:
    # no socket in the first silence; "In" must survive the connect; the socket
    # closes 10 s into the next silence and "And so" must survive the reconnect
    room = build_room(tmp_path / "room.wav",
                      [("quiet", 12.0), LJ20, ("quiet", 16.0), JFK, ("quiet", 2.0)])
    sub = Subscriber(broker.port)
    daemon = run_daemon(tmp_path, room, proxy, broker, "idle_disconnect_s = 10")
    out = finish(daemon, sub)
    transcripts = sub.transcripts()
    texts = [t["text"] for t in transcripts]
    refs = reference_texts()
    assert_heard(texts, [refs[LJ20], refs[JFK]])
    assert "in" in first_words(texts[0], 2), texts
    # JFK's transcript: the first one after the 1813 one
    jfk = next(i for i, t in enumerate(texts) if i > 0 and "thirteen" not in
               normal_words(t))
    assert {"and", "so"} & set(first_words(texts[jfk])), texts
    # idle in the silence, reconnected for the words: the audio that waited while
    # connecting came from the buffer (the first word is there)
    assert out.count(IDLE_CLOSE) == 1
    assert proxy.connections == 2, out[-3000:]
    # times across the gated gap: the two utterances' starts are as far apart as
    # they were said (the gap the gate skipped is not lost from the timeline)
    said = room.spans[1][1] - room.spans[0][1]
    heard = iso(transcripts[jfk]["start"]) - iso(transcripts[0]["start"])
    print(f"texts {texts}; starts {heard:.2f} s apart, said {said:.2f} s apart")
    assert abs(heard - said) < 0.7, (heard, said)
    starts = [iso(t["start"]) for t in transcripts]
    assert starts == sorted(starts)
    assert all(not t["replayed"] for t in transcripts)


def test_a_knock_in_the_silence_opens_nothing(
        tmp_path: Path, broker: Broker, proxy: CountingProxy) -> None:
    # 100 ms: the gate opens on 180 ms of speech, so that a quick "Yes." alone in a
    # noisy room gets through (tests/test_gate.py); a 180 ms burst now opens it too.
    room = build_room(tmp_path / "room.wav",
                      [("quiet", 8.0), ("burst", 0.10), ("quiet", 7.0), LJ20,
                       ("quiet", 6.0)])
    sub = Subscriber(broker.port)
    daemon = run_daemon(tmp_path, room, proxy, broker, "idle_disconnect_s = 3")
    out = finish(daemon, sub)
    texts = sub.texts()
    # no connection in the silence, one for the words at 15 s (closed idle 3 s after
    # them): had the knock at 8 s opened the gate, it would have cost a connection
    # of its own (and the file ending while idle again costs none)
    assert out.count(IDLE_CLOSE) == 1
    assert proxy.connections == 1, out[-3000:]
    assert_heard(texts, [reference_texts()[LJ20]])
    assert "in" in first_words(texts[0], 2), texts


def test_nothing_leaves_while_muted_and_the_first_word_after_unmute_does(
        tmp_path: Path, broker: Broker, proxy: CountingProxy) -> None:
    room = build_room(tmp_path / "room.wav",
                      [("quiet", 1.0), JFK, ("quiet", 10.0), LJ20, ("quiet", 2.0)])
    state = tmp_path / "state-test"
    state.mkdir()
    (state / "mute").write_text("ON\n")  # muted before it starts, as after a reboot
    sub = Subscriber(broker.port)
    daemon = run_daemon(tmp_path, room, proxy, broker, "idle_disconnect_s = 30")
    try:
        wait(lambda: "capturing from file" in daemon.output(), timeout_s=60,
             what=f"the daemon to start:\n{daemon.output()[-2000:]}")
        playing_since = time.monotonic()
        # JFK plays muted; unmute in the middle of the quiet after him
        unmute_at = playing_since + room.spans[0][2] + 5.0
        time.sleep(max(0.0, unmute_at - time.monotonic()))
        sent_while_muted = proxy.upstream_bytes
        connections_while_muted = proxy.connections
        heard_while_muted = sub.texts()
        sub.client.publish("roomscribe/test/mute/set", "OFF", qos=1)
    except BaseException:
        daemon.stop()
        sub.close()
        raise
    out = finish(daemon, sub)
    # 11 s of JFK would be some 470 KB of appends: at most a session handshake went
    # (websockets compresses: 11 s of JFK is still a few hundred KB)
    assert sent_while_muted < 4000, (sent_while_muted, out[-3000:])
    # a socket opened at start, before the first frame said "muted", is closed
    assert connections_while_muted <= 1
    assert proxy.connections == connections_while_muted + 1
    assert heard_while_muted == []
    texts = sub.texts()
    assert_heard(texts, [reference_texts()[LJ20]])
    assert "in" in first_words(texts[0], 2), texts
    assert not {"americans", "country"} & set(normal_words(" ".join(texts)))


def test_gate_off_streams_everything_on_one_connection(
        tmp_path: Path, broker: Broker, proxy: CountingProxy) -> None:
    room = build_room(tmp_path / "room.wav",
                      [("quiet", 1.0), LJ20, ("quiet", 8.0), JFK, ("quiet", 2.0)])
    sub = Subscriber(broker.port)
    daemon = run_daemon(tmp_path, room, proxy, broker,
                        'mode = "off"\nidle_disconnect_s = 3')
    out = finish(daemon, sub)
    texts = sub.texts()
    refs = reference_texts()
    assert_heard(texts, [refs[LJ20], refs[JFK]])
    assert "in" in first_words(texts[0], 2), texts
    assert proxy.connections == 1 and IDLE_CLOSE not in out, out[-3000:]
    transcripts = sub.transcripts()
    jfk = next(i for i, t in enumerate(texts) if i > 0 and "thirteen" not in
               normal_words(t))
    assert {"and", "so"} & set(first_words(texts[jfk])), texts
    said = room.spans[1][1] - room.spans[0][1]
    heard = iso(transcripts[jfk]["start"]) - iso(transcripts[0]["start"])
    print(f"texts {texts}; starts {heard:.2f} s apart, said {said:.2f} s apart")
    assert abs(heard - said) < 0.7, (heard, said)

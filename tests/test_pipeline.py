"""The whole job with real parts: ALSA capture → daemon → our server → Mosquitto.

The microphone is ALSA's `file` plugin reading a FIFO that this test feeds at real
time (a real card is paced by its clock; the plugin alone would deliver a file
thousands of times faster than real time), so the daemon's capture thread, resampler,
gate, uplink and publisher all run as they do on a Pi.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import sys
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Broker, SmallDisk, assert_heard, free_port
from mqttkit import Subscriber, wait
from roomscribe.outbox import Outbox
from stack import CLIPS, Proc, Room, daemon_config, make_room, start_daemon, start_server
from timing import scaled

pytestmark = pytest.mark.server


class FifoMic:
    """Writes a WAV's frames into a FIFO at real time, then silence until stopped
    (at EOF the plugin would deliver stale data as fast as it is read)."""

    def __init__(self, wav: Path, fifo: Path) -> None:
        self.fifo = fifo
        os.mkfifo(fifo)
        with wave.open(str(wav)) as w:
            self.rate, self.channels = w.getframerate(), w.getnchannels()
            self.data = w.readframes(w.getnframes())
        self.started_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fifo-mic", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # One write per ALSA period (the daemon's default, rate / 10 frames): the file
        # plugin does not retry a short read from a FIFO, so a partial period would
        # shift every later sample.
        step = self.rate // 10 * self.channels * 2
        # open() blocks until the daemon's ALSA plugin opens the FIFO for reading
        with contextlib.suppress(BrokenPipeError), self.fifo.open("wb") as fh:
            self.started_at = time.time()
            t = time.monotonic()
            pos = 0
            while not self._stop.is_set():
                chunk = self.data[pos:pos + step] if pos < len(self.data) else bytes(step)
                fh.write(chunk.ljust(step, b"\0"))
                fh.flush()
                pos += step
                t += 0.1
                time.sleep(max(0.0, t - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# The daemon's [capture] for the FIFO microphone of alsa_config: a 44.1 kHz stereo USB mic.
ROOM_MIC = """
[capture]
source = "alsa"
device = "roommic"
rate_hz = 44100
channels = 2
"""


def alsa_config(tmp: Path, fifo: Path) -> Path:
    conf = tmp / "asound.conf"
    conf.write_text("</usr/share/alsa/alsa.conf>\n"
                    "pcm.roommic {\n  type file\n  slave.pcm \"null\"\n"
                    f'  file "/dev/null"\n  infile "{fifo}"\n  format "raw"\n}}\n')
    return conf


@pytest.fixture
def server(tmp_path: Path) -> Iterator[int]:
    proc, port = start_server(tmp_path)
    yield port
    proc.stop()


def iso(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_real_alsa_capture_of_real_speech_arrives_as_text_on_the_broker(
        tmp_path: Path, broker: Broker, server: int) -> None:
    room = make_room(tmp_path / "room.wav", CLIPS[:3], gap_s=1.5)  # 44.1 kHz stereo
    fifo = tmp_path / "mic.fifo"
    config = daemon_config(tmp_path, server_port=server, broker_port=broker.port,
                           extra=ROOM_MIC)
    sub = Subscriber(broker.port)
    mic = FifoMic(room.path, fifo)
    daemon = start_daemon(tmp_path, config, env={"ALSA_CONFIG_PATH": str(alsa_config(
        tmp_path, fifo))})
    try:
        wait(lambda: len(sub.texts()) >= 3 and "press" in " ".join(sub.texts()).lower(),
             timeout_s=90, what=f"transcripts; daemon said:\n{daemon.output()[-3000:]}")
        assert daemon.stop(30) == 0, daemon.output()[-3000:]
    finally:
        mic.stop()
        daemon.stop()
        sub.close()
    transcripts = sub.transcripts()  # each validated against docs/schemas
    assert_heard([t["text"] for t in transcripts], room.references)
    assert [t["seq"] for t in transcripts] == sorted({t["seq"] for t in transcripts})
    assert len({t["id"] for t in transcripts}) == len(transcripts)
    # when the words were said: the first transcript starts where JFK starts speaking
    said_at = mic.started_at + room.spans[0][0]
    assert abs(iso(transcripts[0]["start"]) - said_at) < 1.0
    for t in transcripts:
        assert iso(t["start"]) < iso(t["end"]) <= iso(t["received"]) + 0.05
        assert t["device"] == "test" and t["room"] == "Test room" and not t["replayed"]
    availability = [m.payload for m in sub.on("availability")]
    assert availability[0] == b"online" and availability[-1] == b"offline"
    assert all(not m.retain for m in sub.on("transcript"))
    assert "Traceback" not in daemon.output()


def test_audio_said_before_an_ntp_clock_step_is_dated_on_the_corrected_clock(
        tmp_path: Path, broker: Broker) -> None:
    """A Pi boots on a stale clock with the network (and so the server) not up yet:
    the daemon captures and buffers, then NTP steps the clock an hour forward, then the
    server is reached. The buffered sentences must be dated on the corrected clock,
    each as long as it was said, and a command among them must still fire: it is
    seconds old, not an hour."""
    room = make_room(tmp_path / "room.wav", CLIPS[:2], gap_s=1.5)  # 44.1 kHz stereo
    fifo, step_file, port = tmp_path / "mic.fifo", tmp_path / "clock-step", free_port()
    config = daemon_config(tmp_path, server_port=port, broker_port=broker.port,
                           extra=ROOM_MIC + """
[[triggers]]
name = "address"
words = "fellow americans"
topic = "home/test/trigger"
""",  # the server (model load included) may take a while to answer on a slow machine
                           mqtt_extra="trigger_max_age_s = 600\n")
    sub = Subscriber(broker.port, topic="#")
    mic = FifoMic(room.path, fifo)
    daemon = Proc([sys.executable, str(Path(__file__).parent / "clockstep_child.py"), "run",
                   "--config", str(config)], tmp_path / "daemon.log",
                  env={"ALSA_CONFIG_PATH": str(alsa_config(tmp_path, fifo)),
                       "CLOCK_STEP_FILE": str(step_file)})
    daemon.start()
    server_proc = None
    step_s = 3600.0
    try:
        wait(lambda: mic.started_at > 0 and time.time() > mic.started_at + room.spans[-1][1]
             + 1.0, timeout_s=60, what="both sentences said")
        step_file.write_text(f"{step_s}")
        server_proc, _ = start_server(tmp_path, port)
        last_said_at = mic.started_at + room.spans[-1][0]  # the last sentence's start
        wait(lambda: any(iso(t["end"]) > last_said_at for t in sub.transcripts())
             and bool(sub.on("trigger")), timeout_s=120,
             what=f"transcripts and the trigger; daemon said:\n{daemon.output()[-3000:]}")
        assert daemon.stop(30) == 0, daemon.output()[-3000:]
    finally:
        mic.stop()
        daemon.stop()
        if server_proc:
            server_proc.stop()
        sub.close()
    transcripts = sub.transcripts()
    assert_heard([t["text"] for t in transcripts], room.references)
    # When each was said, on the stepped clock (the server may split JFK at his pauses).
    said = [(iso(t["start"]) - mic.started_at - step_s, iso(t["end"]) - mic.started_at - step_s)
            for t in transcripts]
    for start, end in said:
        assert any(a - 1.0 <= start < end <= b + 1.5 for a, b in room.spans), (said, room.spans)
    assert abs(said[0][0] - room.spans[0][0]) < 1.0, (said, room.spans)
    assert abs(said[-1][1] - room.spans[-1][1]) < 1.5, (said, room.spans)
    fired = json.loads(sub.on("trigger")[0].payload)
    assert fired["trigger"] == "address"
    out = daemon.output()
    assert "drifted" not in out and "not firing" not in out and "Traceback" not in out


def run_file_daemon(tmp: Path, room: Room, server_port: int, broker: Broker,
                    name: str = "daemon", extra: str = "") -> Proc:
    config = daemon_config(tmp, server_port=server_port, broker_port=broker.port,
                           wav=room.path, realtime=True, extra=extra)
    return start_daemon(tmp, config, name=name)


def test_broker_down_for_a_minute_while_speech_goes_on(tmp_path: Path, broker: Broker,
                                                       server: int) -> None:
    # 30 s of speech, then quiet: the room goes on after the broker is back
    room = make_room(tmp_path / "room.wav", CLIPS, gap_s=1.5, tail_s=40)
    sub = Subscriber(broker.port, persistent_id="outage-sub")
    broker.stop()  # the broker reboots while everything is said
    daemon = run_file_daemon(tmp_path, room, server, broker)
    try:
        time.sleep(60)
        broker.start()
        wait(lambda: "abigail" in " ".join(sub.texts()).lower(), timeout_s=60,
             what=f"transcripts after the outage:\n{daemon.output()[-3000:]}")
        assert daemon.wait(60) == 0, daemon.output()[-2000:]  # file ends: exit 0
    finally:
        daemon.stop()
        sub.close()
    texts = sub.texts()
    assert_heard(texts, room.references)
    ids = [t["id"] for t in sub.transcripts()]
    assert len(ids) == len(set(ids))


def test_daemon_killed_during_broker_outage_delivers_after_restart(
        tmp_path: Path, broker: Broker, server: int) -> None:
    room = make_room(tmp_path / "room.wav", CLIPS[:1], gap_s=1.5, tail_s=30)
    quiet = make_room(tmp_path / "quiet.wav", [], gap_s=3.0)
    sub = Subscriber(broker.port, persistent_id="crash-sub")
    broker.stop()
    daemon = run_file_daemon(tmp_path, room, server, broker)
    outbox = tmp_path / "state-test" / "outbox.sqlite3"
    try:
        wait(lambda: len(_outbox_ids(outbox)) >= 2, timeout_s=60,
             what=f"transcripts in the outbox:\n{daemon.output()[-2000:]}")
        daemon.kill()  # power cut: no goodbye, the outbox is all that is left
        stored = _outbox_ids(outbox)
        sub._subscribed.clear()
        broker.start()
        assert sub._subscribed.wait(scaled(15)), "the test's subscriber did not come back"
        again = run_file_daemon(tmp_path, quiet, server, broker, name="restarted")
        assert again.wait(60) == 0, again.output()[-2000:]
        wait(lambda: len(sub.texts()) >= len(stored), timeout_s=10,
             what=f"delivery after restart:\n{again.output()[-2000:]}")
    finally:
        daemon.stop()
        sub.close()
    transcripts = sub.transcripts()
    # exactly what was stored when the power went, once each, in order
    assert [t["id"] for t in transcripts] == stored
    assert "fellow americans" in " ".join(t["text"] for t in transcripts).lower()
    assert _outbox_ids(outbox) == []


def test_a_disk_full_at_start_loses_no_sentence(tmp_path: Path, broker: Broker,
                                                server: int, small_disk: SmallDisk) -> None:
    """The SD card filled up (logs) while the daemon was down: it starts anyway, and
    every sentence arrives. Before, the outbox could not open: exit 2, and again."""
    room = make_room(tmp_path / "room.wav", CLIPS[:2], gap_s=1.5, tail_s=3)
    config = daemon_config(tmp_path, server_port=server, broker_port=broker.port,
                           wav=room.path, realtime=True)
    state = small_disk.path / "state"
    config.write_text(config.read_text().replace(str(tmp_path / "state-test"), str(state)))
    state.mkdir(mode=0o700)
    Outbox(state / "outbox.sqlite3").close()  # it ran here before
    small_disk.fill()
    sub = Subscriber(broker.port)
    daemon = start_daemon(tmp_path, config)
    try:
        assert daemon.wait(90) == 0, daemon.output()[-2000:]  # the file ends: exit 0
    finally:
        daemon.stop()
        sub.close()
    assert_heard(sub.texts(), room.references)
    assert "(the disk is full); transcripts are held in memory" in daemon.output()


def _outbox_ids(path: Path) -> list[str]:
    import sqlite3

    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(path, timeout=1)) as db:
        try:
            return [r[0] for r in db.execute("select id from entries order by seq")]
        except sqlite3.Error:
            return []


# SIGHUP: the terminal or ssh session that started `roomscribe run` closed.
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
def test_sigterm_mid_sentence_still_publishes_it(tmp_path: Path, broker: Broker,
                                                 server: int, sig: int) -> None:
    room = make_room(tmp_path / "room.wav", CLIPS[:1], gap_s=1.0)
    sub = Subscriber(broker.port)
    daemon = run_file_daemon(tmp_path, room, server, broker)
    try:
        # stop 6 s into JFK's 11 s sentence: what was said so far must arrive
        time.sleep(room.spans[0][0] + 6 + 1.0)
        daemon.signal(sig)
        assert daemon.wait(30) == 0
        wait(lambda: bool(sub.texts()), timeout_s=10, what="the last transcript")
    finally:
        daemon.stop()
        sub.close()
    heard = " ".join(sub.texts()).lower()
    assert "fellow americans" in heard
    assert [m.payload for m in sub.on("availability")][-1] == b"offline"
    # Left retained: the status it was stopped in, not "reconnecting" (a clean stop is
    # no outage; capture closes and the socket goes as it stops).
    last = json.loads([m.payload for m in sub.on("state")][-1])
    assert last["status"] == "streaming" and last["last_error"] is None, last


def test_a_mic_that_hears_nothing_is_said_and_then_its_speech_arrives(
        tmp_path: Path, broker: Broker, server: int) -> None:
    """A capture switch left off: digital silence, streamed without a word, and no
    transcript ever came. The daemon says so after a minute; then the switch is turned
    on (here: the recording's speech begins) and the words arrive."""
    import numpy as np

    from roomscribe.level import HUSH_S
    from stack import read_mono_16k

    wav = tmp_path / "switch-off-then-on.wav"
    pcm = np.concatenate([np.zeros(int((HUSH_S + 2) * 16000)), read_mono_16k(CLIPS[0]),
                          np.zeros(3 * 16000)]).astype("<i2")
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    sub = Subscriber(broker.port)
    daemon = start_daemon(tmp_path, daemon_config(tmp_path, server_port=server,
                                                  broker_port=broker.port, wav=wav,
                                                  realtime=False))
    try:
        status = daemon.wait(120)
        wait(lambda: "country" in " ".join(sub.texts()), 10, "the sentence")
    finally:
        daemon.stop()
        sub.close()
    out = daemon.output()
    assert status == 0 and "Traceback" not in out, out[-3000:]
    lines = [line for line in out.splitlines() if "capture: capture.file" in line]
    assert len(lines) == 2, lines
    assert lines[0].startswith("WARNING roomscribe: capture: capture.file") \
        and "has heard nothing for 60 s" in lines[0], lines
    assert lines[1].startswith("INFO") and "hears sound now" in lines[1], lines

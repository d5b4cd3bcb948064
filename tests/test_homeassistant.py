"""Home Assistant / MQTT integration with the real daemon and a real Mosquitto.

What a Home Assistant user relies on: the device appears by itself (retained discovery,
sent again when Home Assistant restarts), the privacy mute switch really keeps audio
on the device and survives a restart, availability tells the truth after a crash,
phrase triggers and Hermes fire once for fresh speech only, TLS with a password works
without leaking the password, and `roomscribe forget` removes it all again.

The daemon reads its microphone from stdin (`StdinDaemon`): quiet hiss at real time,
with real recorded speech mixed in whenever a test plays a clip. Tests that need
transcripts get them from the real self-hosted server; every daemon has one to talk
to, so a shutdown never waits for an unreachable uplink.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import Broker, assert_heard, free_port, normal_words, reference_texts, start_broker
from mqttkit import SCHEMAS, Subscriber, await_until, transcript, validate, wait
from roomscribe import config
from roomscribe.integrations import Integrations
from roomscribe.outbox import Outbox
from roomscribe.publish import Publisher
from stack import PYTHON, Proc, daemon_config, read_mono_16k, start_server
from test_discovery import ID_CHARS, schema_validator
from test_publish import make_tls_files
from timing import scaled

JFK = "jfk-44k1-stereo.wav"
AMI = "ami-es2011a-16k.wav"
TICK_S = 0.1
TICK_BYTES = int(16000 * TICK_S) * 2
USER, PASSWORD = "mic", "s3cret-Pa55-zq81"


# --- the daemon, fed through stdin -------------------------------------------------------

class StdinDaemon(Proc):
    """`roomscribe run` with `[capture] source = "stdin"` (16 kHz mono s16le), fed at
    real time: -72 dBFS hiss, and the speech of play()ed clips when asked."""

    def start(self) -> None:
        self._pending = bytearray()
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._fh = self.log.open("ab")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=self._fh,
                                     stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        self._thread = threading.Thread(target=self._feed, name="stdin-mic", daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        hiss = np.random.default_rng(3).normal(0, 8, TICK_BYTES // 2).astype("<i2").tobytes()
        t = time.monotonic()
        while not self._halt.is_set():
            with self._lock:
                chunk = bytes(self._pending[:TICK_BYTES])
                del self._pending[:TICK_BYTES]
            try:
                self.proc.stdin.write(chunk.ljust(TICK_BYTES, b"\0") if chunk else hiss)
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                return  # the daemon is gone
            t += TICK_S
            time.sleep(max(0.0, t - time.monotonic()))

    def play(self, clip: str, quiet_after_s: float = 2.0) -> None:
        """Say `clip` into the microphone; returns once it and the quiet after it are in."""
        speech = np.clip(read_mono_16k(clip), -32768, 32767).astype("<i2").tobytes()
        quiet = np.random.default_rng(5).normal(0, 8, int(16000 * quiet_after_s))
        with self._lock:
            self._pending += speech + quiet.astype("<i2").tobytes()
        wait(lambda: not self._pending, 60, f"{clip} to be played")

    def _halt_feed(self) -> None:
        self._halt.set()
        self._thread.join(5)
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):  # the daemon is gone: nothing to flush to
                self.proc.stdin.close()

    def stop(self, timeout_s: float = 30.0) -> int | None:
        rc = super().stop(timeout_s)  # the feed goes on until the daemon has flushed
        self._halt_feed()
        return rc

    def kill(self) -> None:
        super().kill()
        self._halt_feed()


def write_config(tmp: Path, broker_port: int, server_port: int, *, device: str = "test",
                 mqtt_extra: str = "", extra: str = "") -> Path:
    """stack.daemon_config with stdin capture; mqtt_extra goes into its [mqtt] table."""
    return daemon_config(tmp, server_port=server_port, broker_port=broker_port,
                         device=device, extra='[capture]\nsource = "stdin"\n' + extra,
                         mqtt_extra=mqtt_extra)


def start(tmp: Path, config_path: Path, name: str = "daemon",
          env: dict[str, str] | None = None) -> StdinDaemon:
    d = StdinDaemon([*PYTHON, "run", "--config", str(config_path)], tmp / f"{name}.log",
                    env=env or {})
    d.start()
    return d


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    proc, port = start_server(tmp_path_factory.mktemp("server"))
    yield port
    proc.stop()


# --- MQTT helpers ------------------------------------------------------------------------

def publish(port: int, topic: str, body: bytes, *, retain: bool = False) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        c.publish(topic, body, qos=1, retain=retain).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


def retained(port: int) -> dict[str, bytes]:
    """Everything the broker holds retained, as a subscriber arriving now is handed it."""
    sub = Subscriber(port, topic="#")
    try:
        # Retained messages are queued at SUBSCRIBE, so they all arrive before this one.
        publish(port, "zz-test/marker", b"x")
        wait(lambda: bool(sub.on("marker")), 10, "the marker")
        return {m.topic: bytes(m.payload) for m in sub.messages if m.retain}
    finally:
        sub.close()


def configs(sub: Subscriber) -> list[mqtt.MQTTMessage]:
    """Entity configs, without the clearing of entities earlier versions announced."""
    return [m for m in sub.messages if m.payload
            if m.topic.startswith("homeassistant/") and m.topic.endswith("/config")]


def command(port: int, topic: str, body: bytes, done: Callable[[], bool], what: str) -> None:
    """Send a command until done() (the daemon may still be subscribing right after
    it came online); repeats of the same ON/OFF are harmless."""
    deadline = time.monotonic() + scaled(20)
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no effect of {body!r} on {topic}: {what}")
        publish(port, topic, body)
        wait_or_pass(done, 1.0)


def wait_or_pass(cond: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + scaled(timeout_s)
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)


def states(sub: Subscriber) -> list[dict[str, Any]]:
    return [validate("state", m.payload) for m in sub.on("state")]


def heard(sub: Subscriber) -> str:
    return " ".join(w for t in sub.texts() for w in normal_words(t))


def schema(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / name).read_text()),
                                           format_checker=jsonschema.FormatChecker())


# --- 1. discovery ------------------------------------------------------------------------

@pytest.mark.server
def test_discovery_is_retained_valid_and_resent_when_home_assistant_restarts(
        broker: Broker, tmp_path: Path, server: int) -> None:
    device = "kitchen-Pi"
    sub = Subscriber(broker.port, topic="#")
    daemon = start(tmp_path, write_config(tmp_path, broker.port, server, device=device))
    try:
        wait(lambda: len(configs(sub)) >= 11, 30,
             f"discovery configs; daemon said:\n{daemon.output()[-2000:]}")
        held = {t: json.loads(b) for t, b in retained(broker.port).items()
                if t.startswith("homeassistant/")}
        assert held == {m.topic: json.loads(m.payload) for m in configs(sub)}
        assert len(held) == 11
        # The connectivity sensor of earlier versions is cleared, not left behind.
        assert not any(t.endswith("/uplink/config") for t in held)
        devices, unique_ids = [], set()
        for topic, cfg in held.items():
            _, component, node, obj, _ = topic.split("/")
            schema_validator(component.replace("_", "-")).validate(cfg)
            assert node == f"roomscribe_{device}"
            for ident in (node, obj, cfg["unique_id"]):
                assert ID_CHARS.match(ident), ident
            assert cfg["availability_topic"] == f"roomscribe/{device}/availability"
            unique_ids.add(cfg["unique_id"])
            devices.append(cfg["device"])
        assert len(unique_ids) == 11
        assert all(d == devices[0] for d in devices)
        assert devices[0]["identifiers"] == [f"roomscribe_{device}"]
        assert devices[0]["suggested_area"] == "Test room"
        # The availability they point at is there, retained.
        assert retained(broker.port)[f"roomscribe/{device}/availability"] == b"online"

        # Home Assistant restarts and sends its birth message: everything again.
        before = len(configs(sub))
        publish(broker.port, "homeassistant/status", b"offline")
        publish(broker.port, "homeassistant/status", b"online")
        wait(lambda: len(configs(sub)) >= before + 11, 20, "discovery sent again")
        again = configs(sub)[before:]
        assert {m.topic: json.loads(m.payload) for m in again} == held
        assert daemon.stop() == 0, daemon.output()[-2000:]
    finally:
        daemon.stop()
        sub.close()
    # One set on connect and one for "online"; Home Assistant's "offline" sends none.
    assert len(configs(sub)) == 22
    assert "Traceback" not in daemon.output()


# --- 2. privacy mute ---------------------------------------------------------------------

@pytest.mark.server
def test_privacy_mute_keeps_audio_on_the_device_and_survives_a_restart(
        broker: Broker, tmp_path: Path, server: int) -> None:
    refs = reference_texts()
    port = broker.port
    mute_set = "roomscribe/test/mute/set"
    sub = Subscriber(port, topic="#")
    cfg = write_config(tmp_path, port, server)

    def mute_says(word: bytes, after: int = 0) -> bool:
        return any(m.payload == word for m in sub.on("mute")[after:])

    def state_says_muted(value: bool, after: int = 0) -> bool:
        return any(validate("state", m.payload)["muted"] is value
                   for m in sub.on("state")[after:])

    daemon = start(tmp_path, cfg)
    restarted: StdinDaemon | None = None
    try:
        wait(lambda: mute_says(b"OFF"), 30, f"mute OFF; daemon said:\n{daemon.output()[-2000:]}")
        n = len(sub.on("mute"))
        command(port, mute_set, b"ON", lambda: mute_says(b"ON", n), "mute")
        assert retained(port)["roomscribe/test/mute"] == b"ON"
        wait(lambda: state_says_muted(True), 10, "state muted: true")
        # Muted is a choice, not an outage: Home Assistant's problem sensor stays OK.
        wait(lambda: any(s["status"] == "muted" and s["transcription_available"]
                         for s in states(sub)), 10, "status muted")

        daemon.play(JFK)  # said while muted: must never come back as text
        n = len(sub.on("mute"))
        command(port, mute_set, b"OFF", lambda: mute_says(b"OFF", n), "unmute")
        wait(lambda: state_says_muted(False, -1), 10, "state muted: false")
        daemon.play(AMI)
        wait(lambda: "call me" in heard(sub), 60,
             f"speech after unmuting; daemon said:\n{daemon.output()[-3000:]}")
        assert "americans" not in heard(sub) and "country" not in heard(sub)

        # Mute, restart: the new process is muted from its first moment.
        n = len(sub.on("mute"))
        command(port, mute_set, b"ON", lambda: mute_says(b"ON", n), "mute again")
        assert daemon.stop() == 0, daemon.output()[-2000:]
        n_mute, n_state = len(sub.on("mute")), len(sub.on("state"))
        restarted = start(tmp_path, cfg, name="restarted")
        wait(lambda: len(sub.on("mute")) > n_mute and len(sub.on("state")) > n_state, 30,
             f"the restarted daemon's mute and state:\n{restarted.output()[-2000:]}")
        assert [m.payload for m in sub.on("mute")[n_mute:]] == [b"ON"]
        started = [line for line in restarted.output().splitlines() if "privacy mute" in line]
        assert started and started[0].startswith("WARNING") and "is ON" in started[0], started
        assert state_says_muted(True, n_state) and not state_says_muted(False, n_state)
        assert retained(port)["roomscribe/test/mute"] == b"ON"

        restarted.play(JFK)  # still muted
        n = len(sub.on("mute"))
        command(port, mute_set, b"OFF", lambda: mute_says(b"OFF", n), "unmute after restart")
        restarted.play(AMI)
        wait(lambda: heard(sub).count("call me") >= 2, 60,
             f"speech after the restart:\n{restarted.output()[-3000:]}")
        assert restarted.stop() == 0, restarted.output()[-2000:]
    finally:
        daemon.stop()
        if restarted:
            restarted.stop()
        sub.close()
    # Only what was said while unmuted, once each: not a word of JFK.
    assert "americans" not in heard(sub) and "country" not in heard(sub)
    # (tiny.en writes the names "Klafflin" and "Abi": 6 of 8 words right per sentence)
    assert_heard(sub.texts(), [refs[AMI], refs[AMI]], min_ratio=0.7)
    assert (tmp_path / "state-test" / "mute").read_text().strip() == "OFF"
    assert "Traceback" not in daemon.output() + restarted.output()


# --- 3. availability ---------------------------------------------------------------------

@pytest.mark.server
def test_availability_online_retained_will_on_sigkill_offline_on_clean_stop(
        broker: Broker, tmp_path: Path, server: int) -> None:
    topic = "roomscribe/test/availability"
    sub = Subscriber(broker.port, topic=topic)
    cfg = write_config(tmp_path, broker.port, server)

    def said() -> list[bytes]:
        return [bytes(m.payload) for m in sub.messages]

    daemon = start(tmp_path, cfg)
    second: StdinDaemon | None = None
    try:
        wait(lambda: said() == [b"online"], 30, f"online; daemon said:\n{daemon.output()}")
        assert retained(broker.port)[topic] == b"online"
        daemon.kill()  # a crash: no goodbye, the broker sends the will
        wait(lambda: said() == [b"online", b"offline"], 15, "the will")
        assert retained(broker.port)[topic] == b"offline"

        second = start(tmp_path, cfg, name="second")
        wait(lambda: said()[-1:] == [b"online"], 30, "online after the restart")
        assert retained(broker.port)[topic] == b"online"
        assert second.stop() == 0, second.output()[-2000:]
        wait(lambda: said() == [b"online", b"offline", b"online", b"offline"], 10,
             "offline on a clean stop")
    finally:
        daemon.stop()
        if second:
            second.stop()
        sub.close()
    assert retained(broker.port)[topic] == b"offline"
    # The state left retained is the one the daemon stopped in (idle: no speech came),
    # not "reconnecting", as if a clean stop were an outage being worked on.
    last = json.loads(retained(broker.port)["roomscribe/test/state"])
    assert last["status"] == "idle" and last["last_error"] is None, last
    assert "Traceback" not in daemon.output() + second.output()


# --- 3b. status: what a user means by "is it working" -------------------------------------

@pytest.mark.server
def test_status_is_idle_streaming_muted_and_failing_only_in_a_real_outage(
        broker: Broker, tmp_path: Path) -> None:
    """The socket is closed most of the day (idle, muted) and that is fine; audio that
    cannot reach the service for 30 s is not, and only that makes transcription
    unavailable (Home Assistant's Transcription problem sensor)."""
    port = free_port()  # nothing listens here until the outage ends
    sub = Subscriber(broker.port)
    cfg = write_config(tmp_path, broker.port, port, extra="[gate]\nidle_disconnect_s = 1\n")
    daemon = start(tmp_path, cfg)
    server: Proc | None = None

    def seen(after: int, **fields: Any) -> Callable[[], bool]:
        return lambda: any(all(st[k] == v for k, v in fields.items())
                           for st in states(sub)[after:])

    try:
        wait(seen(0, status="idle"), 30, f"idle; daemon said:\n{daemon.output()[-2000:]}")
        first = states(sub)[-1]
        assert first["transcription_available"] is True and first["last_error"] is None
        assert first["uplink_connected"] is False

        n = len(states(sub))
        daemon.play(JFK)  # speech, and no server to take it
        wait(seen(n, status="failing"), 120,
             f"failing after 30 s of outage:\n{daemon.output()[-3000:]}")
        outage = [st for st in states(sub)[n:] if st["status"] != "idle"]
        assert outage[0]["status"] == "reconnecting", outage[0]
        assert outage[0]["transcription_available"] is True
        failing = next(st for st in outage if st["status"] == "failing")
        assert failing["transcription_available"] is False
        assert failing["last_error"] and failing["buffered_s"] > 5

        n = len(states(sub))
        server, _ = start_server(tmp_path, port=port)  # the outage ends
        wait(lambda: "americans" in heard(sub), 120,
             f"the replayed speech:\n{daemon.output()[-3000:]}")
        wait(seen(n, status="idle", last_error=None, transcription_available=True), 60,
             "idle again once the backlog is sent")
        assert any(st["status"] == "streaming" and st["uplink_connected"]
                   for st in states(sub)[n:])

        n = len(states(sub))
        command(broker.port, "roomscribe/test/mute/set", b"ON", seen(n, status="muted"),
                "mute")
        muted = next(st for st in states(sub)[n:] if st["status"] == "muted")
        assert muted["transcription_available"] is True and muted["muted"] is True
        assert daemon.stop() == 0, daemon.output()[-2000:]
    finally:
        daemon.stop()
        if server:
            server.stop()
        sub.close()
    assert "Traceback" not in daemon.output()


# --- 4 + 5. phrase trigger and Hermes ----------------------------------------------------

TRIGGER = """
[[triggers]]
name = "address"
words = "fellow americans"
topic = "home/test/trigger"
"""


@pytest.mark.server
def test_trigger_fires_once_and_hermes_gets_every_transcript(
        broker: Broker, tmp_path: Path, server: int) -> None:
    sub = Subscriber(broker.port, topic="#")
    daemon = start(tmp_path, write_config(tmp_path, broker.port, server,
                                          mqtt_extra="hermes = true\n", extra=TRIGGER))
    try:
        wait(lambda: bool(sub.on("availability")), 30, f"online:\n{daemon.output()[-2000:]}")
        daemon.play(JFK)
        wait(lambda: "your country" in heard(sub) and bool(sub.on("trigger")), 60,
             f"JFK and the trigger; daemon said:\n{daemon.output()[-3000:]}")
        assert daemon.stop() == 0, daemon.output()[-2000:]  # everything flushed
        held = retained(broker.port)
    finally:
        daemon.stop()
        sub.close()
    transcripts = sub.transcripts()
    assert_heard([t["text"] for t in transcripts], [reference_texts()[JFK]])

    # The trigger: once, the documented payload, pointing at the transcript that said it.
    triggers = sub.on("trigger")
    assert len(triggers) == 1 and not triggers[0].retain
    fired = json.loads(triggers[0].payload)
    schema("trigger.json").validate(fired)
    assert fired["trigger"] == "address" and fired["device"] == "test"
    source = {t["id"]: t for t in transcripts}[fired["id"]]
    assert "fellow americans" in " ".join(normal_words(source["text"]))
    assert fired["text"] == source["text"]

    # Hermes: one textCaptured per transcript, in order, with the transcript's fields.
    hermes = [json.loads(m.payload) for m in sub.messages
              if m.topic == "hermes/asr/textCaptured"]
    assert len(hermes) == len(transcripts)
    for h, t in zip(hermes, transcripts, strict=True):
        schema("hermes-text-captured.json").validate(h)
        assert h["text"] == t["text"] and h["siteId"] == "test"
        assert h["sessionId"] == t["session"] and h["likelihood"] == 1.0
        assert 0 < h["seconds"] <= 12.0

    # Transcripts are never retained: Home Assistant's event entity ignores retained ones.
    assert all(not m.retain for m in sub.on("transcript"))
    assert not [t for t in held if t.endswith("/transcript") or t.startswith("hermes/")
                or t == "home/test/trigger"]


def test_old_transcripts_fire_no_trigger_and_no_hermes(broker: Broker, tmp_path: Path) -> None:
    """A sentence that reaches the publisher long after it was said (a replay after an
    outage) is still published, but must not switch anything now."""
    path = tmp_path / "roomscribe.toml"
    path.write_text(f'[device]\nid = "dev1"\nroom = "kitchen"\n'
                    f'[mqtt]\nport = {broker.port}\nhermes = true\ntrigger_max_age_s = 30\n'
                    f'[state]\ndir = "{tmp_path}"\n{TRIGGER}')
    s = config.load(str(path))
    sub = Subscriber(broker.port, topic="#")

    async def main() -> None:
        outbox = Outbox(tmp_path / "outbox.sqlite3")
        pub = Publisher(s, outbox)
        integrations = Integrations(s, pub, tmp_path)
        task = asyncio.create_task(pub.run())
        try:
            await await_until(lambda: pub.connected, what="connect")
            integrations.transcript(transcript("My fellow Americans, said a minute ago",
                                               end=time.time() - 60))
            integrations.transcript(transcript("My fellow Americans, said just now"))
            await await_until(lambda: len(sub.on("transcript")) == 2
                              and bool(sub.on("trigger")) and bool(sub.on("textCaptured")),
                              what="both transcripts and the fresh one's trigger")
        finally:
            await pub.close()
            task.cancel()
            outbox.close()

    asyncio.run(main())
    sub.close()
    assert sub.texts() == ["My fellow Americans, said a minute ago",
                           "My fellow Americans, said just now"]
    assert [json.loads(m.payload)["text"] for m in sub.on("trigger")] == [
        "My fellow Americans, said just now"]
    assert [json.loads(m.payload)["text"] for m in sub.on("textCaptured")] == [
        "My fellow Americans, said just now"]


# --- 6. TLS and a password ---------------------------------------------------------------

class TlsWatcher:
    """A subscriber to # over TLS with the test's login."""

    def __init__(self, port: int, ca: Path) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.username_pw_set(USER, PASSWORD)
        self.client.tls_set(ca_certs=str(ca))
        self.client.on_connect = lambda c, *_: c.subscribe("#", qos=1)
        self.client.on_message = lambda _c, _u, m: self.messages.append(m)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def on(self, topic: str) -> list[bytes]:
        return [bytes(m.payload) for m in list(self.messages) if m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[Broker]:
    make_tls_files(tmp_path)
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), USER, PASSWORD],
                   check=True, timeout=scaled(30), capture_output=True)
    # "user root": as root, mosquitto would switch to its own user, who cannot read tmp_path.
    b = start_broker(tmp_path, f"cafile {tmp_path}/ca.crt\ncertfile {tmp_path}/server.crt\n"
                               f"keyfile {tmp_path}/server.key\nallow_anonymous false\n"
                               f"password_file {pw}\nuser root\n")
    yield b
    b.stop()


@pytest.mark.server
def test_tls_with_a_password_and_a_wrong_password(tls_broker: Broker, tmp_path: Path,
                                                  server: int) -> None:
    ca = tmp_path / "ca.crt"
    tls = f'tls = true\nca_file = "{ca}"\nusername = "{USER}"\n'
    watcher = TlsWatcher(tls_broker.port, ca)
    # The password from mqtt.password_file (MQTT_PASSWORD, which would win, is empty).
    (tmp_path / "mqtt-password").write_text(PASSWORD + "\n")
    good_config = write_config(tmp_path, tls_broker.port, server, mqtt_extra=tls
                               + f'password_file = "{tmp_path / "mqtt-password"}"\n')
    good = start(tmp_path, good_config, env={"MQTT_PASSWORD": ""})
    try:
        wait(lambda: watcher.on("roomscribe/test/availability") == [b"online"]
             and bool(watcher.on("roomscribe/test/state"))
             and bool(watcher.on("homeassistant/switch/roomscribe_test/mute/config")), 30,
             f"the daemon over TLS; it said:\n{good.output()[-2000:]}")
        validate("state", watcher.on("roomscribe/test/state")[-1])
        assert good.stop() == 0, good.output()[-2000:]
        wait(lambda: watcher.on("roomscribe/test/availability")[-1:] == [b"offline"], 10,
             "offline over TLS")
    finally:
        good.stop()
    assert PASSWORD not in good.output()
    assert "Traceback" not in good.output()

    # A wrong password from MQTT_PASSWORD: one clear line, no secret, retried quietly.
    wrong = "wr0ng-Pa55-xy77"
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad_config = write_config(bad_dir, tls_broker.port, server, mqtt_extra=tls)
    bad = start(bad_dir, bad_config, env={"MQTT_PASSWORD": wrong})
    try:
        wait(lambda: "refused" in bad.output(), 30, f"a refusal:\n{bad.output()[-2000:]}")
        time.sleep(3.0)  # let it retry a few times (reconnect_min_s = 1)
        assert bad.stop() == 0, bad.output()[-2000:]
    finally:
        bad.stop()
        watcher.close()
    out = bad.output()
    errors = [line for line in out.splitlines() if line.startswith(("ERROR", "CRITICAL"))]
    assert len(errors) == 1, out[-3000:]
    assert "refused the connection" in errors[0] and str(tls_broker.port) in errors[0]
    assert wrong not in out and PASSWORD not in out
    assert "Traceback" not in out

    # forget over the same TLS login, the password from MQTT_PASSWORD; and a wrong one.
    run = forget(bad_config, {"MQTT_PASSWORD": PASSWORD})
    assert run.returncode == 0, run.stdout + run.stderr
    run = forget(bad_config, {"MQTT_PASSWORD": wrong})
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and "refused" in run.stderr, run.stderr
    assert wrong not in run.stdout + run.stderr


# --- 7. roomscribe forget ----------------------------------------------------------------

def forget(config_path: Path,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PYTHON, "forget", "--config", str(config_path)],
                          capture_output=True, text=True, timeout=scaled(60),
                          env={**os.environ, **(env or {})}, check=False)


def test_forget_with_a_device_id_the_broker_has_not_seen_clears_nothing(
        broker: Broker, tmp_path: Path) -> None:
    """device.id defaults to the hostname: `forget` run on a laptop used to clear
    nothing and say it had removed the device."""
    publish(broker.port, "roomscribe/kitchen/availability", b"offline", retain=True)
    publish(broker.port, "roomscribe/hall/state", b'{"status": "idle"}', retain=True)
    before = retained(broker.port)
    cfg = tmp_path / "laptop.toml"
    cfg.write_text(f'[device]\nid = "laptop"\n[mqtt]\nport = {broker.port}\n')
    run = forget(cfg)
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and not run.stdout, run.stdout + run.stderr
    assert "nothing of device.id 'laptop' is retained" in lines[0]
    assert "(devices there: hall, kitchen)" in lines[0] and "nothing cleared" in lines[0]
    assert retained(broker.port) == before


@pytest.mark.server
def test_forget_removes_the_device_and_its_retained_messages(broker: Broker, tmp_path: Path,
                                                             server: int) -> None:
    cfg = write_config(tmp_path, broker.port, server)
    publish(broker.port, "homeassistant/sensor/other_device/temp/config", b'{"name": "t"}',
            retain=True)
    # What an earlier version left: its connectivity sensor, cleared on connect.
    old_uplink = "homeassistant/binary_sensor/roomscribe_test/uplink/config"
    publish(broker.port, old_uplink, b'{"name": "Uplink"}', retain=True)
    daemon = start(tmp_path, cfg)
    try:
        wait(lambda: sum(t.endswith("/config") for t in retained(broker.port)) == 12, 30,
             f"discovery retained:\n{daemon.output()[-2000:]}")
        assert daemon.stop() == 0, daemon.output()[-2000:]
    finally:
        daemon.stop()
    before = retained(broker.port)
    ours = [t for t in before if "roomscribe_test" in t or t.startswith("roomscribe/test/")]
    assert {"roomscribe/test/availability", "roomscribe/test/state",
            "roomscribe/test/mute"} <= set(ours)
    assert old_uplink not in before
    assert len(ours) == 14  # 11 entity configs, availability, state, mute

    run = forget(cfg)
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(run.stdout.strip().splitlines()) == 1 and not run.stderr.strip()
    after = retained(broker.port)
    assert [t for t in after if "roomscribe_test" in t or t.startswith("roomscribe/")] == []
    # Someone else's entities are left alone.
    assert after == {"homeassistant/sensor/other_device/temp/config": b'{"name": "t"}'}

    # No broker there: one line, exit code 2, no traceback.
    (tmp_path / "nowhere.toml").write_text(f"[mqtt]\nport = {free_port()}\n")
    run = forget(tmp_path / "nowhere.toml")
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect" in lines[0], run.stderr
    assert "Traceback" not in run.stderr


# --- a renamed device --------------------------------------------------------------------

def of_device(topics: dict[str, bytes], device: str) -> list[str]:
    """The retained topics of one device: its entity configs, availability, state, mute."""
    return sorted(t for t in topics
                  if f"/roomscribe_{device}/" in t or t.startswith(f"roomscribe/{device}/"))


def renamed(cfg: Path, device: str) -> Path:
    """The same config and state dir with another device.id (a Pi given a new hostname)."""
    path = cfg.with_name(f"renamed-{device}.toml")
    path.write_text(re.sub(r'(?m)^id = ".*"$', f'id = "{device}"', cfg.read_text(), count=1))
    return path


def announce_and_stop(tmp: Path, cfg: Path, broker_port: int, device: str) -> None:
    """Run the daemon until its device is retained on the broker, then stop it cleanly."""
    first = start(tmp, cfg, "first")
    try:
        wait(lambda: len(of_device(retained(broker_port), device)) == 14, 30,
             f"the first device announced:\n{first.output()[-2000:]}")
        assert first.stop() == 0, first.output()[-2000:]
    finally:
        first.stop()


@pytest.mark.server
def test_a_renamed_device_is_removed_from_home_assistant_once_the_broker_is_up(
        persistent_broker: Broker, tmp_path: Path, server: int) -> None:
    """device.id defaults to the hostname: renaming the Pi left the old device in Home
    Assistant, every entity unavailable, for ever. Here the broker is still down when
    the renamed daemon starts (a power cut: the Pi boots before the broker's machine)."""
    broker = persistent_broker
    publish(broker.port, "homeassistant/sensor/other_device/temp/config",
            b'{"name": "t"}', retain=True)
    cfg = write_config(tmp_path, broker.port, server, device="raspberrypi")
    announce_and_stop(tmp_path, cfg, broker.port, "raspberrypi")
    broker.stop()
    second = start(tmp_path, renamed(cfg, "kitchen"), "second")
    try:
        wait(lambda: "removing the old device 'raspberrypi': cannot connect" in
             second.output(), 30, f"a failed attempt:\n{second.output()[-2000:]}")
        broker.start()

        def swapped() -> bool:
            held = retained(broker.port)
            return len(of_device(held, "kitchen")) == 14 and not of_device(
                held, "raspberrypi")
        wait(swapped, 60, f"the old device removed:\n{second.output()[-2000:]}")
        assert second.stop() == 0, second.output()[-2000:]
    finally:
        second.stop()
    out = second.output()
    assert "announced as 'raspberrypi' before" in out
    assert "removed the old device 'raspberrypi' from Home Assistant" in out
    assert out.count("cannot connect to the broker") <= 2, out  # said once, not per retry
    held = retained(broker.port)
    assert held["homeassistant/sensor/other_device/temp/config"] == b'{"name": "t"}'
    assert of_device(held, "raspberrypi") == []
    # Recorded: the next start removes nothing more and says nothing of it.
    third = start(tmp_path, renamed(cfg, "kitchen"), "third")
    try:
        wait(lambda: "mqtt: connected" in third.output(), 30, third.output()[-2000:])
        assert third.stop() == 0, third.output()[-2000:]
    finally:
        third.stop()
    assert "old device" not in third.output()
    assert len(of_device(retained(broker.port), "kitchen")) == 14


@pytest.mark.server
def test_a_renamed_device_leaves_alone_an_old_id_another_microphone_now_uses(
        broker: Broker, tmp_path: Path, server: int) -> None:
    cfg = write_config(tmp_path, broker.port, server, device="hall",
                       mqtt_extra="keepalive_s = 5\n")
    announce_and_stop(tmp_path, cfg, broker.port, "hall")
    (tmp_path / "other").mkdir()
    other = start(tmp_path, write_config(tmp_path / "other", broker.port, server,
                                         device="hall"), "other")
    renamed_one = None
    try:
        wait(lambda: retained(broker.port).get("roomscribe/hall/availability") == b"online",
             30, f"the other hall microphone online:\n{other.output()[-2000:]}")
        renamed_one = start(tmp_path, renamed(cfg, "den"), "renamed")
        wait(lambda: "left as it is" in renamed_one.output(), 60,  # two keepalives
             f"the renamed daemon's verdict:\n{renamed_one.output()[-2000:]}")
        held = retained(broker.port)
        assert len(of_device(held, "hall")) == 14 and len(of_device(held, "den")) == 14
        assert held["roomscribe/hall/availability"] == b"online"
        assert "still reported online by another client" in renamed_one.output()
    finally:
        other.stop()
        if renamed_one:
            renamed_one.stop()

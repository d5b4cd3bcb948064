"""`roomscribe listen` against a real Mosquitto: transcripts as they arrive, a broker
restart waited out, and one line when the broker is not there or says no."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import Broker, free_port, start_broker
from mqttkit import wait
from roomscribe import payload
from roomscribe.transcript import Transcript
from timing import scaled

LISTEN = [sys.executable, "-m", "roomscribe", "listen"]
USER, PASSWORD = "mic", "l1sten-Pa55-qz40"


class Listener:
    """`roomscribe listen` running, its stdout and stderr in files."""

    def __init__(self, tmp: Path, config: Path | None, *args: str,
                 env: dict[str, str] | None = None) -> None:
        self.out, self.err = tmp / "listen.out", tmp / "listen.err"
        given = ["--config", str(config)] if config else []
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen([*LISTEN, *given, *args],
                                         stdout=out, stderr=err,
                                         env={**os.environ, **(env or {})})

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines()

    def said(self) -> str:
        return self.err.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(scaled(10))


def send(port: int, device: str, text: str, start: float) -> bytes:
    t = Transcript(text, "item_1", "sess_1", start, start + 1.5, start + 2.0,
                   "openai/whisper-large-v3")
    body = payload.transcript_payload(t, entry_id=str(uuid.uuid4()), seq=1, device=device,
                                      room="", published=start + 2.0)
    publish(port, f"roomscribe/{device}/transcript", body)
    return body


def publish(port: int, topic: str, body: bytes) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        c.publish(topic, body, qos=1).wait_for_publish(scaled(10))
    finally:
        c.disconnect()
        c.loop_stop()


def listening(tmp: Path, port: int, count: int) -> Listener:
    """`listen --count` on the broker at `port`, subscribed (or the test fails)."""
    config = tmp / "config.toml"
    config.write_text(f"[mqtt]\nport = {port}\n")
    listener = Listener(tmp, config, "--count", str(count))
    try:
        wait(lambda: "waiting for transcripts" in listener.said(), 20,
             f"the listener to subscribe; it said: {listener.said()}")
    except BaseException:
        listener.stop()
        raise
    return listener


def at(start: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(start))


def test_prints_transcripts_and_waits_out_a_broker_restart(broker: Broker,
                                                          tmp_path: Path) -> None:
    listener = listening(tmp_path, broker.port, 4)
    try:
        assert f"roomscribe/+/transcript at 127.0.0.1:{broker.port}" in listener.said()
        start = time.time()
        body = send(broker.port, "kitchen", "Turn on the lights.", start)
        # Sent again (a PUBACK lost on the way: delivery is at-least-once): printed once.
        publish(broker.port, "roomscribe/kitchen/transcript", body)
        publish(broker.port, "roomscribe/hall/transcript", b"not json")
        publish(broker.port, "roomscribe/hall/transcript", b"[1, 2]")
        wait(lambda: len(listener.lines()) == 3, 20, f"three lines: {listener.lines()}")

        broker.start()  # a broker reboot: the listener waits and comes back
        wait(lambda: "back on" in listener.said(), 30,
             f"the listener back; it said: {listener.said()}")
        assert "lost the broker" in listener.said()
        send(broker.port, "bedroom", "Good night.", start + 5)
        assert listener.proc.wait(scaled(20)) == 0, listener.said()
    finally:
        listener.stop()
    assert listener.lines() == [
        f"[{at(start)}] kitchen: Turn on the lights.",
        "(unreadable transcript payload: b'not json')",
        "(unreadable transcript payload: b'[1, 2]')",
        f"[{at(start + 5)}] bedroom: Good night.",
    ]
    assert "Traceback" not in listener.said()


def one_line_error(config: Path, env: dict[str, str] | None = None) -> str:
    run = subprocess.run([*LISTEN, "--config", str(config), "--seconds", "30"],
                         capture_output=True, text=True, timeout=scaled(60), check=False,
                         env={**os.environ, **(env or {})})
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and not run.stdout, run.stdout + run.stderr
    return lines[0]


def test_no_broker_there_is_one_line(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f"[mqtt]\nport = {port}\n")
    # It used to wait out its --seconds in silence and exit 0.
    line = one_line_error(config)
    assert line.startswith(f"roomscribe: listen: cannot connect to the broker at "
                           f"127.0.0.1:{port}"), line


def password_broker(tmp_path: Path) -> Broker:
    """A Mosquitto that knows USER by PASSWORD (and refuses USER with any other)."""
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), USER, PASSWORD],
                   check=True, capture_output=True)
    # "user root": as root, mosquitto would switch to its own user, who cannot read tmp_path.
    return start_broker(tmp_path, f"password_file {passwd}\nuser root\n")


def test_a_wrong_password_is_one_line_without_the_secret(tmp_path: Path) -> None:
    broker = password_broker(tmp_path)
    try:
        config = tmp_path / "config.toml"
        config.write_text(f'[mqtt]\nport = {broker.port}\nusername = "{USER}"\n')
        wrong = "wr0ng-Pa55-lm29"
        line = one_line_error(config, {"MQTT_PASSWORD": wrong})
        assert line == (f"roomscribe: listen: 127.0.0.1:{broker.port} refused the "
                        "connection: Not authorized (check mqtt.username, the password "
                        "and the broker ACL)"), line
        assert wrong not in line
        # The right one is let in (the refusal above was the password's).
        ok = Listener(tmp_path, config, "--seconds", "30", env={"MQTT_PASSWORD": PASSWORD})
        try:
            wait(lambda: "waiting for transcripts" in ok.said(), 20, ok.said())
        finally:
            ok.stop()
    finally:
        broker.stop()


def test_run_by_hand_it_logs_in_with_the_services_config_and_password(tmp_path: Path
                                                                      ) -> None:
    """On an installed Pi, `sudo roomscribe listen` with no options: the service's
    config (/etc/roomscribe/config.toml, here named by ROOMSCRIBE_CONFIG) and its
    password (the mqtt_password credential install.sh puts beside it). It read the
    defaults and logged in with no password: "refused the connection: Not authorized"."""
    broker = password_broker(tmp_path)
    try:
        etc = tmp_path / "etc"
        etc.mkdir()
        (etc / "config.toml").write_text(
            f'[device]\nid = "kitchen"\n[mqtt]\nport = {broker.port}\nusername = "{USER}"\n')
        (etc / "mqtt_password").write_text(PASSWORD + "\n")
        heard = Listener(tmp_path, None, "--seconds", "60",
                         env={"ROOMSCRIBE_CONFIG": str(etc / "config.toml"),
                              "MQTT_PASSWORD": "", "CREDENTIALS_DIRECTORY": ""})
        try:
            wait(lambda: "waiting for transcripts" in heard.said(), 20, heard.said())
            send(broker.port, "kitchen", "Turn on the kitchen lights.", time.time())
            wait(lambda: heard.lines() and "Turn on the kitchen lights." in heard.lines()[-1],
                 20, heard.said())
            assert PASSWORD not in "\n".join(heard.lines()) + heard.said()
        finally:
            heard.stop()
    finally:
        broker.stop()


def refusing_broker(sock: socket.socket) -> None:
    """MQTT 3.1.1 as a broker whose ACL refuses every subscription (Mosquitto grants
    one and then delivers nothing; brokers such as EMQX and HiveMQ refuse in SUBACK)."""
    conn, _ = sock.accept()
    with conn:
        conn.settimeout(scaled(20))
        while True:
            head = conn.recv(2)
            if len(head) < 2:
                return
            size = head[1]  # our packets here are under 128 bytes
            body = conn.recv(size, socket.MSG_WAITALL) if size else b""
            kind = head[0] >> 4
            if kind == 1:  # CONNECT -> CONNACK accepted
                conn.sendall(b"\x20\x02\x00\x00")
            elif kind == 8:  # SUBSCRIBE -> SUBACK with 0x80, failure
                conn.sendall(b"\x90\x03" + body[:2] + b"\x80")
            elif kind == 12:  # PINGREQ
                conn.sendall(b"\xd0\x00")
            elif kind == 14:  # DISCONNECT
                return


def test_a_refused_subscription_is_one_line(tmp_path: Path) -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=refusing_broker, args=(sock,), daemon=True)
    thread.start()
    try:
        config = tmp_path / "config.toml"
        config.write_text(f'[mqtt]\nport = {port}\nprotocol = "3.1.1"\n')
        line = one_line_error(config)
        assert line == (f"roomscribe: listen: 127.0.0.1:{port} refused the subscription "
                        "to roomscribe/+/transcript: Unspecified error (check the broker "
                        "ACL)"), line
    finally:
        sock.close()
        thread.join(scaled(10))


def test_a_port_that_never_answers_is_one_line(tmp_path: Path) -> None:
    """Something listens but says nothing (not an MQTT port): one line after the
    login's bounded wait, not a silent wait for ever."""
    from roomscribe.broker_trouble import LOGIN_TIMEOUT_S

    sock = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody answers
    port = sock.getsockname()[1]
    try:
        config = tmp_path / "config.toml"
        config.write_text(f"[mqtt]\nport = {port}\n")
        line = one_line_error(config)
        assert line == (f"roomscribe: listen: 127.0.0.1:{port} did not answer within "
                        f"{LOGIN_TIMEOUT_S:.0f} s, neither in MQTT 5 nor in 3.1.1 (is it the "
                        "broker's MQTT port? A TLS port, often 8883, needs mqtt.tls = true)"
                        ), line
    finally:
        sock.close()


@pytest.mark.parametrize("answer", [True, False])
def test_a_broker_without_mqtt5_is_listened_to_with_3_1_1(broker: Broker, tmp_path: Path,
                                                         answer: bool) -> None:
    """The tools log in as the daemon does: a broker that answers an MQTT 5 login with
    "unacceptable protocol version" (Node-RED's Aedes, Mosquitto 1.x) or closes the
    connection unanswered (RabbitMQ before 3.13) is asked again with 3.1.1. `listen`
    used to stop at once, blaming the password, or after 10 s."""
    from faultproxy import FaultProxy
    from mqttkit import settings
    from roomscribe.doctor import check_broker

    proxy = FaultProxy(broker.port)
    proxy.refuse_mqtt5(answer)
    listener = listening(tmp_path, proxy.port, 1)
    try:
        start = time.time()
        send(broker.port, "kitchen", "Turn on the lights.", start)
        assert listener.proc.wait(scaled(20)) == 0, listener.said()
        checked = check_broker(settings(tmp_path, proxy.port))
    finally:
        listener.stop()
        proxy.close()
    assert listener.lines() == [f"[{at(start)}] kitchen: Turn on the lights."]
    assert proxy.refused_mqtt5 == 2  # listen's first login, and check's
    assert checked.ok and checked.detail.endswith(
        "login accepted with MQTT 3.1.1 (not with MQTT 5; the daemon falls back the "
        "same way)"), checked.line()

"""The publisher against a real Mosquitto: order, once-only, availability, outages, kills."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from conftest import Broker, SmallDisk, start_broker
from faultproxy import FaultProxy
from mqttkit import DEVICE, Subscriber, await_until, settings, transcript, validate, wait
from roomscribe.broker_trouble import UNSUPPORTED_VERSION, ClashWatch, LoginVersion
from roomscribe.config import Settings
from roomscribe.message import Message
from roomscribe.outbox import Outbox
from roomscribe.publish import Publisher, PublishError
from timing import scaled

CHILD = Path(__file__).resolve().parent / "publish_child.py"


def run_with_publisher(s: Settings, body: Callable[[Publisher, Outbox], Awaitable[None]],
                       password: str = "") -> Outbox:
    """Run body(publisher, outbox) with the publisher running; closes it within 5 s."""
    outbox = Outbox(Path(s.state.dir) / "outbox.sqlite3")

    async def main() -> None:
        pub = Publisher(s, outbox, password)
        task = asyncio.create_task(pub.run(), name="publish")
        try:
            async with asyncio.timeout(scaled(90)):
                await body(pub, outbox)
        finally:
            await pub.close(5.0)
            task.cancel()

    asyncio.run(main())
    return outbox


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_transcripts_arrive_once_in_order(broker: Broker, tmp_path: Path,
                                          protocol: str) -> None:
    s = settings(tmp_path, broker.port, protocol=protocol)
    sub = Subscriber(broker.port)
    texts = [f"sentence number {i}" for i in range(45)]  # more than inflight_max

    async def body(pub: Publisher, outbox: Outbox) -> None:
        await await_until(lambda: pub.connected, what="connect")
        for text in texts:
            pub.submit(transcript(text))
        await await_until(lambda: len(sub.on("transcript")) >= len(texts), what="transcripts")
        await await_until(lambda: len(outbox) == 0, what="outbox drained")
        await await_until(lambda: any(validate("state", m.payload)["transcripts_published"]
                                      == len(texts) for m in sub.on("state")), what="state")

    outbox = run_with_publisher(s, body)
    got = sub.transcripts()
    assert [t["text"] for t in got] == texts
    assert [t["seq"] for t in got] == list(range(1, len(texts) + 1))
    assert len({t["id"] for t in got}) == len(texts)
    assert all(t["device"] == DEVICE and t["room"] == "kitchen" for t in got)
    assert [m.payload for m in sub.on("availability")][:1] == [b"online"]
    wait(lambda: sub.on("availability")[-1].payload == b"offline", 10, "offline")
    assert sub.on("availability")[-1].retain is False  # live delivery, not the stored copy
    sub.close()
    # A subscriber arriving later sees the retained last word and state.
    late = Subscriber(broker.port)
    wait(lambda: bool(late.on("availability")) and bool(late.on("state")), 10, "retained")
    assert late.on("availability")[-1].payload == b"offline"
    assert late.on("availability")[-1].retain
    validate("state", late.on("state")[-1].payload)
    late.close()
    assert len(outbox) == 0
    outbox.close()


def test_published_total_is_kept_across_a_restart(broker: Broker, tmp_path: Path) -> None:
    """"Transcripts published" reads as a total: a restart must not set it back to 0."""
    s = settings(tmp_path, broker.port)
    sub = Subscriber(broker.port)

    def run_once(texts: list[str], total: int) -> None:
        async def body(pub: Publisher, outbox: Outbox) -> None:
            await await_until(lambda: pub.connected, what="connect")
            for text in texts:
                pub.submit(transcript(text))
            await await_until(lambda: any(validate("state", m.payload)["transcripts_published"]
                                          == total for m in sub.on("state")), what="state")

        run_with_publisher(s, body).close()

    run_once(["one", "two"], 2)
    run_once(["three"], 3)
    sub.close()
    counts = [validate("state", m.payload)["transcripts_published"] for m in sub.on("state")]
    assert counts == sorted(counts), counts  # never falls back
    assert sub.texts() == ["one", "two", "three"]


def test_connect_hooks_and_subscriptions(broker: Broker, tmp_path: Path) -> None:
    """The extras other modules use: retained messages on connect, and commands in."""
    sub = Subscriber(broker.port, topic="#")
    commands: list[tuple[str, bytes]] = []

    async def body(pub: Publisher, _o: Outbox) -> None:
        await await_until(lambda: pub.connected, what="connect")
        await await_until(lambda: bool(sub.on("mute")), what="connect hook message")
        sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        sender.connect("127.0.0.1", broker.port)
        sender.loop_start()
        # Re-publish until it arrives: the subscription may still be on its way.
        for _ in range(100):
            sender.publish(f"roomscribe/{DEVICE}/mute/set", b"ON", qos=1)
            if commands:
                break
            await asyncio.sleep(0.1)
        sender.disconnect()
        sender.loop_stop()
        assert pub.send(Message("elsewhere/x", {"a": 1}))

    s = settings(tmp_path, broker.port)
    outbox = Outbox(tmp_path / "hooks.sqlite3")

    async def main() -> None:
        pub = Publisher(s, outbox)
        pub.add_connect_hook(lambda: [Message(f"roomscribe/{DEVICE}/mute", "OFF", retain=True)])
        pub.subscribe(f"roomscribe/{DEVICE}/mute/set", lambda t, b: commands.append((t, b)))
        task = asyncio.create_task(pub.run(), name="publish")
        try:
            async with asyncio.timeout(scaled(60)):
                await body(pub, outbox)
        finally:
            await pub.close()
            task.cancel()

    asyncio.run(main())
    outbox.close()
    assert commands[0] == (f"roomscribe/{DEVICE}/mute/set", b"ON")
    assert sub.on("mute")[0].payload == b"OFF"
    wait(lambda: any(m.topic == "elsewhere/x" for m in sub.messages), 10, "send()")
    sub.close()


def test_a_port_that_takes_the_connection_and_never_answers_is_said(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A TLS port without mqtt.tls: paho reports nothing at all, and the daemon said
    nothing while every transcript waited in the outbox."""
    caplog.set_level(logging.INFO)
    sock = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody answers
    port = sock.getsockname()[1]
    said = "took the connection but has not answered the login for 10 s"

    async def body(pub: Publisher, _o: Outbox) -> None:
        await await_until(lambda: said in caplog.text, 30, "the warning")

    try:
        run_with_publisher(settings(tmp_path, port), body).close()
    finally:
        sock.close()
    lines = [r.getMessage() for r in caplog.records if said in r.getMessage()]
    assert lines == [f"mqtt: 127.0.0.1:{port} {said} (is it the broker's MQTT port? A TLS "
                     "port, often 8883, needs mqtt.tls = true) (retrying)"]


@pytest.mark.parametrize("answer", [True, False])
def test_a_broker_without_mqtt5_gets_3_1_1(broker: Broker, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture,
                                          answer: bool) -> None:
    """Node-RED's Aedes broker and Mosquitto 1.x answer an MQTT 5 login with
    "unacceptable protocol version"; RabbitMQ before 3.13 closes the connection. With
    the default mqtt.protocol the daemon logged the first as a refused login (check the
    password), said nothing of the second, and never published."""
    caplog.set_level(logging.INFO)
    proxy = FaultProxy(broker.port)
    proxy.refuse_mqtt5(answer)
    sub = Subscriber(broker.port)
    texts = [f"sentence number {i}" for i in range(12)]

    async def body(pub: Publisher, outbox: Outbox) -> None:
        for text in texts[:6]:  # said before the broker answered: from the outbox
            pub.submit(transcript(text))
        await await_until(lambda: pub.connected, what="connect")
        for text in texts[6:]:
            pub.submit(transcript(text))
        await await_until(lambda: len(outbox) == 0, what="outbox drained")

    try:
        run_with_publisher(settings(tmp_path, proxy.port), body).close()
        wait(lambda: sub.on("availability")[-1:] != [] and
             sub.on("availability")[-1].payload == b"offline", 10, "offline")
    finally:
        proxy.close()
        sub.close()
    assert sub.texts() == texts  # once each, in order
    # (one "online" more when the broker closed the login: the 3.1.1 login was answered
    # and MQTT 5 tried once more)
    availability = [m.payload for m in sub.on("availability")]
    assert set(availability[:-1]) == {b"online"} and availability[-1] == b"offline"
    assert proxy.refused_mqtt5 == (1 if answer else 2) and proxy.connections > proxy.refused_mqtt5
    said = [(r.levelname, r.getMessage()) for r in caplog.records
            if r.name == "roomscribe.publish" and r.levelno >= logging.WARNING]
    assert said == [("WARNING", f"mqtt: 127.0.0.1:{proxy.port} does not speak MQTT 5: using "
                     "MQTT 3.1.1 (no message expiry on the broker; mqtt.protocol = \"3.1.1\" "
                     "says so and skips the first try)")], said
    assert f"connected to 127.0.0.1:{proxy.port} (MQTT 3.1.1)" in caplog.text


def test_a_retained_command_is_ignored_and_said_once(broker: Broker, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A retained OFF left on mute/set (a flow or a `mosquitto_pub -r` once) came back at
    every reconnect and undid a privacy mute. A retained status is still read."""
    caplog.set_level(logging.INFO)
    command, status = f"roomscribe/{DEVICE}/mute/set", "homeassistant/status"
    sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sender.connect("127.0.0.1", broker.port)
    sender.loop_start()
    for topic, body in ((command, b"OFF"), (status, b"online")):
        sender.publish(topic, body, qos=1, retain=True).wait_for_publish(scaled(10))
    got: list[tuple[str, bytes]] = []

    async def main() -> None:
        pub = Publisher(settings(tmp_path, broker.port), outbox)
        pub.subscribe(command, lambda t, b: got.append((t, b)), commands=True)
        pub.subscribe(status, lambda t, b: got.append((t, b)))
        task = asyncio.create_task(pub.run(), name="publish")
        try:
            async with asyncio.timeout(scaled(60)):
                await await_until(lambda: (status, b"online") in got, what="the status")
                for _ in range(100):  # until the subscription is in place
                    sender.publish(command, b"ON", qos=1)
                    if (command, b"ON") in got:
                        break
                    await asyncio.sleep(0.1)
        finally:
            await pub.close()
            task.cancel()

    outbox = Outbox(tmp_path / "commands.sqlite3")
    asyncio.run(main())
    outbox.close()
    sender.disconnect()
    sender.loop_stop()
    assert (command, b"OFF") not in got and (command, b"ON") in got
    warned = [r.getMessage() for r in caplog.records if "retained" in r.getMessage()]
    assert warned == [f"ignoring a retained message on {command}: commands must not be "
                      f"retained (clear it: mosquitto_pub -r -n -t '{command}')"]


def test_partials_when_enabled(broker: Broker, tmp_path: Path) -> None:
    sub = Subscriber(broker.port)

    async def body(pub: Publisher, _o: Outbox) -> None:
        await await_until(lambda: pub.connected, what="connect")
        pub.partial("hello wor")
        await await_until(lambda: bool(sub.on("partial")), what="partial")

    run_with_publisher(settings(tmp_path, broker.port, publish_partials=True), body).close()
    assert validate("partial", sub.on("partial")[0].payload)["text"] == "hello wor"
    sub.close()


def test_outage_delivers_everything_once(persistent_broker: Broker, tmp_path: Path) -> None:
    broker = persistent_broker
    sub = Subscriber(broker.port, persistent_id="outage-sub")

    async def body(pub: Publisher, outbox: Outbox) -> None:
        await await_until(lambda: pub.connected, what="connect")
        # Nothing in flight to the subscriber when the broker stops: the broker would
        # re-send that itself, which is its at-least-once, not ours.
        await asyncio.to_thread(broker.stop)
        await await_until(lambda: not pub.connected, what="disconnect noticed")
        for i in range(3):
            pub.submit(transcript(f"during the outage {i}"))
        assert len(outbox) == 3
        await asyncio.to_thread(broker.start)
        await await_until(lambda: len(outbox) == 0, what="outbox drained after restart")
        # Sent after every earlier PUBACK: once it arrives, nothing earlier is in transit.
        pub.submit(transcript("after the outage"))
        await await_until(lambda: "after the outage" in sub.texts(), what="last transcript")

    run_with_publisher(settings(tmp_path, broker.port), body).close()
    assert sub.texts() == ["during the outage 0", "during the outage 1",
                           "during the outage 2", "after the outage"]
    assert [t["seq"] for t in sub.transcripts()] == [1, 2, 3, 4]
    sub.close()


def write_config(tmp_path: Path, port: int, extra: str = "") -> Path:
    path = tmp_path / "roomscribe.toml"
    path.write_text(f'[device]\nid = "{DEVICE}"\nroom = "kitchen"\n'
                    f'[mqtt]\nport = {port}\nreconnect_max_s = 2\n{extra}'
                    f'[state]\ndir = "{tmp_path / "state"}"\n')
    return path


class Child:
    def __init__(self, config: Path, count: int, prefix: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(CHILD), str(config), str(count),
                                      prefix], stdout=subprocess.PIPE, text=True)

    def expect(self, word: str, timeout_s: float = 30.0) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + scaled(timeout_s)
        # Lines come in a fixed order and the child exits after 120 s, so readline ends.
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().strip()
            if line == word:
                return
            if not line and self.proc.poll() is not None:
                break
        raise AssertionError(f"child did not say {word!r}")

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(scaled(10))
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def test_a_stop_before_the_broker_was_reached_says_what_waits(
        broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The outbox keeps them for the next start; the stop used to say nothing of them."""
    caplog.set_level(logging.INFO)
    broker.stop()
    s = settings(tmp_path, broker.port)

    async def said(pub: Publisher, _o: Outbox) -> None:
        pub.submit(transcript("one"))
        pub.submit(transcript("two"))
        await asyncio.sleep(0.5)  # trying to connect

    run_with_publisher(s, said).close()
    assert (f"mqtt: 2 transcript(s) not delivered at shutdown: they stay in "
            f"{tmp_path / 'outbox.sqlite3'} and go out when the daemon next reaches "
            f"127.0.0.1:{broker.port}") in caplog.text
    broker.start()
    sub = Subscriber(broker.port)

    async def later(_p: Publisher, outbox: Outbox) -> None:
        await await_until(lambda: len(outbox) == 0, what="the outbox sent")

    run_with_publisher(s, later).close()
    wait(lambda: len(sub.texts()) == 2, 10, "both")
    assert sub.texts() == ["one", "two"]
    sub.close()


def test_will_offline_on_sigkill(broker: Broker, tmp_path: Path) -> None:
    sub = Subscriber(broker.port)
    child = Child(write_config(tmp_path, broker.port), 0, "x")
    try:
        child.expect("connected")
        wait(lambda: [m.payload for m in sub.on("availability")] == [b"online"], 10, "online")
    finally:
        child.kill()
    wait(lambda: [m.payload for m in sub.on("availability")] == [b"online", b"offline"], 15,
         "the will")
    sub.close()


def test_sigkill_during_outage_then_restart_delivers_once(broker: Broker,
                                                          tmp_path: Path) -> None:
    config = write_config(tmp_path, broker.port)
    broker.stop()
    first = Child(config, 5, "queued")
    try:
        first.expect("submitted")
    finally:
        first.kill()
    broker.start()
    sub = Subscriber(broker.port)
    second = Child(config, 1, "fresh")
    try:
        second.expect("drained")
        # The restarted process sends its outbox in seq order: "fresh 0" comes last.
        wait(lambda: "fresh 0" in sub.texts(), 15, "the new transcript")
    finally:
        second.kill()
    got = sub.transcripts()
    assert [t["text"] for t in got] == [f"queued {i}" for i in range(5)] + ["fresh 0"]
    assert len({t["id"] for t in got}) == 6
    assert [t["seq"] for t in got] == [1, 2, 3, 4, 5, 6]
    sub.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_expired_transcripts_are_not_delivered(broker: Broker, tmp_path: Path,
                                               protocol: str) -> None:
    sub = Subscriber(broker.port, protocol=mqtt.MQTTv5)

    async def body(pub: Publisher, outbox: Outbox) -> None:
        await await_until(lambda: pub.connected, what="connect")
        pub.submit(transcript("an hour old", end=time.time() - 3600))
        pub.submit(transcript("fresh"))
        await await_until(lambda: "fresh" in sub.texts(), what="fresh transcript")
        await await_until(lambda: any(validate("state", m.payload)["expired"] == 1
                                      for m in sub.on("state")), what="expired count")
        assert len(outbox) == 0

    run_with_publisher(settings(tmp_path, broker.port, protocol=protocol, max_age_s=600),
                       body).close()
    assert sub.texts() == ["fresh"]
    props = sub.on("transcript")[0].properties
    expiry = getattr(props, "MessageExpiryInterval", None)
    if protocol == "5":
        assert expiry is not None and 0 < expiry <= 600
    else:
        assert expiry is None
    sub.close()


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[Broker]:
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "mic", "s3cret-Pa55"],
                   check=True, timeout=scaled(30), capture_output=True)
    # "user root": as root, mosquitto would switch to its own user, who cannot read tmp_path.
    b = start_broker(tmp_path, f"allow_anonymous false\npassword_file {pw}\nuser root\n")
    yield b
    b.stop()


def test_a_topic_the_broker_acl_refuses_is_said_once(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """An account allowed roomscribe/# only: Home Assistant never saw the device and a
    trigger never fired, and the log said nothing (Mosquitto answers MQTT 5 with "Not
    authorized"; over 3.1.1 it drops the message without a word)."""
    caplog.set_level(logging.INFO)
    pw, acl = tmp_path / "passwd", tmp_path / "acl"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "mic", "s3cret-Pa55"],
                   check=True, timeout=scaled(30), capture_output=True)
    acl.write_text("user mic\ntopic readwrite roomscribe/#\n")
    broker = start_broker(tmp_path, f"allow_anonymous false\npassword_file {pw}\n"
                                    f"acl_file {acl}\nuser root\n")
    discovery = [Message(f"homeassistant/sensor/{DEVICE}/{key}/config", {"name": key},
                         retain=True) for key in ("status", "buffered")]
    trigger = Message("home/lights/set", "ON")

    async def body(pub: Publisher, outbox: Outbox) -> None:
        await await_until(lambda: pub.connected, what="connect")
        for msg in [*discovery, trigger, trigger]:
            pub.send(msg)
        pub.submit(transcript("lights on"))
        await await_until(lambda: "home/lights/set" in caplog.text, what="the trigger said")
        await await_until(lambda: len(outbox) == 0, what="the transcript delivered")
        assert pub.trouble.startswith("mqtt: 127.0.0.1")  # Home Assistant's Last error

    try:
        run_with_publisher(settings(tmp_path / "s", broker.port, username="mic"), body,
                           password="s3cret-Pa55").close()
    finally:
        broker.stop()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    where = f"mqtt: 127.0.0.1:{broker.port} refused a message on"
    assert errors == [
        f"{where} {discovery[0].topic}: Not authorized (the broker's ACL must let user "
        "'mic' publish to homeassistant/#)",
        f"{where} home/lights/set: Not authorized (the broker's ACL must let user 'mic' "
        "publish to home/#)",
    ], errors


def test_password_broker(password_broker: Broker, tmp_path: Path) -> None:
    port = password_broker.port
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    watcher.username_pw_set("mic", "s3cret-Pa55")
    sub_texts: list[str] = []
    watcher.on_message = lambda _c, _u, m: sub_texts.append(validate("transcript",
                                                                     m.payload)["text"])
    watcher.on_connect = lambda c, *_: c.subscribe("roomscribe/+/transcript", 1)
    watcher.connect("127.0.0.1", port)
    watcher.loop_start()

    async def good(pub: Publisher, _o: Outbox) -> None:
        await await_until(lambda: pub.connected, what="connect")
        pub.submit(transcript("authenticated"))
        await await_until(lambda: sub_texts == ["authenticated"], what="delivery")

    run_with_publisher(settings(tmp_path / "a", port, username="mic"), good,
                       password="s3cret-Pa55").close()
    watcher.disconnect()
    watcher.loop_stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_wrong_password_is_one_clear_line(password_broker: Broker, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture,
                                          protocol: str) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wr0ng-Secret-XYZ"

    async def bad(pub: Publisher, _o: Outbox) -> None:
        await await_until(lambda: bool(pub.last_error), what="an error")
        assert not pub.connected

    run_with_publisher(settings(tmp_path, password_broker.port, username="mic",
                                protocol=protocol), bad, password=wrong).close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "\n" not in errors[0]
    assert "refused" in errors[0] and str(password_broker.port) in errors[0]
    assert wrong not in caplog.text


def test_a_broker_still_starting_keeps_mqtt5(broker: Broker, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """A port that takes connections and drops them (Docker's, before the broker in the
    container listens) drops MQTT 5 and 3.1.1 logins alike: once the broker is up, the
    daemon must not stay on 3.1.1 because that was the version trying at the time."""
    caplog.set_level(logging.DEBUG, logger="roomscribe.publish")
    proxy = FaultProxy(broker.port)
    proxy.refuse()
    sub = Subscriber(broker.port)

    async def body(pub: Publisher, outbox: Outbox) -> None:
        pub.submit(transcript("said while the broker started"))
        # The MQTT 5 login dropped; the broker is up when 3.1.1 tries.
        await await_until(lambda: "with MQTT 3.1.1 in" in caplog.text, what="3.1.1 next")
        assert not pub.connected
        proxy.heal()
        await await_until(lambda: len(outbox) == 0, what="outbox drained")

    try:
        run_with_publisher(settings(tmp_path, proxy.port, reconnect_min_s=0.2),
                           body).close()
    finally:
        proxy.close()
        sub.close()
    assert sub.texts() == ["said while the broker started"]
    assert f"connected to 127.0.0.1:{proxy.port} (MQTT 5)" in caplog.text
    assert "does not speak MQTT 5" not in caplog.text


def test_login_version_takes_3_1_1_from_a_broker_without_mqtt5() -> None:
    refused = LoginVersion("5", 1.0, 60.0)
    assert refused.answered(UNSUPPORTED_VERSION) == 1.0 and refused.current == "3.1.1"
    assert refused.answered(0) is None and refused.fell_back
    assert refused.unanswered() is None  # settled: a later outage changes nothing
    # Unanswered logins: the versions take turns, backing off, until one is answered;
    # an answered 3.1.1 is held against MQTT 5 once more.
    dropped = LoginVersion("5", 1.0, 6.0)
    turns = [(dropped.unanswered(), dropped.current) for _ in range(5)]
    assert turns == [(1.0, "3.1.1"), (2.0, "5"), (4.0, "3.1.1"), (6.0, "5"), (6.0, "3.1.1")]
    assert dropped.answered(0) == 1.0 and dropped.current == "5"
    assert dropped.unanswered() == 1.0 and dropped.current == "3.1.1"  # no MQTT 5 here
    assert dropped.answered(0) is None and dropped.fell_back
    assert dropped.unanswered() is None and dropped.current == "3.1.1"
    # A broker still starting (its port taken, its logins dropped): MQTT 5 stays.
    starting = LoginVersion("5", 1.0, 6.0)
    assert starting.unanswered() == 1.0 and starting.answered(0) == 1.0
    assert starting.answered(0) is None and starting.current == "5"
    assert starting.unanswered() is None and not starting.fell_back
    # A wrong password is an answer, and the version stays.
    wrong = LoginVersion("5", 1.0, 60.0)
    assert wrong.answered(135) is None and wrong.unanswered() is None
    assert wrong.current == "5" and not wrong.fell_back
    # Configured 3.1.1 is never changed.
    old = LoginVersion("3.1.1", 1.0, 60.0)
    assert old.unanswered() is None and old.answered(UNSUPPORTED_VERSION) is None


def test_clash_watch_tells_a_clash_from_an_outage() -> None:
    watch, t = ClashWatch(), 0.0
    # A broker restart: a connection that had lasted is lost once, then holds again.
    watch.connected(t)
    assert not watch.lost(t + 3600, 128)
    watch.connected(t + 3602)
    assert not watch.lost(t + 3603, 128)  # the restarting broker dropped it at once
    watch.connected(t + 3605)
    assert not watch.lost(t + 3900, 128)  # then it held
    # Another client with our id: lost within a second of each login, again and again.
    for i in range(1, ClashWatch.IN_A_ROW):
        watch.connected(t + 4000 + 2 * i)
        assert not watch.lost(t + 4001 + 2 * i, 128)
    watch.connected(t + 4100)
    assert watch.lost(t + 4101, 128)
    # The other one stopped: a connection lasts, and the next loss is an outage again.
    watch.connected(t + 4102)
    assert not watch.settled(t + 4103)
    assert watch.settled(t + 4102 + ClashWatch.SHORT_S)
    assert not watch.settled(t + 4102 + ClashWatch.SHORT_S + 1)  # said once
    assert not watch.lost(t + 4102 + ClashWatch.SHORT_S + 1, 128)
    assert not watch.suspected
    # A link that drops again and again soon after login, with logins that fail in
    # between (flaky Wi-Fi, a broker going down): an outage, not a clash.
    for i in range(ClashWatch.IN_A_ROW + 1):
        watch.connected(t + 4200 + 3 * i)
        assert not watch.lost(t + 4201 + 3 * i, 128)
        watch.connect_failed()
    # A broker that says why it drops us (here "Packet too large") is not a clash.
    for i in range(ClashWatch.IN_A_ROW + 1):
        watch.connected(t + 4500 + 2 * i)
        assert not watch.lost(t + 4501 + 2 * i, 149)
    # MQTT 5 brokers newer than Debian's Mosquitto name it at once: "Session taken over".
    watch.connected(t + 5000)
    assert watch.lost(t + 9000, 142)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_two_daemons_with_one_device_id_are_told_so(broker: Broker, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture,
                                                     protocol: str) -> None:
    """Two rooms set up alike: the broker drops each whenever the other logs in. Each
    says why, once, not a warning a second; every transcript still arrives."""
    caplog.set_level(logging.DEBUG)
    sub = Subscriber(broker.port)
    a = settings(tmp_path / "a", broker.port, protocol=protocol)
    b = settings(tmp_path / "b", broker.port, protocol=protocol)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    clash = "keeps dropping this connection right after login"

    def said(text: str) -> int:
        return sum(text in r.getMessage() for r in caplog.records)

    async def main() -> None:
        pubs = [Publisher(s, Outbox(Path(s.state.dir) / "outbox.sqlite3")) for s in (a, b)]
        tasks = [asyncio.create_task(p.run(), name=f"publish-{i}")
                 for i, p in enumerate(pubs)]
        try:
            async with asyncio.timeout(scaled(90)):
                await await_until(lambda: said(clash) >= 2, 60, "both to name the clash")
                assert all(clash in p.trouble for p in pubs)
                for i in range(3):
                    for name, pub in zip("ab", pubs, strict=True):
                        pub.submit(transcript(f"room {name} sentence {i}"))
                # More turns of the clash: it is not said again.
                turns = said("connected to") + 6
                await await_until(lambda: said("connected to") >= turns, 60, "six turns")
                await await_until(lambda: len({t["id"] for t in sub.transcripts()}) == 6, 60,
                                  "every transcript")
                # The second room gets its own id (stopped here): the first one says so.
                await pubs[1].close(5.0)
                await await_until(lambda: said("holds again") == 1, 60, "the clash to end")
                assert pubs[0].trouble == ""
        finally:
            for pub in pubs:
                await pub.close(5.0)
            for task in tasks:
                task.cancel()

    asyncio.run(main())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and all(clash in e for e in errors), errors
    assert len(errors) == 2, errors  # once each
    assert "device.id 'dev1'" in errors[0] and "'roomscribe-dev1'" in errors[0]
    texts = {t["id"]: t["text"] for t in sub.transcripts()}  # at-least-once: by id
    for name in "ab":
        assert [x for x in texts.values() if x.startswith(f"room {name}")] == [
            f"room {name} sentence {i}" for i in range(3)]
    sub.close()


def test_a_full_disk_loses_no_transcript_and_says_so_once(
        broker: Broker, small_disk: SmallDisk, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    sub = Subscriber(broker.port)
    s = settings(small_disk.path, broker.port)
    full = "cannot write to outbox: database or disk is full"

    async def body(pub: Publisher, outbox: Outbox) -> None:
        await await_until(lambda: pub.connected, what="connect")
        pub.submit(transcript("said before"))
        # Acknowledged first: a delete the full disk refuses is test_outbox's case.
        await await_until(lambda: len(outbox) == 0, what="the first one acknowledged")
        await asyncio.to_thread(small_disk.fill)
        for i in range(3):
            pub.submit(transcript(f"said while the disk is full {i}"))
        await await_until(lambda: len(sub.texts()) == 4, what="the transcripts")
        assert full in pub.trouble  # the state's last_error says it while it lasts
        await asyncio.to_thread(small_disk.free)
        pub.submit(transcript("said after"))
        assert pub.trouble == ""
        await await_until(lambda: len(sub.texts()) == 5, what="the last transcript")
        await await_until(lambda: len(outbox) == 0, what="outbox drained")
        # Full again with the broker away: a stop now loses that one, and says so.
        await asyncio.to_thread(small_disk.fill)
        await asyncio.to_thread(broker.stop)
        await await_until(lambda: not pub.connected, what="disconnect noticed")
        pub.submit(transcript("said with nowhere to go"))

    lost: list[int] = []

    async def body_and_close(pub: Publisher, outbox: Outbox) -> None:
        await body(pub, outbox)
        await pub.close(5.0)
        lost.append(pub.lost_at_close)

    run_with_publisher(s, body_and_close).close()
    assert lost == [1]
    assert "1 transcript(s) held in memory (the disk refused them) are lost with this stop" \
        in caplog.text
    assert sub.texts() == ["said before", *[f"said while the disk is full {i}"
                                            for i in range(3)], "said after"]
    assert [t["seq"] for t in sub.transcripts()] == [1, 2, 3, 4, 5]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2 and all(full in e and "held in memory" in e for e in errors), errors
    assert "writing to the outbox again" in caplog.text
    sub.close()


def make_tls_files(d: Path) -> None:
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl."""
    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, timeout=scaled(60), capture_output=True,
                       cwd=d)

    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=roomscribe test CA")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext")


def test_tls_broker(tmp_path: Path) -> None:
    make_tls_files(tmp_path)
    broker = start_broker(tmp_path, f"cafile {tmp_path}/ca.crt\ncertfile {tmp_path}/server.crt\n"
                                    f"keyfile {tmp_path}/server.key\nuser root\n")
    try:
        async def body(pub: Publisher, outbox: Outbox) -> None:
            await await_until(lambda: pub.connected, what="TLS connect")
            pub.submit(transcript("over tls"))
            await await_until(lambda: len(outbox) == 0, what="PUBACK over TLS")

        s = settings(tmp_path / "state", broker.port, tls=True, ca_file=str(tmp_path / "ca.crt"))
        run_with_publisher(s, body).close()
    finally:
        broker.stop()


def test_missing_tls_file_is_one_line(tmp_path: Path) -> None:
    s = settings(tmp_path, 1883, tls=True, ca_file=str(tmp_path / "nope.crt"))
    outbox = Outbox(tmp_path / "o.sqlite3")
    with pytest.raises(PublishError) as info:
        Publisher(s, outbox)
    assert "\n" not in str(info.value) and "nope.crt" in str(info.value)
    outbox.close()

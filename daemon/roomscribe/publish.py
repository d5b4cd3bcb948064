"""The paho-mqtt shell: connect, availability, drain the outbox, retained state.

paho's network loop runs in its own thread (loop_start) and reconnects by itself with
backoff (connect_async + reconnect_delay_set). Its callbacks only hop onto the asyncio
loop with call_soon_threadsafe; all bookkeeping (in-flight map, outbox, state) lives on
the asyncio thread, so nothing here needs a lock.

Delivery: every transcript is in the outbox before it is sent and leaves it on its
PUBACK. paho keeps QoS 1 messages it was handed across reconnects and re-sends them
itself, so a transcript is handed to paho once per process; after a restart the whole
outbox is sent again. At-least-once on the wire; subscribers dedupe by `id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from . import payload
from .broker_trouble import (
    LOGIN_TIMEOUT_S,
    ClashWatch,
    LoginVersion,
    older_protocol_note,
    silent_hint,
)
from .config import Settings
from .message import Message
from .outbox import Outbox, OutboxEntry, OutboxError
from .transcript import Transcript

log = logging.getLogger(__name__)

# Spare in-flight slots for availability and state messages next to the transcripts.
_SPARE_INFLIGHT = 4
# Other QoS 1 messages (state, discovery, triggers) whose PUBACK is awaited, to name a
# topic the broker refuses: ~100 bytes each.
_EXTRAS_MAX = 256


class PublishError(Exception):
    """An MQTT setting that cannot work (e.g. unreadable TLS files): one line."""


def check_tls(settings: Settings) -> None:
    """A PublishError for TLS files the client could not load, before connecting."""
    m = settings.mqtt
    if not m.tls:
        return
    try:
        context = ssl.create_default_context(cafile=m.ca_file or None)
        if m.cert_file:
            context.load_cert_chain(m.cert_file, m.key_file or None)
    except (OSError, ssl.SSLError) as exc:
        where = settings.where
        raise PublishError(
            f"{where}: mqtt TLS (ca_file={m.ca_file!r}, cert_file={m.cert_file!r}, "
            f"key_file={m.key_file!r}): {getattr(exc, 'strerror', None) or exc}") from None


class Publisher:
    def __init__(self, settings: Settings, outbox: Outbox, password: str = "") -> None:
        self._settings = settings
        self._m = m = settings.mqtt
        self._outbox = outbox
        self.topics = payload.topics(m.topic_prefix, settings.device.id)
        self._version = LoginVersion(m.protocol, m.reconnect_min_s, m.reconnect_max_s)
        self._login_answered = False  # this connection's login (paho says nothing else)
        self._told_older = False
        self._where = f"{m.host}:{m.port}"
        self._password = password  # for the client a switch to 3.1.1 makes
        self._client = self._make_client()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._connected = False
        self._closing = False
        # mid -> entry for transcripts paho holds until their PUBACK. Bound: inflight_max
        # entries of ~1 KB.
        self._inflight: dict[int, OutboxEntry] = {}
        self._last_sent_seq = 0
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._extras: dict[int, str] = {}  # mid -> topic; bound: _EXTRAS_MAX
        # First topic level -> what was said of the broker refusing it (an ACL that lets
        # us publish transcripts but not discovery or a trigger's topic); bound: the
        # roots we publish to.
        self._refused_roots: dict[str, str] = {}
        self._state = payload.StateReporter(m.state_interval_s, time.monotonic())
        self._partials: payload.Throttle[str] = payload.Throttle(m.partial_interval_ms / 1000)
        self._partial_timer: asyncio.TimerHandle | None = None
        self._expired = 0
        self._last_logged = ""
        self.last_error = ""
        self._clash = ClashWatch()
        self._clash_text = ""
        # Since when there is no connection, and whether anything said why: a port that
        # takes the connection and never answers the login (a TLS port without
        # mqtt.tls) gets no error from paho at all.
        self._down_since = time.monotonic()
        self._said_since_down = False
        self.lost_at_close = 0  # transcripts only in memory when close() gave up
        if outbox.write_error:
            self._error(outbox.write_error)
        self._connect_hooks: list[Callable[[], Iterable[Message]]] = []
        # Replaced, never mutated: paho's thread reads it in on_connect.
        self._subscriptions: tuple[tuple[str, Callable[[str, bytes], None], bool], ...] = ()
        self._stale_commands: set[str] = set()  # topics already warned about; bound: ours

    @property
    def trouble(self) -> str:
        """A problem on this side that lasts while transcripts still flow, for the
        state's last_error: another client with our id, or a disk that refuses the
        outbox. "" when there is none."""
        if self._clash.suspected:
            return self._clash_text
        return self._outbox.write_error or next(iter(self._refused_roots.values()), "")

    @property
    def _v5(self) -> bool:
        return self._version.current == "5"

    def _make_client(self) -> mqtt.Client:
        m, s = self._m, self._settings
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=m.client_id or f"roomscribe-{s.device.id}",
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
        )
        if m.username:
            client.username_pw_set(m.username, self._password or None)
        if m.tls:
            try:
                client.tls_set(ca_certs=m.ca_file or None, certfile=m.cert_file or None,
                               keyfile=m.key_file or None)
            except (OSError, ssl.SSLError) as exc:
                raise PublishError(
                    f"mqtt TLS (ca_file={m.ca_file!r}, cert_file={m.cert_file!r}, "
                    f"key_file={m.key_file!r}): {exc}") from None
        client.will_set(self.topics.availability, payload.OFFLINE,
                        qos=payload.AVAILABILITY_QOS, retain=True)
        client.reconnect_delay_set(m.reconnect_min_s, max(m.reconnect_min_s, m.reconnect_max_s))
        client.max_inflight_messages_set(m.inflight_max + _SPARE_INFLIGHT)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    # --- paho's network thread: hop to asyncio and nothing else (but "online") ---

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        # RuntimeError: the loop is closed because the process is exiting.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode,
                    _p: Any) -> None:
        if rc.is_failure:
            self._call(self._refused, client, rc)
            return
        # Sent from this thread so "online" precedes the messages paho re-sends next.
        client.publish(self.topics.availability, payload.ONLINE,
                       qos=payload.AVAILABILITY_QOS, retain=True)
        for topic, _handler, _commands in self._subscriptions:
            client.subscribe(topic, qos=1)
        self._call(self._up, client)

    def _on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        self._call(self._clash.connect_failed)
        self._call(self._error, f"mqtt: cannot connect to {self._where} (retrying)",
                   logging.WARNING)

    def _on_disconnect(self, client: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode,
                       _p: Any) -> None:
        self._call(self._down, client, str(rc), rc.value)

    def _on_publish(self, client: mqtt.Client, _u: Any, mid: int, rc: ReasonCode,
                    _p: Any) -> None:
        if client is self._client:  # a replaced client's message ids mean nothing now
            self._call(self._acked, mid, rc)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._call(self._dispatch, msg.topic, bytes(msg.payload), bool(msg.retain))

    # --- the asyncio thread ---

    def _error(self, message: str, level: int = logging.ERROR) -> None:
        self._said_since_down = True
        self.last_error = message
        self._state.update(last_error=message)
        # A broker that stays down must not log a line per retry.
        if message != self._last_logged:
            log.log(level, "%s", message)
            self._last_logged = message
        else:
            log.debug("%s", message)

    def _refused(self, client: mqtt.Client, rc: ReasonCode) -> None:
        if client is not self._client:
            return  # a client replaced by one of another MQTT version
        self._login_answered = True
        wait_s = self._version.answered(rc.value)
        if wait_s is not None:
            self._switch_version(wait_s)
            return
        self._error(f"mqtt: {self._where} refused the connection: {rc} (check "
                    "mqtt.username, the password and the broker ACL)")

    def _switch_version(self, wait_s: float) -> None:
        """Log in with self._version.current on a new paho client (a client's version
        is fixed when it is made), after wait_s."""
        log.debug("mqtt: logging in to %s with MQTT %s in %.1f s", self._where,
                  self._version.current, wait_s)
        old, self._client = self._client, self._make_client()
        old.disconnect()
        self._login_answered = False
        # Whatever the old client held goes again from the outbox.
        self._inflight.clear()
        self._extras.clear()
        self._last_sent_seq = 0
        if self._loop is not None:
            # disconnect() alone does not stop a thread between two reconnects;
            # loop_stop() does, joining it (up to a second), so off this thread.
            self._loop.run_in_executor(None, old.loop_stop)
            self._loop.call_later(wait_s, self._start)

    def _start(self) -> None:
        if self._closing:
            return
        self._client.connect_async(self._m.host, self._m.port, keepalive=self._m.keepalive_s)
        self._client.loop_start()

    def _up(self, client: mqtt.Client) -> None:
        if client is not self._client:
            return
        self._login_answered = True
        wait_s = self._version.answered(0)
        if wait_s is not None:
            self._switch_version(wait_s)  # MQTT 5 once more, before 3.1.1 stays
            return
        if self._version.fell_back and not self._told_older:
            self._told_older = True
            log.warning("%s", older_protocol_note(self._where))
        self._connected = True
        self._said_since_down = False
        self._clash.connected(time.monotonic())
        if self._clash.suspected:
            # Once a second while the clash lasts: said once, in _down.
            log.debug("mqtt: connected to %s again", self._where)
        else:
            self._last_logged = ""
            log.info("mqtt: connected to %s (MQTT %s)", self._where, self._version.current)
        self._state.force()
        for hook in self._connect_hooks:
            for msg in hook():
                self.send(msg)
        self._wake.set()

    def _dispatch(self, topic: str, body: bytes, retained: bool) -> None:
        for pattern, handler, commands in self._subscriptions:
            if not mqtt.topic_matches_sub(pattern, topic):
                continue
            if retained and commands:
                # A retained command is stale by the time it is delivered again, at each
                # reconnect: a forgotten retained OFF would undo a privacy mute.
                if topic not in self._stale_commands:
                    self._stale_commands.add(topic)
                    log.warning("ignoring a retained message on %s: commands must not be "
                                "retained (clear it: mosquitto_pub -r -n -t '%s')",
                                topic, topic)
                continue
            handler(topic, body)

    def _down(self, client: mqtt.Client, reason: str, code: int) -> None:
        if client is not self._client:
            return
        answered, self._login_answered = self._login_answered, False
        was = self._connected
        self._connected = False
        if not (was or answered or self._closing):
            wait_s = self._version.unanswered()
            if wait_s is not None:
                self._switch_version(wait_s)
                return
        if was and not self._closing and self._clash.lost(time.monotonic(), code):
            client_id = self._m.client_id or f"roomscribe-{self._settings.device.id}"
            key, value = (("mqtt.client_id", client_id) if self._m.client_id
                          else ("device.id", self._settings.device.id))
            self._clash_text = (
                f"mqtt: {self._where} keeps dropping this connection right after login: "
                f"another client logs in as {client_id!r}, most likely a second "
                f"roomscribe with {key} {value!r}; give each microphone its own {key} "
                "(reconnecting)")
            self._error(self._clash_text)
        elif was and not self._closing:
            self._error(f"mqtt: connection to {self._where} lost: {reason} (reconnecting)",
                        logging.WARNING)
        if was:
            self._down_since, self._said_since_down = time.monotonic(), False

    def _acked(self, mid: int, rc: ReasonCode) -> None:
        entry = self._inflight.pop(mid, None)
        if entry is None:
            topic = self._extras.pop(mid, None)
            if topic is not None:
                self._extra_acked(topic, rc)
            waiter = self._waiters.pop(mid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        if rc.is_failure:
            # Re-sending would be refused forever (e.g. an ACL): drop it, loudly.
            self._error(f"mqtt: broker refused transcript seq {entry.seq} on "
                        f"{self.topics.transcript}: {rc}")
        self._ack(entry.id, delivered=not rc.is_failure)
        self._wake.set()

    def _extra_acked(self, topic: str, rc: ReasonCode) -> None:
        """MQTT 5 brokers say when their ACL refuses a message (3.1.1 ones drop it
        silently): said once per first topic level, until one there goes through."""
        root = topic.split("/", 1)[0]
        if not rc.is_failure:
            self._refused_roots.pop(root, None)
            return
        if root in self._refused_roots:
            return
        who = f"user {self._m.username!r}" if self._m.username else "this client"
        self._refused_roots[root] = text = (
            f"mqtt: {self._where} refused a message on {topic}: {rc} (the broker's ACL "
            f"must let {who} publish to {root}/#)")
        self._error(text)

    def _publish(self, topic: str, body: bytes | str, qos: int, retain: bool,
                 properties: Properties | None = None) -> None:
        """Publish anything but a transcript, keeping the topic for its PUBACK."""
        info = self._client.publish(topic, body, qos=qos, retain=retain, properties=properties)
        if qos > 0:
            if len(self._extras) >= _EXTRAS_MAX:
                self._extras.pop(next(iter(self._extras)))
            self._extras[info.mid] = topic

    def _ack(self, entry_id: str, delivered: bool = False) -> None:
        was = self._outbox.write_error
        self._outbox.ack(entry_id, delivered=delivered)
        if self._outbox.write_error and not was:
            self._error(self._outbox.write_error)

    def _properties(self, remaining_s: float | None) -> Properties | None:
        if not self._v5:
            return None
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.PayloadFormatIndicator = 1
        props.ContentType = "application/json"
        if remaining_s is not None:
            props.MessageExpiryInterval = max(1, int(remaining_s))
        return props

    def _fill(self) -> None:
        """Hand pending transcripts to paho, in seq order, up to inflight_max."""
        max_age = self._m.max_age_s
        while self._connected:
            room = self._m.inflight_max - len(self._inflight)
            if room <= 0:
                return
            try:
                entries = self._outbox.pending(after_seq=self._last_sent_seq, limit=room)
            except OutboxError as exc:
                self._error(str(exc))
                return
            if not entries:
                return
            for e in entries:
                self._last_sent_seq = e.seq
                now = time.time()
                remaining = None
                if max_age > 0:
                    remaining = max_age - (now - e.captured_end)
                    if remaining <= 0:
                        self._expire(e, now)
                        continue
                info = self._client.publish(
                    self.topics.transcript, payload.restamp(e.payload, now),
                    qos=payload.TRANSCRIPT_QOS, retain=False,
                    properties=self._properties(remaining))
                self._inflight[info.mid] = e

    def _expire(self, e: OutboxEntry, now: float) -> None:
        self._expired += 1
        log.warning("mqtt: transcript seq %d is %.0f s old, over mqtt.max_age_s = %d: dropped",
                    e.seq, now - e.captured_end, self._m.max_age_s)
        self._ack(e.id)

    def _publish_state(self) -> None:
        if not self._connected:
            return
        published = self._state.current.transcripts_published
        try:
            pending, dropped = len(self._outbox), self._outbox.dropped
            published = self._outbox.published
        except (OutboxError, sqlite3.Error):  # the state must not stop the sender
            pending, dropped = -1, -1
        self._state.update(transcripts_published=published, expired=self._expired,
                           outbox_pending=pending, outbox_dropped=dropped)
        state = self._state.due(time.monotonic())
        if state is not None:
            self._publish(
                self.topics.state,
                state.encode(device=self._settings.device.id, room=self._settings.device.room,
                             now=time.time()),
                qos=payload.STATE_QOS, retain=True, properties=self._properties(None))

    async def _wait_wake(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(max(0.0, timeout_s)):
                await self._wake.wait()
        except TimeoutError:
            pass
        self._wake.clear()

    # --- public interface ---

    @property
    def connected(self) -> bool:
        return self._connected

    async def run(self) -> None:
        """Connect (retrying forever) and drain the outbox until close() or cancel."""
        self._loop = asyncio.get_running_loop()
        self._start()
        self._down_since = time.monotonic()
        while not self._closing:
            self._say_if_silent(time.monotonic())
            if self._clash.settled(time.monotonic()):
                log.info("mqtt: the connection to %s holds again", self._where)
                self._last_logged = ""
            self._fill()
            self._publish_state()
            await self._wait_wake(1.0)

    def _say_if_silent(self, now: float) -> None:
        if (self._connected or self._said_since_down
                or now - self._down_since < LOGIN_TIMEOUT_S):
            return
        hint = silent_hint(self._m.tls)
        self._error(f"mqtt: {self._where} took the connection but has not answered the "
                    f"login for {LOGIN_TIMEOUT_S:.0f} s ({hint}) (retrying)", logging.WARNING)

    def submit(self, t: Transcript) -> str:
        """Store durably in the outbox (in memory if the disk refuses), then wake the
        sender; no network wait. Returns the transcript's id (the dedupe key)."""
        t = payload.capped(t, self._m.transcript_max_chars)
        # The final supersedes any partial still waiting for its turn.
        self._partials.drop()
        was_refused = bool(self._outbox.write_error)
        entry = self._outbox.add(t, device=self._settings.device.id,
                                 room=self._settings.device.room)
        if not entry.durable:
            self._error(self._outbox.write_error)
        elif was_refused:
            log.info("%s: writing to the outbox again", self._outbox.path)
            self._last_logged = ""  # the next time the disk fills is news again
        # Hand it to paho now rather than on the sender task's next turn: this is the
        # latency a voice trigger feels.
        self._fill()
        self._wake.set()
        return entry.id

    def partial(self, text: str) -> None:
        """Publish an interim hypothesis: cut like a transcript, at most one per
        mqtt.partial_interval_ms (the newest waiting one goes out when the gap is over)."""
        if not (self._m.publish_partials and self._connected):
            return
        text = text[:self._m.transcript_max_chars]
        out = self._partials.offer(text, time.monotonic())
        if out is not None:
            self._send_partial(out)
        else:
            self._schedule_partial()

    def _schedule_partial(self) -> None:
        wake = self._partials.wake_at()
        if wake is None or self._partial_timer is not None or self._loop is None:
            return
        self._partial_timer = self._loop.call_later(max(0.0, wake - time.monotonic()),
                                                    self._flush_partial)

    def _flush_partial(self) -> None:
        self._partial_timer = None
        out = self._partials.due(time.monotonic())
        if out is None:
            self._schedule_partial()  # woken a hair early: try again at wake_at
        elif self._connected:
            self._send_partial(out)

    def _send_partial(self, text: str) -> None:
        body = payload.partial_payload(text, device=self._settings.device.id,
                                       room=self._settings.device.room, published=time.time())
        self._publish(self.topics.partial, body, qos=payload.PARTIAL_QOS, retain=False,
                      properties=self._properties(None))

    def send(self, msg: Message) -> bool:
        """Publish an extra message (discovery, hermes, mute state) if connected.

        Not queued: returns False and drops it when disconnected, so anything retained
        that must survive a reconnect belongs in an add_connect_hook builder too.
        """
        if not self._connected:
            return False
        self._publish(msg.topic, msg.encode(), qos=msg.qos, retain=msg.retain)
        return True

    def add_connect_hook(self, build: Callable[[], Iterable[Message]]) -> None:
        """Messages to publish after every (re)connect, e.g. discovery configs."""
        self._connect_hooks.append(build)

    def subscribe(self, topic: str, handler: Callable[[str, bytes], None],
                  commands: bool = False) -> None:
        """Subscribe at QoS 1 on every (re)connect; handler(topic, payload) runs on the
        asyncio thread. `commands`: retained messages there are ignored (and said once).
        Call before run()."""
        self._subscriptions = (*self._subscriptions, (topic, handler, commands))
        if self._connected:
            self._client.subscribe(topic, qos=1)

    def update_state(self, **fields: Any) -> None:
        self._state.update(**fields)
        self._wake.set()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Flush within the bound, publish "offline" (retained), disconnect."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        if self._loop is None:
            return  # run() never started: nothing is connected
        loop = self._loop
        deadline = loop.time() + timeout_s
        # Keep a quarter of the budget (at most 1 s) for "offline" and the disconnect.
        flush_until = deadline - min(1.0, timeout_s / 4)
        while self._connected and loop.time() < flush_until:
            self._fill()
            if not self._inflight:
                break
            await self._wait_wake(flush_until - loop.time())
        with contextlib.suppress(sqlite3.Error):
            self.lost_at_close = self._outbox.unsaved
        try:
            waiting = len(self._outbox) - self.lost_at_close
        except (OutboxError, sqlite3.Error):
            waiting = len(self._inflight)
        if waiting:
            # Not lost, but not where the user looks either (a broker never reached said
            # nothing at all here).
            log.warning("mqtt: %d transcript(s) not delivered at shutdown: they stay in "
                        "%s and go out when the daemon next reaches %s", waiting,
                        self._outbox.path, self._where)
        if self.lost_at_close:
            log.warning("%s: %d transcript(s) held in memory (the disk refused them) "
                        "are lost with this stop", self._outbox.path, self.lost_at_close)
        if self._connected:
            # The last state (what a stop left untranscribed, say) goes before "offline".
            self._state.force()
            self._publish_state()
            info = self._client.publish(self.topics.availability, payload.OFFLINE,
                                        qos=payload.AVAILABILITY_QOS, retain=True)
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters[info.mid] = waiter
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await waiter
            except TimeoutError:
                log.warning("mqtt: no acknowledgement for 'offline' at shutdown")
        self._client.disconnect()
        try:
            async with asyncio.timeout(max(0.5, deadline - loop.time())):
                await asyncio.to_thread(self._client.loop_stop)
        except TimeoutError:
            log.warning("mqtt: network thread did not stop in time")
        self._connected = False

"""`roomscribe forget`: remove the device from Home Assistant and clear what it left retained.

Publishes an empty retained payload (QoS 1) on every discovery config topic
(`discovery.removal_messages`: Home Assistant deletes the entities) and on the device's
retained `availability`, `state` and `mute` topics, and waits, bounded, for the
broker's PUBACKs. Run it with the daemon stopped: a running daemon announces itself
again on its next (re)connect.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from . import broker_login, discovery
from .config import Settings
from .message import Message
from .mute import mute_topics
from .payload import topics
from .publish import PublishError


def removal(settings: Settings) -> list[Message]:
    """Every retained message the daemon publishes, emptied."""
    t = topics(settings.mqtt.topic_prefix, settings.device.id)
    retained = [t.state, t.availability, mute_topics(settings.mqtt.topic_prefix,
                                                     settings.device.id)[0]]
    return [*discovery.removal_messages(settings),
            *(Message(topic, "", retain=True, qos=1) for topic in retained)]


def retained_devices(client: mqtt.Client, settings: Settings,
                     deadline: float) -> dict[str, bytes] | None:
    """The device ids with something retained on the broker (availability, state, or a
    Home Assistant config of this device.id), each with its retained availability (b""
    when none); None when that cannot be told (the broker refuses the subscription or
    does not answer in time).

    Why: with device.id defaulting to the hostname, `forget` run on another machine
    would otherwise clear nothing and report that it removed the device. The retained
    messages come before the answer to a message we publish after subscribing, so no
    wait is guessed."""
    m = settings.mqtt
    probe = f"{m.topic_prefix}/forget-probe-{uuid.uuid4().hex[:12]}"
    ours = f"{m.ha_discovery_prefix}/+/roomscribe_{settings.device.id}/+/config"
    wanted = [f"{m.topic_prefix}/+/availability", f"{m.topic_prefix}/+/state", ours, probe]
    found: dict[str, bytes] = {}
    subscribed, probed = threading.Event(), threading.Event()
    refused: list[bool] = []

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == probe:
            probed.set()
        elif msg.retain and msg.payload:
            device = (settings.device.id if mqtt.topic_matches_sub(ours, msg.topic)
                      else msg.topic.split("/")[-2])
            availability = bytes(msg.payload) if msg.topic.endswith("/availability") else b""
            found[device] = found.get(device, b"") or availability

    def on_subscribe(_c: mqtt.Client, _u: Any, _mid: int, reasons: list[Any],
                     _p: Any) -> None:
        refused.extend(r.is_failure for r in reasons if r.is_failure)
        subscribed.set()

    # At most half of what is left: the removals need the rest.
    until = time.monotonic() + max(0.0, deadline - time.monotonic()) / 2
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.subscribe([(topic, 1) for topic in wanted])
    if not subscribed.wait(max(0.0, until - time.monotonic())) or refused:
        return None
    client.publish(probe, b"", qos=1)
    if not probed.wait(max(0.0, until - time.monotonic())):
        return None  # an ACL that drops the probe: as before, clear without looking
    client.unsubscribe(wanted)
    return found


def clear(client: mqtt.Client, settings: Settings, deadline: float, timeout_s: float,
          tool: str = "forget") -> None:
    """Publish the removals and wait (bounded) for every PUBACK; PublishError if not."""
    infos = [client.publish(msg.topic, msg.encode(), qos=msg.qos, retain=msg.retain)
             for msg in removal(settings)]
    for info in infos:
        try:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        except (RuntimeError, ValueError):
            break  # the connection went: counted below
    missing = sum(not info.is_published() for info in infos)
    if missing:
        raise PublishError(f"{tool}: {missing} of {len(infos)} removals not acknowledged "
                           f"by {broker_login.where(settings)} within {timeout_s:.0f} s")


def forget(settings: Settings, password: str, out: TextIO, timeout_s: float = 10.0) -> int:
    """Clear everything retained for this device; PublishError (one line) on failure."""
    where = broker_login.where(settings)
    deadline = time.monotonic() + timeout_s
    # Its own client id: reusing the daemon's would disconnect a running daemon.
    client = broker_login.login(settings, password, "forget",
                                f"roomscribe-forget-{uuid.uuid4().hex[:8]}", timeout_s)
    try:
        found = retained_devices(client, settings, deadline)
        if found is not None and settings.device.id not in found:
            there = ", ".join(sorted(found)) or "none"
            raise PublishError(
                f"forget: nothing of device.id {settings.device.id!r} is retained on "
                f"{where} (devices there: {there}); nothing cleared. Is device.id right? "
                "(`roomscribe check` shows it; it defaults to this machine's hostname)")
        clear(client, settings, deadline, timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    # Entities of this version; the retired ones' configs are cleared too, uncounted.
    configs = len(discovery.removal_messages(settings)) - len(discovery.RETIRED)
    print(f"forgot {settings.device.id} on {where}: {configs} Home Assistant entities "
          f"removed, retained availability, state and mute cleared", file=out)
    return 0

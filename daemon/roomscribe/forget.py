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
from paho.mqtt.enums import CallbackAPIVersion

from . import discovery
from .config import Settings
from .message import Message
from .mute import mute_topics
from .payload import topics
from .publish import PublishError
from .retry import describe


def removal(settings: Settings) -> list[Message]:
    """Every retained message the daemon publishes, emptied."""
    t = topics(settings.mqtt.topic_prefix, settings.device.id)
    retained = [t.state, t.availability, mute_topics(settings.mqtt.topic_prefix,
                                                     settings.device.id)[0]]
    return [*discovery.removal_messages(settings),
            *(Message(topic, "", retain=True, qos=1) for topic in retained)]


def forget(settings: Settings, password: str, out: TextIO, timeout_s: float = 10.0) -> int:
    """Clear everything retained for this device; PublishError (one line) on failure."""
    m = settings.mqtt
    where = f"{m.host}:{m.port}"
    messages = removal(settings)
    answered = threading.Event()
    refused: list[str] = []

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
        answered.set()

    # Its own client id: reusing the daemon's would disconnect a running daemon.
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                         client_id=f"roomscribe-forget-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv5 if m.protocol == "5" else mqtt.MQTTv311)
    if m.username:
        client.username_pw_set(m.username, password or None)
    client.on_connect = on_connect
    try:
        if m.tls:
            client.tls_set(ca_certs=m.ca_file or None, certfile=m.cert_file or None,
                           keyfile=m.key_file or None)
        client.connect(m.host, m.port, keepalive=max(5, m.keepalive_s))
    except (OSError, ValueError) as exc:
        raise PublishError(f"forget: cannot connect to the broker at {where}: "
                           f"{describe(exc)}") from None
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout_s
        if not answered.wait(timeout_s):
            raise PublishError(f"forget: {where} did not answer within {timeout_s:.0f} s")
        if refused:
            raise PublishError(f"forget: {where} refused the connection: {refused[0]} "
                               "(check mqtt.username, the password and the broker ACL)")
        infos = [client.publish(msg.topic, msg.encode(), qos=msg.qos, retain=msg.retain)
                 for msg in messages]
        for info in infos:
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                break  # the connection went: counted below
        missing = sum(not info.is_published() for info in infos)
        if missing:
            raise PublishError(f"forget: {missing} of {len(infos)} removals not acknowledged "
                               f"by {where} within {timeout_s:.0f} s")
    finally:
        client.disconnect()
        client.loop_stop()
    # Entities of this version; the retired ones' configs are cleared too, uncounted.
    configs = len(discovery.removal_messages(settings)) - len(discovery.RETIRED)
    print(f"forgot {settings.device.id} on {where}: {configs} Home Assistant entities "
          f"removed, retained availability, state and mute cleared", file=out)
    return 0

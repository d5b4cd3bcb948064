"""`roomscribe forget`: remove the device from Home Assistant and clear what it left retained.

Publishes an empty retained payload (QoS 1) on every discovery config topic
(`discovery.removal_messages`: Home Assistant deletes the entities) and on the device's
retained `availability`, `state` and `mute` topics, and waits, bounded, for the
broker's PUBACKs. Run it with the daemon stopped: a running daemon announces itself
again on its next (re)connect.
"""

from __future__ import annotations

import time
import uuid
from typing import TextIO

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


def forget(settings: Settings, password: str, out: TextIO, timeout_s: float = 10.0) -> int:
    """Clear everything retained for this device; PublishError (one line) on failure."""
    where = broker_login.where(settings)
    messages = removal(settings)
    deadline = time.monotonic() + timeout_s
    # Its own client id: reusing the daemon's would disconnect a running daemon.
    client = broker_login.login(settings, password, "forget",
                                f"roomscribe-forget-{uuid.uuid4().hex[:8]}", timeout_s)
    try:
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

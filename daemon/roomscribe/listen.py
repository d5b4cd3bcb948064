"""`roomscribe listen`: print transcripts from the broker as they arrive.

Handy to watch a room, and what the demo uses to show the job end to end.
"""

from __future__ import annotations

import json
import sys
import threading
import uuid
from collections import OrderedDict
from datetime import datetime
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from . import broker_login
from .config import Settings
from .publish import PublishError

# Ids of transcripts printed, to print one the daemon or broker sends again (delivery
# is at-least-once) only once. Bound: 4096 ids x ~100 bytes = ~0.4 MB.
SEEN_IDS_MAX = 4096


def read_transcript(payload: bytes) -> tuple[str, str]:
    """(its id, "" if none; the line to print)."""
    try:
        data = json.loads(payload)
        start = datetime.fromisoformat(str(data["start"]).replace("Z", "+00:00"))
        flag = " (replayed)" if data.get("replayed") else ""
        return (str(data.get("id") or ""),
                f"[{start.astimezone():%H:%M:%S}] {data['device']}: {data['text']}{flag}")
    except (ValueError, KeyError, TypeError, AttributeError):
        return "", f"(unreadable transcript payload: {payload[:80]!r})"


def listen(settings: Settings, password: str, out: TextIO = sys.stdout,
           count: int | None = None, timeout_s: float | None = None,
           err: TextIO = sys.stderr) -> int:
    """Print transcripts until `count` arrived or `timeout_s` passed (None: forever).

    A broker that is not there, refuses the login or refuses the subscription is a
    PublishError (one line); one lost later is waited for, and said so on `err`."""
    broker = broker_login.where(settings)
    topic = f"{settings.mqtt.topic_prefix}/+/transcript"
    done = threading.Event()
    problem: list[str] = []
    subscribed = 0
    seen = 0
    printed: OrderedDict[str, None] = OrderedDict()

    def say(line: str) -> None:
        print(f"listen: {line}", file=err, flush=True)

    def on_connect(client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:  # a reconnect the broker no longer accepts
            problem.append(f"listen: {broker} refused the connection: {reason}")
            done.set()
            return
        client.subscribe(topic, qos=1)

    def on_subscribe(_c: mqtt.Client, _u: Any, _mid: int, reasons: list[Any],
                     _p: Any) -> None:
        nonlocal subscribed
        failed = [r for r in reasons if r.is_failure]
        if failed:
            problem.append(f"listen: {broker} refused the subscription to {topic}: "
                           f"{failed[0]} (check the broker ACL)")
            done.set()
            return
        subscribed += 1
        say(f"waiting for transcripts on {topic} at {broker}" if subscribed == 1
            else f"back on {broker}")

    def on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not done.is_set():  # paho reconnects by itself; our own close says nothing
            say(f"lost the broker at {broker} ({reason}); reconnecting")

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        nonlocal seen
        entry_id, line = read_transcript(bytes(msg.payload))
        if entry_id:
            if entry_id in printed:
                return
            printed[entry_id] = None
            if len(printed) > SEEN_IDS_MAX:
                printed.popitem(last=False)
        print(line, file=out, flush=True)
        seen += 1
        if count is not None and seen >= count:
            done.set()

    client = broker_login.login(settings, password, "listen",
                                f"roomscribe-listen-{uuid.uuid4().hex[:8]}")
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.on_disconnect = on_disconnect
    client.on_connect = on_connect
    # Back as soon as the broker is: paho's own backoff grows to 2 minutes.
    client.reconnect_delay_set(settings.mqtt.reconnect_min_s, settings.mqtt.reconnect_max_s)
    client.subscribe(topic, qos=1)
    try:
        done.wait(timeout_s)
    except KeyboardInterrupt:
        pass
    finally:
        done.set()
        client.disconnect()
        client.loop_stop()
    if problem:
        raise PublishError(problem[0])
    return 0

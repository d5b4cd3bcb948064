"""`roomscribe listen`: print transcripts from the broker as they arrive.

Handy to watch a room, and what the demo uses to show the job end to end.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import datetime
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .config import Settings


def format_transcript(payload: bytes) -> str:
    try:
        data = json.loads(payload)
        start = datetime.fromisoformat(str(data["start"]).replace("Z", "+00:00"))
        flag = " (replayed)" if data.get("replayed") else ""
        return f"[{start.astimezone():%H:%M:%S}] {data['device']}: {data['text']}{flag}"
    except (ValueError, KeyError, TypeError):
        return f"(unreadable transcript payload: {payload[:80]!r})"


def listen(settings: Settings, password: str, out: TextIO = sys.stdout,
           count: int | None = None, timeout_s: float | None = None) -> int:
    """Print transcripts until `count` arrived or `timeout_s` passed (None: forever)."""
    m = settings.mqtt
    topic = f"{m.topic_prefix}/+/transcript"
    done = threading.Event()
    seen = 0

    def on_connect(client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            print(f"listen: broker refused the connection: {reason}", file=sys.stderr)
            done.set()
            return
        client.subscribe(topic, qos=1)

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        nonlocal seen
        print(format_transcript(bytes(msg.payload)), file=out, flush=True)
        seen += 1
        if count is not None and seen >= count:
            done.set()

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                         protocol=mqtt.MQTTv5 if m.protocol == "5" else mqtt.MQTTv311)
    if m.username:
        client.username_pw_set(m.username, password or None)
    if m.tls:
        client.tls_set(ca_certs=m.ca_file or None, certfile=m.cert_file or None,
                       keyfile=m.key_file or None)
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect_async(m.host, m.port, keepalive=m.keepalive_s)
    client.loop_start()
    try:
        done.wait(timeout_s)
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    return 0

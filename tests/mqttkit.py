"""Test helpers for the publish stage: a paho subscriber, settings, transcripts, schemas."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from roomscribe import payload
from roomscribe.config import DeviceSettings, Settings, StateSettings
from roomscribe.transcript import Transcript
from timing import scaled

SCHEMAS = Path(__file__).resolve().parent.parent / "docs" / "schemas"
DEVICE = "dev1"
ROOM = "kitchen"


# The schema each payload is published with now (docs/schemas/<kind>.v<N>.json).
CURRENT_SCHEMA = {"transcript": payload.TRANSCRIPT_SCHEMA, "state": payload.STATE_SCHEMA,
                  "partial": payload.PARTIAL_SCHEMA, "availability": 1}


def validate(kind: str, body: bytes) -> Any:
    """The payload, checked against the schema file of the version it is sent with."""
    version = CURRENT_SCHEMA[kind]
    schema = json.loads((SCHEMAS / f"{kind}.v{version}.json").read_text())
    obj = body.decode() if kind == "availability" else json.loads(body)
    jsonschema.validate(obj, schema, format_checker=jsonschema.FormatChecker())
    return obj


def settings(tmp: Path, port: int, **mqtt_fields: Any) -> Settings:
    s = Settings()
    fields = {"port": port, "reconnect_max_s": 2, **mqtt_fields}
    return dataclasses.replace(
        s, device=DeviceSettings(id=DEVICE, room=ROOM),
        mqtt=dataclasses.replace(s.mqtt, **fields), state=StateSettings(dir=str(tmp)))


def transcript(text: str, end: float | None = None) -> Transcript:
    end = time.time() if end is None else end
    return Transcript(text=text, item_id=f"item_{uuid.uuid4().hex[:8]}", session_id="sess_1",
                      captured_start=end - 2.5, captured_end=end, received_at=end + 0.8,
                      model="openai/whisper-large-v3")


def wait(cond: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    timeout_s = scaled(timeout_s)
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


async def await_until(cond: Callable[[], bool], timeout_s: float = 20.0,
                      what: str = "condition") -> None:
    timeout_s = scaled(timeout_s)
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


class Subscriber:
    """Subscribes to roomscribe/# at QoS 1 and records every message (thread-safe)."""

    def __init__(self, port: int, *, persistent_id: str = "", topic: str = "roomscribe/#",
                 protocol: int = mqtt.MQTTv311) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=persistent_id or f"sub-{uuid.uuid4().hex[:8]}",
                                  clean_session=not persistent_id if protocol != mqtt.MQTTv5
                                  else None, protocol=protocol)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(scaled(10)):
            raise TimeoutError("subscriber got no SUBACK")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    def on(self, suffix: str) -> list[mqtt.MQTTMessage]:
        with self._lock:
            return [m for m in self.messages if m.topic.endswith("/" + suffix)]

    def transcripts(self) -> list[dict[str, Any]]:
        return [validate("transcript", m.payload) for m in self.on("transcript")]

    def texts(self) -> list[str]:
        return [t["text"] for t in self.transcripts()]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

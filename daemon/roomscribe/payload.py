"""MQTT topics and JSON payloads, no I/O.

Everything a subscriber sees is built here, so docs/mqtt.md and the JSON Schemas in
docs/schemas/ describe exactly this module. Any change to a payload's fields bumps its
`schema` number and adds a new schema file next to the old one.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .transcript import Transcript

SCHEMA_VERSION = 1
ONLINE = b"online"
OFFLINE = b"offline"

# (QoS, retain) per topic; docs/mqtt.md has the same table.
TRANSCRIPT_QOS = 1
PARTIAL_QOS = 0
AVAILABILITY_QOS = 1
STATE_QOS = 1


@dataclass(frozen=True, slots=True)
class Topics:
    transcript: str
    partial: str
    availability: str
    state: str


def topics(prefix: str, device_id: str) -> Topics:
    base = f"{prefix.rstrip('/')}/{device_id}"
    return Topics(f"{base}/transcript", f"{base}/partial", f"{base}/availability",
                  f"{base}/state")


def iso(ts: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds, e.g. 2024-05-01T12:34:56.789Z."""
    ms = math.floor(ts * 1000)
    dt = datetime.fromtimestamp(ms // 1000, UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def transcript_payload(t: Transcript, *, entry_id: str, seq: int, device: str, room: str,
                       published: float) -> bytes:
    return _encode({
        "schema": SCHEMA_VERSION,
        "id": entry_id,
        "seq": seq,
        "device": device,
        "room": room,
        "text": t.text,
        "start": iso(t.captured_start),
        "end": iso(t.captured_end),
        "published": iso(published),
        "received": iso(t.received_at),
        "model": t.model,
        "session": t.session_id,
        "item": t.item_id,
        "replayed": t.replayed,
    })


def restamp(payload: bytes, published: float) -> bytes:
    """The stored payload with `published` set to the time it is handed to the broker.

    The outbox stores the payload when the transcript arrives; a broker outage can delay
    the send by hours, and `published` should show that.
    """
    obj = json.loads(payload)
    obj["published"] = iso(published)
    return _encode(obj)


def partial_payload(text: str, *, device: str, room: str, published: float) -> bytes:
    return _encode({"schema": SCHEMA_VERSION, "device": device, "room": room, "text": text,
                    "published": iso(published)})


@dataclass(frozen=True, slots=True)
class StatePayload:
    """The retained health document on <prefix>/<device>/state."""

    uplink_connected: bool = False
    # Audio held for replay and audio lost to a full buffer, in seconds.
    buffered_s: float = 0.0
    dropped_s: float = 0.0
    overruns: int = 0
    transcripts_published: int = 0
    # Transcripts waiting in the outbox, dropped from a full outbox, and dropped as
    # older than mqtt.max_age_s.
    outbox_pending: int = 0
    outbox_dropped: int = 0
    expired: int = 0
    last_error: str = ""
    uptime_s: float = 0.0
    muted: bool = False

    def encode(self, *, device: str, room: str, now: float) -> bytes:
        fields = dataclasses.asdict(self)
        for name in ("buffered_s", "dropped_s", "uptime_s"):
            fields[name] = round(fields[name], 1)
        return _encode({"schema": SCHEMA_VERSION, "device": device, "room": room,
                        "time": iso(now), **fields})


STATE_FIELDS = frozenset(f.name for f in dataclasses.fields(StatePayload))


def _steady(state: StatePayload) -> StatePayload:
    # buffered_s and uptime_s move continuously: a change in them alone waits for the
    # periodic publish, or every outage would publish the state ten times a second.
    return dataclasses.replace(state, buffered_s=0.0, uptime_s=0.0)


# Bursts of changes (e.g. a transcript per second) are merged into one publish.
MIN_GAP_S = 1.0


class StateReporter:
    """Decides when the retained state is published: on change and every interval_s."""

    def __init__(self, interval_s: float, started: float) -> None:
        self.interval_s = interval_s
        self.started = started
        self.current = StatePayload()
        self._last: StatePayload | None = None
        self._last_at = -math.inf

    def update(self, **fields: Any) -> None:
        unknown = set(fields) - STATE_FIELDS
        if unknown:
            raise TypeError(f"unknown state field(s): {', '.join(sorted(unknown))}")
        self.current = dataclasses.replace(self.current, **fields)

    def _changed(self) -> bool:
        if self._last is None:
            return True
        return _steady(self.current) != _steady(self._last)

    def due(self, now: float) -> StatePayload | None:
        """The state to publish now, or None; the caller publishes it (or calls again)."""
        since = now - self._last_at
        if since >= self.interval_s or (self._changed() and since >= MIN_GAP_S):
            self.current = dataclasses.replace(self.current, uptime_s=now - self.started)
            self._last, self._last_at = self.current, now
            return self.current
        return None

    def force(self) -> None:
        """Publish at the next due() call, e.g. after a reconnect."""
        self._last_at = -math.inf

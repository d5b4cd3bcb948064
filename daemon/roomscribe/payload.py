"""MQTT topics and JSON payloads, and the bounds on what reaches the broker; no I/O.

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
from typing import Any, Generic, TypeVar

from .health import Status
from .transcript import Transcript

# Per payload: docs/schemas/<kind>.v<N>.json. transcript 2 added `truncated`; state 2
# added `status` and `transcription_available`, made `last_error` null when there is
# none and `transcripts_published` a total kept across restarts.
TRANSCRIPT_SCHEMA = 2
PARTIAL_SCHEMA = 1
STATE_SCHEMA = 2
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
        "schema": TRANSCRIPT_SCHEMA,
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
        "truncated": t.truncated,
    })


def capped(t: Transcript, max_chars: int) -> Transcript:
    """The transcript with its text cut to max_chars and marked, if it is longer.

    A sane segment is a few hundred characters; a server gone wrong can send a
    megabyte, which would become one MQTT message, one sqlite row and one HA state.
    """
    if len(t.text) <= max_chars:
        return t
    return dataclasses.replace(t, text=t.text[:max_chars], truncated=True)


def restamp(payload: bytes, published: float) -> bytes:
    """The stored payload with `published` set to the time it is handed to the broker.

    The outbox stores the payload when the transcript arrives; a broker outage can delay
    the send by hours, and `published` should show that.
    """
    obj = json.loads(payload)
    obj["published"] = iso(published)
    return _encode(obj)


def partial_payload(text: str, *, device: str, room: str, published: float) -> bytes:
    return _encode({"schema": PARTIAL_SCHEMA, "device": device, "room": room, "text": text,
                    "published": iso(published)})


T = TypeVar("T")


class Throttle(Generic[T]):
    """At most one item per interval_s, the newest wins.

    For partials: a server may send thousands of deltas a second, and each would be
    an MQTT message. Holding only the newest keeps this bounded at one item, and
    sending it when the gap is over means the last hypothesis is not lost.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last_at = -math.inf
        self._held: T | None = None

    def offer(self, item: T, now: float) -> T | None:
        """The item to send now, or None: it is held (replacing any held one)."""
        if now - self._last_at >= self.interval_s:
            self._held, self._last_at = None, now
            return item
        self._held = item
        return None

    def due(self, now: float) -> T | None:
        """The held item once its gap is over, else None."""
        if self._held is None or now - self._last_at < self.interval_s:
            return None
        item, self._held, self._last_at = self._held, None, now
        return item

    def wake_at(self) -> float | None:
        """When due() will return the held item; None when nothing is held."""
        return None if self._held is None else self._last_at + self.interval_s

    def drop(self) -> None:
        self._held = None


@dataclass(frozen=True, slots=True)
class StatePayload:
    """The retained health document on <prefix>/<device>/state."""

    # health.py: streaming / idle / muted / reconnecting / failing; available unless failing.
    status: Status = "idle"
    transcription_available: bool = True
    # The socket to the service is open (false while idle or muted, by design).
    uplink_connected: bool = False
    # Audio held for replay and audio lost to a full buffer, in seconds.
    buffered_s: float = 0.0
    dropped_s: float = 0.0
    overruns: int = 0
    # Acknowledged by the broker over the outbox database's lifetime (across restarts).
    transcripts_published: int = 0
    # Transcripts waiting in the outbox, dropped from a full outbox, and dropped as
    # older than mqtt.max_age_s.
    outbox_pending: int = 0
    outbox_dropped: int = 0
    expired: int = 0
    # None (JSON null) while nothing is wrong.
    last_error: str | None = None
    uptime_s: float = 0.0
    muted: bool = False

    def encode(self, *, device: str, room: str, now: float) -> bytes:
        fields = dataclasses.asdict(self)
        for name in ("buffered_s", "dropped_s", "uptime_s"):
            fields[name] = round(fields[name], 1)
        return _encode({"schema": STATE_SCHEMA, "device": device, "room": room,
                        "time": iso(now), **fields})


STATE_FIELDS = frozenset(f.name for f in dataclasses.fields(StatePayload))


def _steady(state: StatePayload) -> StatePayload:
    # uptime_s moves continuously and waits for the periodic publish; buffered_s is
    # compared by _buffer_moved.
    return dataclasses.replace(state, buffered_s=0.0, uptime_s=0.0)


# Bursts of changes (e.g. a transcript per second) are merged into one publish.
MIN_GAP_S = 1.0
# A change of buffered_s is worth a publish when it is at least this many seconds and
# this fraction of the last published value: an outage publishes at 1, 2, 3, 4, 5, 6.25,
# 7.8 ... s (about 25 messages up to 600 s) and a drain to 0 at once, while the
# sub-second wobble of normal streaming publishes nothing.
BUFFER_STEP_S = 1.0
BUFFER_STEP_RATIO = 0.25


def _buffer_moved(last: float, now: float) -> bool:
    return abs(now - last) >= max(BUFFER_STEP_S, BUFFER_STEP_RATIO * last)


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
        return (_steady(self.current) != _steady(self._last)
                or _buffer_moved(self._last.buffered_s, self.current.buffered_s))

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

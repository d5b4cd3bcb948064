"""A finished transcript, as the uplink hands it to the publish stage."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    # Server's item id (or one we made up); with session_id it names the segment.
    item_id: str
    session_id: str
    # Wall-clock (Unix seconds) capture times of the first and last audio covered.
    captured_start: float
    captured_end: float
    received_at: float
    model: str
    # True when the audio was sent again after an outage.
    replayed: bool = False
    # The text was cut to mqtt.transcript_max_chars on its way to MQTT.
    truncated: bool = False

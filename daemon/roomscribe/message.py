"""An MQTT message to publish, as the no-I/O builders (discovery, triggers, hermes) return it."""

from __future__ import annotations

import json
from typing import Any, NamedTuple


class Message(NamedTuple):
    topic: str
    # A dict is sent as compact JSON; a str as UTF-8 ("" clears a retained message).
    payload: dict[str, Any] | str
    retain: bool = False
    qos: int = 1

    def encode(self) -> bytes:
        if isinstance(self.payload, str):
            return self.payload.encode("utf-8")
        return json.dumps(self.payload, ensure_ascii=False, separators=(",", ":")).encode()

"""What a user means by "is it working": one status word and a yes/no, no I/O.

The socket to the service being closed is not a fault: the gate closes it after
gate.idle_disconnect_s of silence and mute closes it on purpose, so "connected" is
false most of the day. What is a fault is audio waiting to be sent with no connection
to send it over (or no microphone) for longer than a reconnect takes.

- `streaming`: connected to the service. Available.
- `idle`: nothing to send; the socket is closed until the next speech. Available.
- `muted`: privacy mute is on. Available (off by choice, not broken).
- `reconnecting`: audio waits for a connection, or the microphone is away, for less
  than FAILING_AFTER_S. Available.
- `failing`: the same for FAILING_AFTER_S or longer. Not available.
"""

from __future__ import annotations

import math
from typing import Final, Literal

Status = Literal["streaming", "idle", "muted", "reconnecting", "failing"]
STATUSES: Final[tuple[Status, ...]] = ("streaming", "idle", "muted", "reconnecting",
                                       "failing")

# Longer than the uplink's usual backoff steps and a connect timeout, so one dropped
# connection or a slow handshake is `reconnecting`, while a server that stays down,
# a rejected API key or an unplugged microphone becomes `failing` within half a minute.
FAILING_AFTER_S: Final = 30.0


class Health:
    def __init__(self, failing_after_s: float = FAILING_AFTER_S) -> None:
        self.failing_after_s = failing_after_s
        self._trouble_since = math.inf

    def status(self, now: float, *, muted: bool, connected: bool, wants_connection: bool,
               capture_open: bool) -> Status:
        if muted:
            self._trouble_since = math.inf
            return "muted"
        if capture_open and (connected or not wants_connection):
            self._trouble_since = math.inf
            return "streaming" if connected else "idle"
        self._trouble_since = min(self._trouble_since, now)
        if now - self._trouble_since >= self.failing_after_s:
            return "failing"
        return "reconnecting"


def available(status: Status) -> bool:
    return status != "failing"

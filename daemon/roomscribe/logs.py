"""One line per event on stderr (journald adds the time), with repeats rate-limited."""

from __future__ import annotations

import logging
import sys
import time

REPEAT_WINDOW_S = 60.0


class RepeatFilter(logging.Filter):
    """Lets an identical warning/error through once per window, then counts the rest."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S) -> None:
        super().__init__()
        self.window_s = window_s
        # Bounded: at most MAX_KEYS distinct recent messages are remembered.
        self._seen: dict[str, tuple[float, int]] = {}

    MAX_KEYS = 256

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = f"{record.name}:{record.getMessage()}"
        now = time.monotonic()
        first, suppressed = self._seen.get(key, (0.0, 0))
        if now - first < self.window_s:
            self._seen[key] = (first, suppressed + 1)
            return False
        if suppressed:
            record.msg = f"{record.getMessage()} (repeated {suppressed} more times)"
            record.args = ()
        if len(self._seen) >= self.MAX_KEYS:
            self._seen.clear()
        self._seen[key] = (now, 0)
        return True


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(levelname)s %(name)s: %(message)s"
    if sys.stderr.isatty():
        fmt = "%(asctime)s " + fmt
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries' chatter (websockets frames carry audio; faster-whisper logs every
    # decode) stays out of the journal unless asked for with level = "debug".
    for noisy in ("websockets", "faster_whisper"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

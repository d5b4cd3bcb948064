"""Privacy mute: the switch state, its MQTT topics and commands, kept across restarts.

While muted no audio leaves the device and none is buffered for later (the capture
stage drops it). The state lives in one small file, `<state dir>/mute` holding ON or
OFF, so a reboot does not quietly switch the microphone back on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .message import Message

log = logging.getLogger(__name__)

FILE_NAME = "mute"
MUTE_QOS = 1
_TRUE = {"on", "true", "1"}
_FALSE = {"off", "false", "0"}


def mute_topics(prefix: str, device_id: str) -> tuple[str, str]:
    """(state topic, command topic): the retained ON/OFF and where commands arrive."""
    state = f"{prefix.rstrip('/')}/{device_id}/mute"
    return state, f"{state}/set"


def state_message(prefix: str, device_id: str, muted: bool) -> Message:
    """The retained state to publish on connect and after every change."""
    return Message(mute_topics(prefix, device_id)[0], "ON" if muted else "OFF",
                   retain=True, qos=MUTE_QOS)


def parse_mute_command(payload: bytes) -> bool | None:
    """True = mute, False = unmute, None (and a log line) for anything else."""
    word = payload.strip().decode("utf-8", "replace").lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    log.warning("ignoring mute command %r: expected ON or OFF", payload[:40])
    return None


class MuteState:
    """The mute switch, read from and written to `<state_dir>/mute`."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / FILE_NAME
        self._muted = self._load()

    @property
    def muted(self) -> bool:
        return self._muted

    def _load(self) -> bool:
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            log.info("no saved mute state in %s: starting unmuted", self.path)
            return False
        except OSError as exc:
            log.warning("cannot read %s (%s): starting unmuted", self.path,
                        exc.strerror or exc)
            return False
        except UnicodeDecodeError:
            text = "<not text>"
        if text in ("ON", "OFF"):
            return text == "ON"
        log.warning("%s holds %r, not ON or OFF: starting unmuted", self.path, text[:40])
        return False

    def set(self, muted: bool) -> bool:
        """Apply and persist; True when the state changed.

        The switch takes effect even when the file cannot be written (the privacy
        request matters more than remembering it); that failure is logged.
        """
        changed = muted != self._muted
        self._muted = muted
        tmp = self.path.with_name(f".{FILE_NAME}.tmp")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(fd, "w", encoding="ascii") as fh:
                fh.write("ON\n" if muted else "OFF\n")
                fh.flush()
                os.fsync(fh.fileno())
            # A crash leaves either the old or the new file, never half of one.
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot save mute state to %s: %s", self.path,
                        exc.strerror or exc)
        return changed

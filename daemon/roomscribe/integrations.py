"""What the publish stage does beyond transcripts: Home Assistant discovery, the
privacy mute switch, phrase triggers and Hermes. The builders are no-I/O modules of
their own; this only registers them with the Publisher."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from . import discovery, hermes, mute, payload, triggers
from .config import Settings
from .message import Message
from .publish import Publisher
from .transcript import Transcript

log = logging.getLogger("roomscribe.integrations")

# The board's name on a Raspberry Pi (and other device-tree machines), NUL-terminated.
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")


def hardware_model(path: Path = DEVICE_TREE_MODEL) -> str:
    """E.g. "Raspberry Pi 4 Model B Rev 1.4"; "" where there is no device tree."""
    try:
        raw = path.read_bytes()[:200]
    except OSError:
        return ""
    return " ".join(raw.split(b"\0")[0].decode("utf-8", "replace").split())


class Integrations:
    def __init__(self, settings: Settings, publisher: Publisher, state_dir: Path) -> None:
        self.settings = settings
        self.publisher = publisher
        self.mute = mute.MuteState(state_dir)
        m = settings.mqtt
        self._mute_state_topic, mute_command_topic = mute.mute_topics(
            m.topic_prefix, settings.device.id)
        publisher.add_connect_hook(self._mute_message)
        publisher.subscribe(mute_command_topic, self._on_mute_command, commands=True)
        self.hardware = hardware_model()
        if m.ha_discovery:
            publisher.add_connect_hook(
                lambda: discovery.discovery_messages(settings, self.hardware))
            publisher.subscribe(discovery.status_topic(m.ha_discovery_prefix),
                                self._on_ha_status)

    def _mute_message(self) -> list[Message]:
        m = self.settings.mqtt
        return [mute.state_message(m.topic_prefix, self.settings.device.id, self.mute.muted)]

    def _on_mute_command(self, _topic: str, body: bytes) -> None:
        wanted = mute.parse_mute_command(body)
        if wanted is None:
            return
        if self.mute.set(wanted):
            log.info("privacy mute %s", "ON: no audio leaves the device" if wanted else "OFF")
        for msg in self._mute_message():
            self.publisher.send(msg)
        self.publisher.update_state(muted=wanted)

    def _on_ha_status(self, topic: str, body: bytes) -> None:
        if discovery.should_rediscover(topic, body, self.settings.mqtt.ha_discovery_prefix):
            log.info("Home Assistant came online: sending discovery again")
            for msg in discovery.discovery_messages(self.settings, self.hardware):
                self.publisher.send(msg)

    def transcript(self, t: Transcript) -> None:
        """Publish a transcript and whatever it sets off."""
        # Triggers and Hermes see the same (cut) text as the transcript subscribers.
        t = payload.capped(t, self.settings.mqtt.transcript_max_chars)
        entry_id = self.publisher.submit(t)
        s = self.settings
        age_s = time.time() - t.captured_end
        if age_s > s.mqtt.trigger_max_age_s:
            # A command said during a long outage must not act now.
            if s.triggers:
                log.info("not firing triggers for a transcript %.0f s old", age_s)
            return
        for msg in [*triggers.messages(s.triggers, t.text, device=s.device.id,
                                       room=s.device.room, entry_id=entry_id),
                    *hermes.messages(s, t)]:
            self.publisher.send(msg)

"""Home Assistant MQTT discovery: one device and its entities, no I/O.

Per-entity discovery (`<prefix>/<component>/<node_id>/<object_id>/config`, retained,
QoS 1) so it works with Home Assistant releases from before device-based discovery.
The publisher sends `discovery_messages()` on every (re)connect and again whenever
`should_rediscover()` says Home Assistant has come back online; `removal_messages()`
clears the retained configs, which removes the entities (`roomscribe forget`).

Home Assistant rules these payloads follow (docs/mqtt.md, "Home Assistant"):
- event entities ignore retained messages and need a JSON payload with `event_type`,
  so the event reads the (never retained) transcript topic through a template;
- a state is at most 255 characters, so the text sensor truncates and keeps the whole
  text in its attributes;
- unique_id and the topic's node/object ids use only [a-zA-Z0-9_-].
"""

from __future__ import annotations

import json
import re
from typing import Any

from . import __version__
from .config import Settings
from .health import STATUSES
from .message import Message
from .mute import mute_topics
from .payload import OFFLINE, ONLINE, topics

# No public project page yet: Home Assistant rejects a whole config whose support_url is
# not a URL, so the key is only sent once this is set.
SUPPORT_URL = ""
HA_STATE_MAX_CHARS = 255
DISCOVERY_QOS = 1

_TRANSCRIPT_FIELDS = ("text", "id", "room", "start", "end", "session", "replayed")


def _json_template(items: dict[str, str]) -> str:
    """A Jinja2 template that renders a JSON object; the values are Jinja expressions."""
    body = ", ".join(f"{json.dumps(k)}: {expr}" for k, expr in items.items())
    return "{{ {" + body + "} | to_json }}"


EVENT_TEMPLATE = _json_template(
    {"event_type": '"transcript"'} | {f: f"value_json.{f}" for f in _TRANSCRIPT_FIELDS})
TEXT_TEMPLATE = f"{{{{ value_json.text[:{HA_STATE_MAX_CHARS}] }}}}"
TEXT_ATTRIBUTES_TEMPLATE = _json_template({f: f"value_json.{f}" for f in _TRANSCRIPT_FIELDS})
# last_error is null while all is well: "none" rather than a blank state.
ERROR_TEMPLATE = (f"{{{{ value_json.last_error[:{HA_STATE_MAX_CHARS}] "
                  "if value_json.last_error else 'none' }}")
# A problem sensor: ON (Problem) only when transcription is failing. Idle and muted are
# by design and show OK, so the entity is usable for alerts.
PROBLEM_TEMPLATE = "{{ 'OFF' if value_json.transcription_available else 'ON' }}"
STATUS_TEMPLATE = "{{ value_json.status }}"
# Entities earlier versions announced: their configs are cleared on every (re)connect
# and by `forget`, so Home Assistant drops them. (component, key)
RETIRED: tuple[tuple[str, str], ...] = (("binary_sensor", "uplink"),)

# Diagnostic sensors read from the retained state JSON:
# key, name, field, unit, device_class, state_class, icon.
_STATE_SENSORS: tuple[tuple[str, str, str, str, str, str, str], ...] = (
    ("buffered", "Buffered audio", "buffered_s", "s", "duration", "measurement",
     "mdi:tray-full"),
    ("dropped", "Dropped audio", "dropped_s", "s", "duration", "total_increasing",
     "mdi:delete-clock-outline"),
    ("overruns", "Capture overruns", "overruns", "", "", "total_increasing",
     "mdi:alert-outline"),
    ("published", "Transcripts published", "transcripts_published", "", "",
     "total_increasing", "mdi:counter"),
    ("uptime", "Uptime", "uptime_s", "s", "duration", "", "mdi:timer-outline"),
)


def _node_id(settings: Settings) -> str:
    return f"roomscribe_{settings.device.id}"


def _slug(text: str) -> str:
    """An entity object id: Home Assistant's entity ids are lower-case [a-z0-9_]."""
    return re.sub(r"[^a-z0-9_]", "_", text.lower())


def device_block(settings: Settings, hardware: str = "") -> dict[str, Any]:
    """hardware: the board, e.g. "Raspberry Pi 4 Model B Rev 1.4" (shown as Hardware)."""
    d = settings.device
    block: dict[str, Any] = {
        "identifiers": [_node_id(settings)],
        "name": f"roomscribe {d.room}" if d.room else f"roomscribe {d.id}",
        "model": "roomscribe",
        "manufacturer": "roomscribe",
        "sw_version": __version__,
    }
    if hardware:
        block["hw_version"] = hardware
    if d.room:
        block["suggested_area"] = d.room
    return block


def origin_block() -> dict[str, Any]:
    block: dict[str, Any] = {"name": "roomscribe", "sw_version": __version__}
    if SUPPORT_URL:
        block["support_url"] = SUPPORT_URL
    return block


def _entities(settings: Settings) -> list[tuple[str, str, dict[str, Any]]]:
    """(component, key, platform-specific config) for every entity of the device."""
    t = topics(settings.mqtt.topic_prefix, settings.device.id)
    mute_state, mute_command = mute_topics(settings.mqtt.topic_prefix, settings.device.id)
    entities: list[tuple[str, str, dict[str, Any]]] = [
        ("event", "transcript", {
            "name": "Transcript", "icon": "mdi:account-voice",
            "event_types": ["transcript"],
            "state_topic": t.transcript, "value_template": EVENT_TEMPLATE,
        }),
        ("sensor", "last_transcript", {
            "name": "Last transcript", "icon": "mdi:text-box-outline",
            "state_topic": t.transcript, "value_template": TEXT_TEMPLATE,
            "json_attributes_topic": t.transcript,
            "json_attributes_template": TEXT_ATTRIBUTES_TEMPLATE,
        }),
        ("switch", "mute", {
            "name": "Privacy mute", "icon": "mdi:microphone-off",
            "command_topic": mute_command, "state_topic": mute_state,
            "payload_on": "ON", "payload_off": "OFF", "retain": False,
        }),
        ("binary_sensor", "transcription", {
            "name": "Transcription", "device_class": "problem",
            "state_topic": t.state, "value_template": PROBLEM_TEMPLATE,
            "payload_on": "ON", "payload_off": "OFF",
        }),
        ("sensor", "status", {
            "name": "Status", "icon": "mdi:list-status", "device_class": "enum",
            "entity_category": "diagnostic",
            "options": list(STATUSES),
            "state_topic": t.state, "value_template": STATUS_TEMPLATE,
        }),
        ("sensor", "last_error", {
            "name": "Last error", "icon": "mdi:alert-circle-outline",
            "entity_category": "diagnostic",
            "state_topic": t.state, "value_template": ERROR_TEMPLATE,
        }),
    ]
    for key, name, field, unit, device_class, state_class, icon in _STATE_SENSORS:
        config: dict[str, Any] = {
            "name": name, "icon": icon, "entity_category": "diagnostic",
            "state_topic": t.state, "value_template": f"{{{{ value_json.{field} }}}}",
        }
        if unit:
            config["unit_of_measurement"] = unit
        if device_class:
            config["device_class"] = device_class
        if state_class:
            config["state_class"] = state_class
        entities.append(("sensor", key, config))
    return entities


def config_topic(settings: Settings, component: str, key: str) -> str:
    prefix = settings.mqtt.ha_discovery_prefix.rstrip("/")
    return f"{prefix}/{component}/{_node_id(settings)}/{key}/config"


def discovery_messages(settings: Settings, hardware: str = "") -> list[Message]:
    """Retained entity configs (and clearing of retired ones); empty when
    mqtt.ha_discovery is off."""
    if not settings.mqtt.ha_discovery:
        return []
    t = topics(settings.mqtt.topic_prefix, settings.device.id)
    device, origin = device_block(settings, hardware), origin_block()
    messages = []
    for component, key, platform in _entities(settings):
        object_id = _slug(f"{_node_id(settings)}_{key}")
        config: dict[str, Any] = {
            "unique_id": f"{_node_id(settings)}_{key}",
            # object_id is what Home Assistant before 2025.10 reads; later releases read
            # default_entity_id and warn about object_id only when it comes alone.
            "object_id": object_id,
            "default_entity_id": f"{component}.{object_id}",
            **platform,
            "availability_topic": t.availability,
            "payload_available": ONLINE.decode(),
            "payload_not_available": OFFLINE.decode(),
            "qos": DISCOVERY_QOS,
            "device": device,
            "origin": origin,
        }
        messages.append(Message(config_topic(settings, component, key), config,
                                retain=True, qos=DISCOVERY_QOS))
    return messages + _retired_removals(settings)


def _retired_removals(settings: Settings) -> list[Message]:
    return [Message(config_topic(settings, component, key), "", retain=True,
                    qos=DISCOVERY_QOS) for component, key in RETIRED]


def removal_messages(settings: Settings) -> list[Message]:
    """Empty retained payloads on every config topic: Home Assistant drops the entities.

    Sent regardless of mqtt.ha_discovery, so `forget` also cleans up after turning it off.
    """
    return [Message(config_topic(settings, component, key), "", retain=True,
                    qos=DISCOVERY_QOS)
            for component, key, _ in _entities(settings)] + _retired_removals(settings)


def status_topic(discovery_prefix: str) -> str:
    """Where Home Assistant announces itself (its birth message): subscribe to this."""
    return f"{discovery_prefix.rstrip('/')}/status"


def should_rediscover(topic: str, payload: bytes, discovery_prefix: str) -> bool:
    """True for Home Assistant's birth message: it restarted and wants the configs again."""
    return topic == status_topic(discovery_prefix) and payload.strip() == b"online"

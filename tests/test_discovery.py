"""Home Assistant discovery payloads: schemas, HA's documented rules, rendered templates.

Home Assistant renders value templates with Jinja2. When jinja2 is importable here, or
another python3 on PATH has it, the templates are rendered against real transcript and
state payloads the way HA does (a sandboxed environment with HA's `to_json` filter);
otherwise only their structure is checked.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from referencing import Registry, Resource

from conftest import Broker
from mqttkit import Subscriber, wait
from roomscribe import discovery, payload
from roomscribe.config import DeviceSettings, MqttSettings, Settings
from roomscribe.message import Message
from roomscribe.mute import mute_topics
from roomscribe.transcript import Transcript
from timing import scaled

SCHEMAS = Path(__file__).resolve().parent.parent / "docs" / "schemas"
ID_CHARS = re.compile(r"^[a-zA-Z0-9_-]+$")
# HA's schema: vol.Required keys per platform (MQTT_RO_SCHEMA / MQTT_RW_SCHEMA, event).
HA_REQUIRED = {"event": {"state_topic", "event_types"}, "sensor": {"state_topic"},
               "binary_sensor": {"state_topic"}, "switch": {"command_topic"}}
# A few of HA's abbreviations: discovery payloads here use the long names only.
ABBREVIATIONS = {"avty_t", "stat_t", "cmd_t", "uniq_id", "val_tpl", "dev", "o", "json_attr_t",
                 "dev_cla", "unit_of_meas", "ent_cat", "pl_on", "pl_off", "pl_avail"}
LONG_TEXT = ('She said "turn it off" \u2014 then, caf\u00e9 au lait; ' * 8).strip()


def make_settings(device_id: str = "kitchen-Pi", room: str = "Kitchen", **mqtt: Any) -> Settings:
    return dataclasses.replace(Settings(), device=DeviceSettings(id=device_id, room=room),
                               mqtt=dataclasses.replace(MqttSettings(), **mqtt))


def schema_validator(name: str) -> jsonschema.Draft202012Validator:
    resources = [(s["$id"], Resource.from_contents(s)) for s in
                 (json.loads(f.read_text()) for f in SCHEMAS.glob("ha-*.json"))]
    schema = json.loads((SCHEMAS / f"ha-{name}.json").read_text())
    return jsonschema.Draft202012Validator(schema, registry=Registry().with_resources(resources),
                                           format_checker=jsonschema.FormatChecker())


def transcript_json(text: str) -> str:
    t = Transcript(text=text, item_id="item_1", session_id="sess_1",
                   captured_start=1714566890.0, captured_end=1714566896.5,
                   received_at=1714566897.0, model="openai/whisper-large-v3")
    return payload.transcript_payload(t, entry_id="e1", seq=3, device="kitchen-Pi",
                                      room="Kitchen", published=1714566897.1).decode()


# --- rendering templates like Home Assistant ---------------------------------------------

_RENDER = """
import json, sys
from jinja2.sandbox import ImmutableSandboxedEnvironment
env = ImmutableSandboxedEnvironment()
env.filters["to_json"] = lambda obj: json.dumps(obj, ensure_ascii=False)
for template, value in json.loads(sys.stdin.read()):
    print(json.dumps(env.from_string(template).render(
        value=value, value_json=json.loads(value)).strip()))
"""


@cache
def _jinja_python() -> str | None:
    """An interpreter with jinja2: this one, or another python3 on PATH (not the venv's)."""
    if importlib.util.find_spec("jinja2") is not None:
        return sys.executable
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p != venv_bin)
    exe = shutil.which("python3", path=path)
    if exe is None:
        return None
    probe = subprocess.run([exe, "-c", "import jinja2.sandbox"], capture_output=True,
                           timeout=scaled(30), check=False, env={**os.environ, "PYTHONPATH": ""})
    return exe if probe.returncode == 0 else None


def render(pairs: list[tuple[str, str]]) -> list[str]:
    """Render each (template, MQTT payload) pair as HA's MQTT value templates are."""
    exe = _jinja_python()
    if exe is None:
        pytest.skip("jinja2 not available: template structure is tested instead")
    out = subprocess.run([exe, "-c", _RENDER], input=json.dumps(pairs), capture_output=True,
                         text=True, timeout=scaled(60), check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


# --- tests --------------------------------------------------------------------------------

def configs(s: Settings, hardware: str = "") -> list[Message]:
    """The entity configs discovery sends, without the clearing of retired entities."""
    return [m for m in discovery.discovery_messages(s, hardware) if m.payload != ""]


def test_every_payload_validates_against_its_schema() -> None:
    messages = configs(make_settings(), hardware="Raspberry Pi 4 Model B Rev 1.4")
    assert len(messages) == 11
    for m in messages:
        component = m.topic.split("/")[1]
        schema_validator(component.replace("_", "-")).validate(m.payload)


def test_schemas_are_valid_draft_2020_12() -> None:
    for f in [*SCHEMAS.glob("ha-*.json"), SCHEMAS / "trigger.json",
              SCHEMAS / "hermes-text-captured.json"]:
        jsonschema.Draft202012Validator.check_schema(json.loads(f.read_text()))


def test_home_assistant_rules() -> None:
    s = make_settings()
    t = payload.topics(s.mqtt.topic_prefix, s.device.id)
    messages = configs(s)
    payloads = [m.payload for m in messages]
    assert all(isinstance(c, dict) for c in payloads)
    unique_ids = [c["unique_id"] for c in payloads if isinstance(c, dict)]
    assert len(set(unique_ids)) == len(unique_ids)
    devices = {json.dumps(c["device"], sort_keys=True) for c in payloads if isinstance(c, dict)}
    assert len(devices) == 1, "every entity must carry the same device block"
    for m in messages:
        assert isinstance(m.payload, dict)
        c = m.payload
        _, component, node_id, object_id, config = m.topic.split("/")
        assert (m.retain, m.qos, config) == (True, 1, "config")
        assert ID_CHARS.match(node_id) and ID_CHARS.match(object_id)
        assert ID_CHARS.match(c["unique_id"])
        assert HA_REQUIRED[component] <= c.keys(), component
        assert not ABBREVIATIONS & c.keys()
        assert c["default_entity_id"] == f"{component}.{c['object_id']}"
        assert re.fullmatch(r"[a-z0-9_]+", c["object_id"])
        assert c["availability_topic"] == t.availability
        assert c["payload_available"].encode() == payload.ONLINE
        assert c["payload_not_available"].encode() == payload.OFFLINE
        assert c["device"]["identifiers"] == ["roomscribe_kitchen-Pi"]
        assert c["device"]["suggested_area"] == "Kitchen"
        assert c["origin"]["name"] == "roomscribe"
        assert m.encode() == json.dumps(c, ensure_ascii=False, separators=(",", ":")).encode()


def test_event_reads_the_transcript_topic_and_entities_use_the_right_topics() -> None:
    s = make_settings(topic_prefix="home/mics")
    t = payload.topics("home/mics", s.device.id)
    by_key = {m.topic.split("/")[3]: m.payload for m in configs(s)}
    event, text = by_key["transcript"], by_key["last_transcript"]
    assert isinstance(event, dict) and isinstance(text, dict)
    assert event["event_types"] == ["transcript"]
    assert event["state_topic"] == t.transcript
    assert text["state_topic"] == text["json_attributes_topic"] == t.transcript
    switch = by_key["mute"]
    assert isinstance(switch, dict)
    assert (switch["state_topic"], switch["command_topic"]) == mute_topics("home/mics",
                                                                         s.device.id)
    assert (switch["payload_on"], switch["payload_off"]) == ("ON", "OFF")
    for key in ("status", "last_error", "buffered", "dropped", "overruns", "published",
                "uptime"):
        entity = by_key[key]
        assert isinstance(entity, dict)
        assert entity["state_topic"] == t.state
        assert entity["entity_category"] == "diagnostic"
    # The alerting entity is a primary one: a problem sensor, on only while failing.
    problem = by_key["transcription"]
    assert isinstance(problem, dict) and problem["state_topic"] == t.state
    assert problem["device_class"] == "problem" and "entity_category" not in problem
    status = by_key["status"]
    assert isinstance(status, dict) and status["device_class"] == "enum"
    assert status["options"] == ["streaming", "idle", "muted", "reconnecting", "failing"]


def test_state_sensors_units_and_classes() -> None:
    by_key = {m.topic.split("/")[3]: m.payload for m in configs(make_settings())}
    expected = {"buffered": ("s", "duration"), "dropped": ("s", "duration"),
                "uptime": ("s", "duration"), "overruns": (None, None),
                "published": (None, None)}
    for key, (unit, device_class) in expected.items():
        entity = by_key[key]
        assert isinstance(entity, dict)
        assert entity.get("unit_of_measurement") == unit
        assert entity.get("device_class") == device_class
    published = by_key["published"]
    assert isinstance(published, dict) and published["state_class"] == "total_increasing"
    fields = {f.name for f in dataclasses.fields(payload.StatePayload)}
    for entity in by_key.values():
        assert isinstance(entity, dict)
        if entity["state_topic"].endswith("/state"):
            used = set(re.findall(r"value_json\.(\w+)", entity["value_template"]))
            assert used and used <= fields


def test_templates_render_like_home_assistant() -> None:
    long_json, short_json = transcript_json(LONG_TEXT), transcript_json("Lights on.")
    state = payload.StatePayload(status="failing", transcription_available=False,
                                 buffered_s=12.34, overruns=2, last_error="x" * 300,
                                 uptime_s=99.0)
    state_json = state.encode(device="kitchen-Pi", room="Kitchen", now=1714566900.0).decode()
    idle_json = payload.StatePayload().encode(device="d", room="", now=0.0).decode()
    assert len(LONG_TEXT) > 300
    (event, text, attrs, short, failing, idle, error, no_error, status,
     buffered) = render([
        (discovery.EVENT_TEMPLATE, long_json),
        (discovery.TEXT_TEMPLATE, long_json),
        (discovery.TEXT_ATTRIBUTES_TEMPLATE, long_json),
        (discovery.TEXT_TEMPLATE, short_json),
        (discovery.PROBLEM_TEMPLATE, state_json),
        (discovery.PROBLEM_TEMPLATE, idle_json),
        (discovery.ERROR_TEMPLATE, state_json),
        (discovery.ERROR_TEMPLATE, idle_json),
        (discovery.STATUS_TEMPLATE, state_json),
        ("{{ value_json.buffered_s }}", state_json),
    ])
    # HA's event entity: a JSON object with event_type; the rest become attributes.
    fired = json.loads(event)
    assert fired.pop("event_type") == "transcript"
    assert fired["text"] == LONG_TEXT and fired["id"] == "e1" and fired["replayed"] is False
    assert text == LONG_TEXT[:255] and len(text) == 255
    assert json.loads(attrs)["text"] == LONG_TEXT
    assert short == "Lights on."
    assert (failing, idle) == ("ON", "OFF")  # problem sensor: ON is a problem
    assert error == "x" * 255
    assert no_error == "none"  # not a blank state
    assert status == "failing"
    assert float(buffered) == 12.3


def test_template_structure() -> None:
    # Checked without jinja2 too: the 255 cut is a slice (truncate() would add "..." and
    # allow 5 more characters), and JSON is built by to_json, never by string pasting.
    assert discovery.TEXT_TEMPLATE == "{{ value_json.text[:255] }}"
    assert discovery.ERROR_TEMPLATE.startswith("{{ value_json.last_error[:255] if ")
    for template in (discovery.EVENT_TEMPLATE, discovery.TEXT_ATTRIBUTES_TEMPLATE):
        assert template.startswith("{{ {") and template.endswith("} | to_json }}")
    assert '"event_type": "transcript"' in discovery.EVENT_TEMPLATE
    fields = set(json.loads(transcript_json("x")))
    used = set(re.findall(r"value_json\.(\w+)", discovery.EVENT_TEMPLATE))
    assert "text" in used and used <= fields


def test_removal_clears_the_same_topics() -> None:
    s = make_settings()
    sent = discovery.discovery_messages(s)
    removals = discovery.removal_messages(s)
    assert [m.topic for m in removals] == [m.topic for m in sent]
    assert all(m.payload == "" and m.encode() == b"" and m.retain and m.qos == 1
               for m in removals)
    # Switching discovery off stops sending configs but `forget` still removes them.
    off = make_settings(ha_discovery=False)
    assert discovery.discovery_messages(off) == []
    assert [m.topic for m in discovery.removal_messages(off)] == [m.topic for m in sent]


def test_retired_uplink_entity_is_cleared_and_hardware_is_shown() -> None:
    """Earlier versions announced binary_sensor …/uplink: every (re)connect clears it."""
    s = make_settings()
    retired = "homeassistant/binary_sensor/roomscribe_kitchen-Pi/uplink/config"
    cleared = [m for m in discovery.discovery_messages(s) if m.topic == retired]
    assert [(m.payload, m.retain, m.qos) for m in cleared] == [("", True, 1)]
    device = configs(s, "Raspberry Pi 4 Model B Rev 1.4")[0].payload["device"]
    assert isinstance(device, dict) and device["hw_version"] == "Raspberry Pi 4 Model B Rev 1.4"
    assert "hw_version" not in configs(s)[0].payload["device"]  # type: ignore[index]


def test_discovery_prefix_and_room_less_device() -> None:
    s = make_settings(device_id="attic", room="", ha_discovery_prefix="ha/")
    messages = configs(s)
    assert all(m.topic.startswith("ha/") and "//" not in m.topic for m in messages)
    assert "ha/sensor/roomscribe_attic/last_transcript/config" in {m.topic for m in messages}
    device = messages[0].payload["device"] if isinstance(messages[0].payload, dict) else {}
    assert device["name"] == "roomscribe attic" and "suggested_area" not in device


@pytest.mark.parametrize(("topic", "body", "prefix", "expected"), [
    ("homeassistant/status", b"online", "homeassistant", True),
    ("homeassistant/status", b"online\n", "homeassistant", True),
    ("homeassistant/status", b"offline", "homeassistant", False),
    ("homeassistant/status", b"", "homeassistant", False),
    ("ha/status", b"online", "ha/", True),
    ("homeassistant/status", b"online", "ha", False),
    ("homeassistant/sensor/x/config", b"online", "homeassistant", False),
    ("roomscribe/kitchen/availability", b"online", "homeassistant", False),
])
def test_should_rediscover(topic: str, body: bytes, prefix: str, expected: bool) -> None:
    assert discovery.should_rediscover(topic, body, prefix) is expected
    assert discovery.status_topic(prefix) == f"{prefix.rstrip('/')}/status"


def test_configs_are_retained_and_removal_clears_them_on_a_real_broker(broker: Broker) -> None:
    s = make_settings()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="discovery-test")
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()

    def send(messages: list[Message]) -> None:
        for m in messages:
            pub.publish(m.topic, m.encode(), qos=m.qos, retain=m.retain).wait_for_publish(10)

    def retained_configs() -> dict[str, Any]:
        """What a Home Assistant subscribing now would be handed."""
        sub = Subscriber(broker.port, topic="homeassistant/#")
        try:
            # Retained messages are queued at SUBSCRIBE, so they all arrive before this one.
            pub.publish("homeassistant/marker", b"x", qos=1).wait_for_publish(10)
            wait(lambda: bool(sub.on("marker")), what="marker")
            return {m.topic: json.loads(m.payload) for m in sub.messages
                    if m.topic.endswith("/config")}
        finally:
            sub.close()

    try:
        send(discovery.discovery_messages(s))
        assert retained_configs() == {m.topic: m.payload for m in configs(s)}
        send(discovery.removal_messages(s))
        assert retained_configs() == {}
    finally:
        pub.loop_stop()
        pub.disconnect()

"""Rhasspy/Hermes compatibility: hermes/asr/textCaptured for each final transcript."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jsonschema

from roomscribe import hermes
from roomscribe.config import DeviceSettings, MqttSettings, Settings
from roomscribe.transcript import Transcript

SCHEMA = Path(__file__).resolve().parent.parent / "docs" / "schemas" / \
    "hermes-text-captured.json"
# Rhasspy's documented fields (docs/reference.md; rhasspyhermes.asr.AsrTextCaptured).
RHASSPY_FIELDS = {"text", "likelihood", "seconds", "siteId", "sessionId", "wakewordId",
                  "asrTokens"}
T = Transcript(text="Turn on the kitchen light.", item_id="item_4", session_id="sess_9",
               captured_start=1714566890.25, captured_end=1714566893.5,
               received_at=1714566894.0, model="openai/whisper-large-v3")


def settings(**mqtt: Any) -> Settings:
    return dataclasses.replace(Settings(), device=DeviceSettings(id="kitchen"),
                               mqtt=dataclasses.replace(MqttSettings(), **mqtt))


def test_off_by_default() -> None:
    assert Settings().mqtt.hermes is False
    assert hermes.messages(settings(), T) == []


def test_text_captured_shape() -> None:
    [m] = hermes.messages(settings(hermes=True), T)
    assert (m.topic, m.retain, m.qos) == ("hermes/asr/textCaptured", False, 1)
    body = json.loads(m.encode())
    jsonschema.validate(body, json.loads(SCHEMA.read_text()))
    assert set(body) == RHASSPY_FIELDS
    assert body == {"text": "Turn on the kitchen light.", "likelihood": 1.0, "seconds": 3.25,
                    "siteId": "kitchen", "sessionId": "sess_9", "wakewordId": None,
                    "asrTokens": None}


def test_site_id_setting() -> None:
    [m] = hermes.messages(settings(hermes=True, hermes_site_id="satellite1"), T)
    assert json.loads(m.encode())["siteId"] == "satellite1"

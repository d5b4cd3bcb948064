"""Optional Rhasspy/Hermes compatibility (mqtt.hermes): hermes/asr/textCaptured, no I/O.

Fields as Rhasspy documents the message (docs/reference.md of rhasspy/rhasspy and
rhasspyhermes.asr.AsrTextCaptured): text, likelihood, seconds, siteId, sessionId, and the
Rhasspy-only wakewordId and asrTokens. The realtime service reports no confidence, so
likelihood is 1.0. Rhasspy calls `seconds` the transcription time; a streaming
recognizer transcribes while the audio plays, so this sends the audio's duration.
"""

from __future__ import annotations

from typing import Any

from .config import Settings
from .message import Message
from .transcript import Transcript

TOPIC = "hermes/asr/textCaptured"
HERMES_QOS = 1


def site_id(settings: Settings) -> str:
    return settings.mqtt.hermes_site_id or settings.device.id


def text_captured(t: Transcript, *, site: str) -> dict[str, Any]:
    return {
        "text": t.text,
        "likelihood": 1.0,
        "seconds": round(max(0.0, t.captured_end - t.captured_start), 3),
        "siteId": site,
        "sessionId": t.session_id,
        "wakewordId": None,
        "asrTokens": None,
    }


def messages(settings: Settings, t: Transcript) -> list[Message]:
    """What to publish for one final transcript; nothing unless mqtt.hermes is on."""
    if not settings.mqtt.hermes:
        return []
    return [Message(TOPIC, text_captured(t, site=site_id(settings)), retain=False,
                    qos=HERMES_QOS)]

"""Phrase triggers ([[triggers]] in the config): transcript text in, messages out, no I/O.

A rule matches either `words` - a phrase found as whole words, ignoring case,
punctuation and apostrophes ("Lights on!" matches "lights on"; "lightsaber" does not
match "lights") - or `regex`, searched case-insensitively. config.py checks the rules
(one of words/regex, a valid regex, a topic) when it loads them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .config import TriggerRule
from .message import Message

SCHEMA_VERSION = 1
_WORD = re.compile(r"[^\W_]+")
_APOSTROPHES = str.maketrans("", "", "'\u2019")


def _words(text: str) -> str:
    """Lower-case words joined and framed by single spaces, for whole-word search."""
    return " " + " ".join(_WORD.findall(text.casefold().translate(_APOSTROPHES))) + " "


def matches(rule: TriggerRule, text: str) -> bool:
    if rule.regex:
        # re caches compiled patterns, and config.py has compiled each one already.
        return re.search(rule.regex, text, re.IGNORECASE) is not None
    return _words(rule.words) in _words(text)


def match(rules: Iterable[TriggerRule], text: str) -> list[TriggerRule]:
    """The rules that fire for this transcript text, in config order."""
    return [rule for rule in rules if matches(rule, text)]


def trigger_payload(rule: TriggerRule, *, text: str, device: str, room: str,
                    entry_id: str) -> dict[str, Any] | str:
    """The rule's own payload verbatim, or the JSON of docs/schemas/trigger.json."""
    if rule.payload:
        return rule.payload
    return {"schema": SCHEMA_VERSION, "trigger": rule.name, "text": text, "device": device,
            "room": room, "id": entry_id}


def messages(rules: Iterable[TriggerRule], text: str, *, device: str, room: str,
             entry_id: str) -> list[Message]:
    """What to publish for one final transcript (entry_id is its transcript `id`)."""
    return [Message(rule.topic, trigger_payload(rule, text=text, device=device, room=room,
                                                entry_id=entry_id),
                    retain=rule.retain, qos=rule.qos)
            for rule in match(rules, text)]

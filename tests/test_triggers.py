"""[[triggers]] rules: loading from TOML, one-line config errors, matching, messages."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from conftest import reference_texts
from roomscribe import config, triggers
from roomscribe.config import ConfigError, TriggerRule

SCHEMAS = Path(__file__).resolve().parent.parent / "docs" / "schemas"

RULES_TOML = r'''
[[triggers]]
name = "lights"
words = "lights on"
topic = "home/kitchen/lights/set"
payload = "ON"
qos = 1

[[triggers]]
name = "goodnight"
regex = '\bgood ?night\b'
topic = "home/scenes/goodnight"
retain = true
'''


def load(text: str) -> config.Settings:
    return config.parse(text, "c.toml")


def rule(words: str = "", regex: str = "", name: str = "r") -> TriggerRule:
    return TriggerRule(name=name, words=words, regex=regex, topic="t")


def test_rules_load_from_an_array_of_tables() -> None:
    s = load(RULES_TOML)
    assert s.triggers == (
        TriggerRule(name="lights", words="lights on", topic="home/kitchen/lights/set",
                    payload="ON", qos=1),
        TriggerRule(name="goodnight", regex=r"\bgood ?night\b", topic="home/scenes/goodnight",
                    retain=True),
    )
    assert load("").triggers == ()
    assert config.as_dict(s)["triggers"][1]["name"] == "goodnight"


@pytest.mark.parametrize(("old", "new", "message"), [
    ('topic = "home/scenes/goodnight"', 'topic = 5',
     "c.toml: triggers[2].topic must be a string, not 5"),
    ('retain = true', 'qos = 3', "c.toml: triggers[2].qos = 3 is out of range [0, 2]"),
    ('retain = true', 'retain = "yes"',
     "c.toml: triggers[2].retain must be true or false, not 'yes'"),
    ('retain = true', 'colour = "red"', "c.toml: unknown key triggers[2].colour"),
])
def test_type_errors_name_the_rule_and_key(old: str, new: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(RULES_TOML.replace(old, new))
    assert str(exc.value) == message


@pytest.mark.parametrize(("block", "message"), [
    ('name = "x"\nregex = "(unclosed"\ntopic = "t"',
     "c.toml: triggers[1] ('x'): regex '(unclosed' is not valid: "
     "missing ), unterminated subpattern at position 0"),
    ('name = "x"\nwords = "a"\nregex = "a"\ntopic = "t"',
     "c.toml: triggers[1] ('x'): set exactly one of words or regex"),
    ('name = "x"\ntopic = "t"', "c.toml: triggers[1] ('x'): set exactly one of words or regex"),
    ('name = "x"\nwords = "?!"\ntopic = "t"',
     "c.toml: triggers[1] ('x'): words has no letters or digits"),
    ('words = "a"\ntopic = "t"', "c.toml: triggers[1]: name must be set"),
    ('name = "x"\nwords = "a"\ntopic = "home/#"',
     "c.toml: triggers[1] ('x'): topic must be non-empty, without + or #"),
    ('name = "x"\nwords = "a"',
     "c.toml: triggers[1] ('x'): topic must be non-empty, without + or #"),
])
def test_rule_errors_are_one_line(block: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(f"[[triggers]]\n{block}\n")
    assert str(exc.value) == message
    assert "\n" not in str(exc.value)


def test_duplicate_names_and_wrong_shape() -> None:
    with pytest.raises(ConfigError, match=r"^c.toml: triggers\[2\] \('a'\): another trigger "):
        load('[[triggers]]\nname="a"\nwords="x"\ntopic="t"\n'
             '[[triggers]]\nname="a"\nwords="y"\ntopic="t"\n')
    with pytest.raises(ConfigError, match=r"^c.toml: triggers must be an array of tables"):
        load('triggers = "lights"\n')
    with pytest.raises(ConfigError, match=r"^c.toml: triggers must be an array of tables"):
        load('triggers = ["lights"]\n')


@pytest.mark.parametrize(("words", "text", "expected"), [
    ("lights on", "Turn the lights on.", True),
    ("lights on", "LIGHTS, ON!", True),
    ("lights on", "lights\u2014on", True),
    ("lights on", "the lights are on", False),
    ("light", "Turn the lights on.", False),
    ("lights", "a lightsaber", False),
    ("on", "only once", False),
    ("don't stop", "Dont stop now", True),
    ("dont stop", "Don\u2019t stop now", True),
    ("caf\u00e9", "Un CAF\u00c9, s'il vous pla\u00eet", True),
])
def test_words_match_whole_words_ignoring_case_and_punctuation(
        words: str, text: str, expected: bool) -> None:
    assert triggers.matches(rule(words=words), text) is expected


def test_regex_is_searched_case_insensitively() -> None:
    r = rule(regex=r"\bgood ?night\b")
    assert triggers.matches(r, "OK. Good night, everyone.")
    assert triggers.matches(r, "goodnight")
    assert not triggers.matches(r, "goodnights")


def test_match_on_real_reference_transcripts() -> None:
    text = reference_texts()["jfk-44k1-stereo.wav"]
    rules = [rule(words="ask not what your country", name="jfk"),
             rule(words="Americans ask", name="across-punctuation"),
             rule(words="countr", name="partial-word"),
             rule(regex=r"fellow \w+", name="regex"),
             rule(words="ask what your country", name="not-in-text")]
    assert [r.name for r in triggers.match(rules, text)] == ["jfk", "across-punctuation",
                                                             "regex"]


def test_messages_default_payload_matches_schema() -> None:
    schema = json.loads((SCHEMAS / "trigger.json").read_text())
    s = load(RULES_TOML)
    text = "Good night. Lights on, please."
    out = triggers.messages(s.triggers, text, device="kitchen", room="Kitchen", entry_id="e9")
    assert [(m.topic, m.qos, m.retain) for m in out] == [
        ("home/kitchen/lights/set", 1, False), ("home/scenes/goodnight", 0, True)]
    assert out[0].encode() == b"ON"
    body = json.loads(out[1].encode())
    jsonschema.validate(body, schema)
    assert body == {"schema": 1, "trigger": "goodnight", "text": text, "device": "kitchen",
                    "room": "Kitchen", "id": "e9"}
    assert triggers.messages(s.triggers, "nothing here", device="k", room="", entry_id="x") == []

"""Topics, payloads and the state schedule: pure functions, no sockets."""

from __future__ import annotations

import json
import uuid

import jsonschema
import pytest

from mqttkit import DEVICE, ROOM, SCHEMAS, transcript, validate
from roomscribe import payload


def test_schemas_are_valid_draft_2020_12() -> None:
    files = sorted(SCHEMAS.glob("*.v[0-9].json"))
    assert [f.name for f in files] == ["availability.v1.json", "partial.v1.json",
                                       "state.v1.json", "state.v2.json",
                                       "transcript.v1.json", "transcript.v2.json"]
    for f in files:
        jsonschema.Draft202012Validator.check_schema(json.loads(f.read_text()))
        # Each file describes exactly the schema number its name says.
        version = int(f.name.split(".v")[1].split(".")[0])
        if "schema" in json.loads(f.read_text()).get("properties", {}):
            assert json.loads(f.read_text())["properties"]["schema"] == {"const": version}


def test_topics() -> None:
    t = payload.topics("home/mics/", "kitchen-pi")
    assert t == payload.Topics("home/mics/kitchen-pi/transcript", "home/mics/kitchen-pi/partial",
                               "home/mics/kitchen-pi/availability", "home/mics/kitchen-pi/state")


def test_iso_is_utc_with_milliseconds() -> None:
    assert payload.iso(0.0) == "1970-01-01T00:00:00.000Z"
    assert payload.iso(1714566896.789) == "2024-05-01T12:34:56.789Z"
    # Truncated, not rounded, so a time never moves into the next second.
    assert payload.iso(1714566896.9999) == "2024-05-01T12:34:56.999Z"


def test_transcript_payload_matches_schema_and_transcript() -> None:
    t = transcript("hello kitchen", end=1714566896.5)
    entry_id = str(uuid.uuid4())
    body = payload.transcript_payload(t, entry_id=entry_id, seq=7, device=DEVICE, room=ROOM,
                                      published=1714566900.25)
    obj = validate("transcript", body)
    assert obj == {
        "schema": 2, "id": entry_id, "seq": 7, "device": DEVICE, "room": ROOM,
        "text": "hello kitchen", "start": "2024-05-01T12:34:54.000Z",
        "end": "2024-05-01T12:34:56.500Z", "published": "2024-05-01T12:35:00.250Z",
        "received": "2024-05-01T12:34:57.300Z", "model": t.model, "session": "sess_1",
        "item": t.item_id, "replayed": False, "truncated": False,
    }
    restamped = validate("transcript", payload.restamp(body, 1714570000.0))
    assert restamped["published"] == "2024-05-01T13:26:40.000Z"
    assert {k: v for k, v in restamped.items() if k != "published"} == {
        k: v for k, v in obj.items() if k != "published"}


def test_non_ascii_text_survives() -> None:
    t = transcript("Grüße, 東京")
    body = payload.transcript_payload(t, entry_id=str(uuid.uuid4()), seq=1, device=DEVICE,
                                      room="Küche", published=0.0)
    assert validate("transcript", body)["text"] == "Grüße, 東京"


def test_partial_state_availability_match_schemas() -> None:
    validate("partial", payload.partial_payload("hel", device=DEVICE, room=ROOM,
                                                published=1.0))
    state = payload.StatePayload(uplink_connected=True, buffered_s=12.345, last_error="x")
    obj = validate("state", state.encode(device=DEVICE, room=ROOM, now=1714566896.0))
    assert obj["buffered_s"] == 12.3
    assert obj["uplink_connected"] is True
    validate("availability", payload.ONLINE)
    validate("availability", payload.OFFLINE)
    with pytest.raises(jsonschema.ValidationError):
        validate("availability", b"maybe")


def test_schema_rejects_a_missing_field() -> None:
    body = payload.transcript_payload(transcript("x"), entry_id=str(uuid.uuid4()), seq=1,
                                      device=DEVICE, room=ROOM, published=0.0)
    obj = json.loads(body)
    del obj["id"]
    with pytest.raises(jsonschema.ValidationError):
        validate("transcript", json.dumps(obj).encode())


def test_state_reporter_publishes_on_change_and_periodically() -> None:
    r = payload.StateReporter(interval_s=60.0, started=1000.0)
    first = r.due(1000.0)
    assert first is not None and first.uptime_s == 0.0
    assert r.due(1000.5) is None  # nothing changed
    r.update(uplink_connected=True)
    assert r.due(1000.5) is None  # changed, but bursts are merged
    changed = r.due(1001.0)
    assert changed is not None and changed.uplink_connected
    r.update(buffered_s=0.6)  # the wobble of normal streaming: waits
    assert r.due(1030.0) is None
    periodic = r.due(1061.0)
    assert periodic is not None and periodic.buffered_s == 0.6 and periodic.uptime_s == 61.0
    r.force()
    assert r.due(1061.1) is not None


def test_buffered_audio_is_published_when_it_moves_meaningfully() -> None:
    """An outage: 18 s buffered must not read 0.8 s until the next periodic publish."""
    r = payload.StateReporter(interval_s=60.0, started=0.0)
    r.update(buffered_s=0.8)
    assert r.due(0.0) is not None
    r.update(buffered_s=1.5)
    assert r.due(2.0) is None  # under a second's change
    r.update(buffered_s=18.0)
    moved = r.due(2.0)
    assert moved is not None and moved.buffered_s == 18.0
    r.update(buffered_s=18.4)
    assert r.due(2.5) is None  # rate-limited anyway, and not meaningful
    r.update(buffered_s=21.0)
    assert r.due(3.5) is None  # 3 s is under a quarter of 18 s
    r.update(buffered_s=0.3)  # the backlog drained
    drained = r.due(4.0)
    assert drained is not None and drained.buffered_s == 0.3
    # A 600 s outage, sampled every second: a few dozen publishes, not 600.
    r2 = payload.StateReporter(interval_s=60.0, started=0.0)
    published = 0
    for second in range(601):
        r2.update(buffered_s=float(second))
        published += r2.due(float(second)) is not None
    assert published < 40


def test_state_v2_fields() -> None:
    state = payload.StatePayload(status="failing", transcription_available=False,
                                 transcripts_published=1042, last_error="uplink: refused")
    obj = validate("state", state.encode(device=DEVICE, room=ROOM, now=0.0))
    assert obj["schema"] == 2
    assert (obj["status"], obj["transcription_available"]) == ("failing", False)
    ok = validate("state", payload.StatePayload().encode(device=DEVICE, room=ROOM, now=0.0))
    assert ok["last_error"] is None and ok["status"] == "idle"
    with pytest.raises(jsonschema.ValidationError):  # an empty string is not "no error"
        validate("state", payload.StatePayload(last_error="").encode(device=DEVICE, room=ROOM,
                                                                     now=0.0))


def test_state_reporter_rejects_unknown_fields() -> None:
    r = payload.StateReporter(interval_s=60.0, started=0.0)
    with pytest.raises(TypeError, match="bogus"):
        r.update(bogus=1)


def test_a_huge_transcript_is_cut_and_marked() -> None:
    t = transcript("word " * 200_000)  # 1,000,000 characters, as a broken server sent
    cut = payload.capped(t, 4096)
    assert cut.truncated and cut.text == t.text[:4096]
    body = payload.transcript_payload(cut, entry_id=str(uuid.uuid4()), seq=1, device=DEVICE,
                                      room=ROOM, published=0.0)
    obj = validate("transcript", body)
    assert obj["truncated"] is True and len(obj["text"]) == 4096
    assert len(body) < 4096 * 4 + 1024
    short = transcript("lights on")
    assert payload.capped(short, 4096) is short and not short.truncated


def test_throttle_sends_at_most_one_per_interval_and_keeps_the_newest() -> None:
    th: payload.Throttle[str] = payload.Throttle(0.25)
    assert th.offer("a", 10.0) == "a"
    assert th.wake_at() is None
    assert th.offer("ab", 10.1) is None  # held
    assert th.offer("abc", 10.2) is None  # replaces "ab"
    assert th.wake_at() == 10.25
    assert th.due(10.24) is None
    assert th.due(10.25) == "abc"
    assert th.due(10.6) is None  # nothing held
    assert th.offer("x", 10.4) is None
    th.drop()  # the final transcript came first
    assert th.due(11.0) is None and th.wake_at() is None
    sent = [item for i in range(69_000) if (item := th.offer(str(i), 20.0 + i * 20 / 69_000))]
    assert len(sent) <= 20 / 0.25 + 1

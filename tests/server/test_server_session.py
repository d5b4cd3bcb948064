"""Protocol conformance of one session, driven directly (no socket): every client event
of protocol.md, every server event, and bad input."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import numpy as np
import pytest

from conftest import NO_SERVER_EXTRA
from server_support import (
    DEFAULT_VAD,
    FILES,
    RATE,
    Driver,
    append,
    coverage,
    driver,
    normalise,
    params,
    recording,
    silence,
    speech,
)

pytest.importorskip("faster_whisper", reason=NO_SERVER_EXTRA)

from conftest import reference_texts
from roomscribe.server.session import DecodeJob, Limits, Session
from roomscribe.server.vad import VadParams

pytestmark = pytest.mark.server
COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"
COMMIT = json.dumps({"type": "input_audio_buffer.commit"})
MS = RATE // 1000


def jfk_with_silence() -> np.ndarray:
    return np.concatenate([silence(0.5), speech("jfk-44k1-stereo.wav"), silence(1.5)])


# -- server events ---------------------------------------------------------------------
def test_session_created_comes_first_with_its_fields() -> None:
    first = Session(params()).start()
    assert len(first) == 1
    event = first[0]
    assert event["type"] == "session.created"
    assert event["event_id"]
    s = event["session"]
    assert s["id"] and s["object"] == "realtime.session"
    assert s["modalities"] == ["audio"]
    assert s["model"] == "openai/whisper-large-v3"
    assert s["input_audio_format"] == "pcm_s16le_16000"
    assert s["turn_detection"] == {"type": "server_vad", "threshold": 0.3,
                                   "min_silence_duration_ms": 500,
                                   "min_speech_duration_ms": 150,
                                   "max_speech_duration_s": 15.0, "speech_pad_ms": 250}


def test_manual_mode_reports_null_turn_detection() -> None:
    assert Session(params(vad=None)).start()[0]["session"]["turn_detection"] is None


def test_server_vad_events_deltas_and_completed() -> None:
    d = driver()
    d.stream(jfk_with_silence())
    kinds = [e["type"] for e in d.events]
    assert kinds[0] == "session.created"
    assert all(e["event_id"] for e in d.events)
    assert len({e["event_id"] for e in d.events}) == len(d.events)
    started = d.of("input_audio_buffer.speech_started")
    stopped = d.of("input_audio_buffer.speech_stopped")
    committed = d.of("input_audio_buffer.committed")
    done = d.of(COMPLETED)
    assert len(started) == len(stopped) == len(committed) == len(done) >= 1
    items = [e["item_id"] for e in started]
    assert [e["item_id"] for e in stopped] == items
    assert [e["item_id"] for e in committed] == items
    assert [e["item_id"] for e in done] == items
    assert [e["previous_item_id"] for e in committed] == [None, *items[:-1]]
    # Times: inside the stream, ordered, the speech starts after the leading silence.
    assert 300 <= started[0]["audio_start_ms"] <= 700
    ends = [e["audio_end_ms"] for e in stopped]
    assert ends == sorted(ends) and ends[-1] <= d.session.total // 16 + 1
    for a, b in zip(stopped, started[1:], strict=False):
        assert a["audio_end_ms"] <= b["audio_start_ms"] + 1
    # Deltas carry the whole hypothesis in both fields, for the open item only.
    deltas = d.of(DELTA)
    assert deltas
    for e in deltas:
        assert e["delta"] == e["transcript"] and e["item_id"] in items
    # Each item's deltas come before its completed.
    order = [(e["type"], e.get("item_id")) for e in d.events]
    for e in deltas:
        assert order.index((DELTA, e["item_id"])) < order.index((COMPLETED, e["item_id"]))
    text = " ".join(e["transcript"] for e in done)
    assert coverage(reference_texts()["jfk-44k1-stereo.wav"], text) >= 0.8


def test_a_client_that_appends_deltas_shows_each_word_once() -> None:
    """OpenAI's clients (no input_audio_format in the URL) add each delta to the text so
    far. Sent whole hypotheses, they would show "And soAnd so myAnd so my fellow"."""
    d = Driver(Session(replace(params(), appends_deltas=True)))
    d.stream(np.concatenate([np.concatenate([speech(n), silence(1.5)]) for n in FILES]))
    shown: dict[str, list[str]] = {}  # item -> what the client showed after each delta
    steps = finals = 0
    for e in d.events:
        if e["type"] == DELTA:
            assert "transcript" not in e  # the whole text is not theirs to read here
            before = shown.setdefault(e["item_id"], [""])[-1]
            shown[e["item_id"]].append(before + e["delta"])
        elif e["type"] == COMPLETED:
            final = normalise(e["transcript"])
            for text in shown.get(e["item_id"], [""])[1:]:
                words = normalise(text)
                assert len(words) <= len(final) + 1, (text, e["transcript"])
                steps += 1
                finals += words == final[:len(words)]
    # Words arrive before the final: the long sentences are shown growing.
    assert max(len(v) - 1 for v in shown.values()) >= 3, shown
    # What was shown is, nearly always, how the final begins (a word cut off by the end
    # of the audio so far can still agree twice: "Ask not" was shown as "S").
    assert steps >= 8 and finals >= 0.8 * steps, (finals, steps, shown)


def test_failed_event_when_decoding_fails() -> None:
    s = Session(params(vad=None))
    s.receive(append(speech("lj002-0035-22k05.wav")))
    out = s.receive(COMMIT)
    job = next(o for o in out if isinstance(o, DecodeJob))
    [failed] = s.decoded(job, None, "transcription failed: out of memory")
    assert failed["type"] == "conversation.item.input_audio_transcription.failed"
    assert failed["item_id"] == job.item_id and failed["event_id"]
    assert set(failed["error"]) >= {"message", "type", "param", "code"}
    # Together's marker of a failure of one turn (the session goes on): no close.
    assert failed["event_type"] == "completed" and failed["duration"] > 1.0


# -- client events ---------------------------------------------------------------------
def test_append_has_no_reply() -> None:
    assert Session(params()).receive(append(silence(0.1))) == []


@pytest.mark.parametrize("name", FILES)
def test_commit_transcribes_each_file(name: str) -> None:
    d = driver(vad=None)
    d.stream(speech(name))
    new = d.send(COMMIT)
    assert [e["type"] for e in new] == ["input_audio_buffer.committed", COMPLETED]
    assert new[0]["item_id"] == new[1]["item_id"]
    assert new[0]["previous_item_id"] is None
    assert new[1]["audio_end_ms"] == -(-len(speech(name)) * 1000 // RATE)  # ceil
    assert coverage(reference_texts()[name], new[1]["transcript"]) >= 0.8


def test_commit_in_vad_mode_closes_the_open_segment() -> None:
    d = driver(partials=False)
    d.stream(np.concatenate([silence(0.5), speech("lj002-0020-22k05.wav")]))
    assert not d.of(COMPLETED)
    new = d.send(COMMIT)
    kinds = [e["type"] for e in new]
    assert kinds[-3:] == ["input_audio_buffer.speech_stopped",
                          "input_audio_buffer.committed", COMPLETED]
    assert coverage(reference_texts()["lj002-0020-22k05.wav"], new[-1]["transcript"]) >= 0.8


@pytest.mark.parametrize("vad", [DEFAULT_VAD, None])
def test_commit_with_nothing_to_transcribe_is_commit_empty(vad: VadParams | None) -> None:
    d = driver(vad=vad)
    d.stream(silence(1.0) if vad else silence(0.05))
    [err] = d.send(json.dumps({"type": "input_audio_buffer.commit", "event_id": "c1"}))
    assert err["type"] == "error" and err["message"] == err["error"]["message"]
    assert err["error"]["code"] == "input_audio_buffer_commit_empty"
    assert err["error"]["event_id"] == "c1"
    assert not d.of(COMPLETED) and not d.of("input_audio_buffer.committed")
    if vad is None:  # too little is kept for the next commit, as OpenAI does
        d.stream(speech("lj002-0035-22k05.wav"))
        done = d.send(COMMIT)[-1]
        assert done["audio_start_ms"] == 0 and done["type"] == COMPLETED


def test_commit_after_the_last_segment_closed_is_commit_empty() -> None:
    d = driver(partials=False)
    d.stream(np.concatenate([silence(0.5), speech("lj002-0035-22k05.wav"), silence(1.5)]))
    assert len(d.of(COMPLETED)) == 1
    assert [e["error"]["code"] for e in d.send(COMMIT)] == ["input_audio_buffer_commit_empty"]


def test_clear_drops_buffered_audio() -> None:
    d = driver(vad=None)
    d.stream(speech("lj002-0035-22k05.wav"))
    assert [e["type"] for e in d.send(json.dumps({"type": "input_audio_buffer.clear"}))] == [
        "input_audio_buffer.cleared"]
    assert d.session.buffered_samples == 0
    d.stream(speech("lj002-0020-22k05.wav"))
    done = d.send(COMMIT)[-1]
    assert "press" not in done["transcript"].lower()


@pytest.mark.parametrize("kind", ["transcription_session.updated",
                                  "transcription_session.update", "session.update"])
def test_session_update_changes_vad_and_is_acknowledged(kind: str) -> None:
    d = driver()
    new = d.send(json.dumps({"type": kind, "session": {"turn_detection": {
        "type": "server_vad", "threshold": 0.5, "min_silence_duration_ms": 800}}}))
    reply = "session.updated" if kind == "session.update" else "transcription_session.updated"
    assert [e["type"] for e in new] == [reply]
    session = new[0]["session"]
    td = (session["audio"]["input"]["turn_detection"] if kind == "session.update"
          else session["turn_detection"])
    assert td["threshold"] == 0.5 and td["min_silence_duration_ms"] == 800
    assert td["speech_pad_ms"] == 250  # unchanged fields keep their values
    off = d.send(json.dumps({"type": kind, "session": {"turn_detection": None}}))
    assert d.session.turn_detection is None and off[-1]["type"] == reply


def test_openai_ga_session_update_gets_session_updated_in_ga_shape() -> None:
    d = driver()
    [reply] = d.send(json.dumps({"type": "session.update", "session": {
        "type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "gpt-4o-transcribe"},
            "turn_detection": {"type": "server_vad", "threshold": 0.5,
                               "prefix_padding_ms": 300, "silence_duration_ms": 500}}}}}))
    assert reply["type"] == "session.updated"
    session = reply["session"]
    assert session["type"] == "transcription" and session["id"] == d.session.id
    inp = session["audio"]["input"]
    assert inp["format"] == {"type": "audio/pcm", "rate": 24000}
    assert inp["transcription"]["model"] == "gpt-4o-transcribe"
    assert inp["turn_detection"]["speech_pad_ms"] == 300
    assert inp["turn_detection"]["min_silence_duration_ms"] == 500
    [back] = d.send(json.dumps({"type": "session.update", "session": {
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000.0}}}}}))
    assert back["session"]["audio"]["input"]["format"]["rate"] == 16000
    assert d.session.audio_format == "pcm_s16le_16000"
    for bad in ({"type": "audio/pcmu"}, {"type": "audio/pcm", "rate": 44100},
                {"type": "audio/pcm", "rate": True}):
        [err] = d.send(json.dumps({"type": "session.update", "session": {
            "type": "transcription", "audio": {"input": {"format": bad}}}}))
        assert err["error"]["code"] == "invalid_audio_format"
    assert d.session.audio_format == "pcm_s16le_16000"  # a refused update changes nothing
    [err] = d.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
    assert err["error"]["code"] == "invalid_value" and "transcri" in err["message"]


def test_echo_is_answered_with_its_id_payload_and_times() -> None:
    s = Session(params(), clock=lambda: 1234.5)
    [reply] = s.receive(json.dumps({"type": "echo", "echo_id": 17, "payload": {"n": [1]},
                                    "client_sent_at": 99}))
    assert reply["type"] == "echo.response" and reply["echo_id"] == 17
    assert reply["payload"] == {"n": [1]} and reply["client_sent_at"] == 99
    assert reply["server_received_at"] == 1234.5


@pytest.mark.parametrize(("audio_format", "rate"), [
    ("pcm_s16le_8000", 8000), ("pcm_s16le_24000", 24000), ("pcm16", 24000)])
def test_other_rates_are_resampled_on_the_clients_timeline(audio_format: str,
                                                           rate: int) -> None:
    """The same recording at 8 or 24 kHz: the words, and every *_ms and start/duration
    on the client's own clock (the 16 kHz session's values, within a few ms)."""
    name = "lj002-0035-22k05.wav"
    base = driver(partials=False)
    base.stream(np.concatenate([silence(0.7), speech(name), silence(1.5)]))
    p = replace(params(), input_audio_format=audio_format)
    d = Driver(Session(p), partials=False)
    pcm = np.concatenate([np.zeros(int(0.7 * rate), np.int16), speech(name, rate),
                          np.zeros(int(1.5 * rate), np.int16)])
    step = rate // 10
    for i in range(0, len(pcm), step):
        d.send(append(pcm[i:i + step]))
    [want], [got] = base.of(COMPLETED), d.of(COMPLETED)
    assert coverage(reference_texts()[name], got["transcript"]) >= 0.8
    for key in ("audio_start_ms", "audio_end_ms"):
        assert abs(got[key] - want[key]) <= 40, (key, got, want)
    assert got["start"] == got["audio_start_ms"] / 1000
    assert abs(got["start"] + got["duration"] - got["audio_end_ms"] / 1000) < 0.002
    # After a commit every sample sent is on the timeline: no resampler tail held back.
    d.send(COMMIT)
    assert d.session.total == round(len(pcm) * RATE / rate)


def test_switching_vad_off_then_on_segments_the_buffered_audio() -> None:
    d = driver(vad=None, partials=False)
    d.stream(np.concatenate([silence(0.5), speech("lj002-0035-22k05.wav"), silence(1.5)]))
    assert not d.of(COMPLETED)
    d.send(json.dumps({"type": "transcription_session.updated",
                       "session": {"turn_detection": {"type": "server_vad"}}}))
    [done] = d.of(COMPLETED)
    assert coverage(reference_texts()["lj002-0035-22k05.wav"], done["transcript"]) >= 0.8


def test_bad_turn_detection_is_an_error_and_changes_nothing() -> None:
    d = driver()
    [err] = d.send(json.dumps({"type": "session.update",
                               "session": {"turn_detection": {"threshold": 7}}}))
    assert err["type"] == "error" and err["error"]["code"] == "invalid_value"
    assert d.session.turn_detection == VadParams().as_json()


# -- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize(("message", "code", "param"), [
    ("not json", "invalid_json", None),
    ("[1, 2]", "invalid_json", None),
    ('{"audio": "AAAA"}', "missing_field", "type"),
    ('{"type": "response.create"}', "unknown_event_type", "type"),
    ('{"type": "input_audio_buffer.append"}', "missing_field", "audio"),
    ('{"type": "input_audio_buffer.append", "audio": 5}', "missing_field", "audio"),
    ('{"type": "input_audio_buffer.append", "audio": "not base64!"}', "invalid_base64",
     "audio"),
    ('{"type": "input_audio_buffer.append", "audio": "' + base64.b64encode(b"abc").decode()
     + '"}', "invalid_audio", "audio"),
    ('{"type": "session.update"}', "missing_field", "session"),
    ('{"type": "session.update", "session": {"turn_detection": 3}}', "invalid_value",
     "session.turn_detection"),
])
def test_bad_input_is_an_error_event_and_the_session_goes_on(
        message: str, code: str, param: str | None) -> None:
    d = driver(vad=None)
    [err] = d.send(message)
    assert err["type"] == "error" and err["event_id"]
    assert err["error"]["type"] == "invalid_request_error"
    assert err["error"]["code"] == code and err["error"]["param"] == param
    assert err["error"]["message"] and err["message"] == err["error"]["message"]
    d.stream(speech("lj002-0035-22k05.wav"))
    assert coverage(reference_texts()["lj002-0035-22k05.wav"],
                    d.send(COMMIT)[-1]["transcript"]) >= 0.8


def test_error_names_the_client_event_id() -> None:
    [err] = Session(params()).receive('{"type": "nope", "event_id": "evt_42"}')
    assert err["error"]["event_id"] == "evt_42"


def test_binary_frame_is_an_error() -> None:
    [err] = Session(params()).receive(b"\x00\x01")
    assert err["error"]["code"] == "binary_not_supported"


def test_manual_buffer_cap_forces_a_commit_instead_of_growing() -> None:
    limits = Limits(buffer_samples=2 * RATE, partial_interval_samples=RATE)
    d = Driver(Session(params(vad=None), limits))
    d.stream(np.concatenate([speech("lj002-0035-22k05.wav"), silence(1.0)]))
    assert len(d.of(COMPLETED)) == 1
    assert d.session.buffered_samples < 2 * RATE


def test_vad_segment_cap_bounds_memory_on_endless_speech() -> None:
    limits = Limits(buffer_samples=3 * RATE, partial_interval_samples=RATE)
    vad = VadParams(max_speech_duration_s=600)
    d = Driver(Session(params(vad=vad), limits), partials=False)
    clip = speech("jfk-44k1-stereo.wav")
    peak = 0
    for i in range(0, len(clip), 1600):
        d.send(append(clip[i:i + 1600]))
        peak = max(peak, d.session.buffered_samples)
    assert peak <= 4 * RATE
    assert len(d.of(COMPLETED)) >= 3


def test_first_partial_after_first_partial_ms_then_every_interval() -> None:
    limits = Limits(first_partial_samples=400 * RATE // 1000,
                    partial_interval_samples=700 * RATE // 1000)
    d = driver(limits=limits, partials=False)
    d.stream(np.concatenate([silence(0.5), speech("jfk-44k1-stereo.wav")[: 4 * RATE]]))
    started = d.of("input_audio_buffer.speech_started")
    partials = [j for j in d.jobs if not j.final]
    assert started and len(partials) >= 3
    onset_s = started[0]["audio_start_ms"] / 1000 + 0.25  # the pad comes first
    # A partial decodes from the padded start to the newest sample: its end is when
    # it was asked for. 100 ms appends: up to one append late.
    ends_s = [started[0]["audio_start_ms"] / 1000 + len(j.pcm) / RATE for j in partials]
    assert 0.399 <= ends_s[0] - onset_s < 0.5 + 0.05
    gaps = np.diff(ends_s)
    assert all(0.699 <= g < 0.8 + 0.05 for g in gaps[:2]), gaps


def test_a_conversations_deltas_say_only_the_hellos_its_people_said() -> None:
    """Two women on the phone: "Hello?" "Hello?" "Oh, hello. I didn't know you were
    there." (pyannote.audio's sample, tests/data). Greedy partials of it looped: 8 of
    its 10 deltas read "Hello? Hello? Hello? Hello? Hello? Hello, I didn't know you
    were" and the like, while the final was right."""
    d = driver()
    d.stream(np.concatenate([recording("pyannote-hello-16k.wav"), silence(1.5)]))
    deltas = [e["delta"] for e in d.of(DELTA)]
    assert len(deltas) >= 5
    for delta in deltas:
        assert normalise(delta).count("hello") <= 3, delta
    final = " ".join(e["transcript"] for e in d.of(COMPLETED))
    assert coverage("Hello? Hello? Oh, hello. I didn't know you were there.", final) >= 0.8
    # The deltas still follow the words after the greeting.
    assert "know" in normalise(deltas[-1]), deltas[-1]


def test_processed_watermark_follows_the_transcripts_it_covers() -> None:
    """Together's `processed_ms`: a client may forget audio before it, so it must never
    pass a segment whose `completed` has not gone out yet, and it must move on."""
    d = driver(partials=False)
    assert d.processed == [(1, 0)]  # right after session.created
    clips = [speech(name) for name in FILES]
    d.stream(np.concatenate([x for clip in clips for x in (clip, silence(2.0))]))
    marks = d.processed
    assert [ms for _, ms in marks] == sorted(ms for _, ms in marks)  # monotonic
    done = [(i, e) for i, e in enumerate(d.events)
            if e["type"] == "conversation.item.input_audio_transcription.completed"]
    assert len(done) >= len(FILES)
    for index, event in done:
        before = [ms for i, ms in marks if i <= index]
        assert before[-1] <= event["audio_start_ms"]
        assert any(ms >= event["audio_end_ms"] for i, ms in marks if i > index)
    total_ms = d.session.total // MS
    assert marks[-1][1] >= total_ms - 1000  # the trailing silence is done too


def test_processed_waits_for_the_commit_with_turn_detection_off() -> None:
    d = driver(vad=None)
    d.stream(speech("jfk-44k1-stereo.wav"))
    assert [ms for _, ms in d.processed] == [0]  # a commit will read it all
    d.send(json.dumps({"type": "input_audio_buffer.commit"}))
    assert d.transcripts()
    assert d.processed[-1][1] == d.session.total // MS


def test_segments_cut_mid_turn_name_the_segment_they_continue() -> None:
    # JFK with max_speech 3 s: "ask what you can do for your country" is cut once
    # without a pause; the piece after the cut continues the piece before it, the
    # segments after natural pauses start turns of their own.
    d = driver(VadParams(max_speech_duration_s=3.0), partials=False)
    d.stream(jfk_with_silence())
    finals = list({j.item_id: j for j in d.jobs if j.final}.values())  # spec or not
    items = [j.item_id for j in finals]
    continued = [j for j in finals if j.context_of is not None]
    assert continued
    for j in continued:
        assert j.context_of == items[items.index(j.item_id) - 1]
    assert finals[0].context_of is None
    # Each word once, in order, across the cut.
    words = " ".join(d.transcripts()).lower()
    assert words.count("country") == 2 and words.count("ask") == 2

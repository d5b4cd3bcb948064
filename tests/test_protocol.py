"""The client protocol core with no sockets: events in, frames and transcripts out."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, urlsplit

from roomscribe.audio import Frame
from roomscribe.config import UplinkSettings, VadSettings
from roomscribe.protocol import ClientCore, Partial, Ready, ServerError, connect_url, headers
from roomscribe.ring import Ring
from roomscribe.transcript import Transcript

T0 = 1_700_000_000.0


def core_with_audio(seconds: float, chunk: int = 4096) -> ClientCore:
    ring = Ring(600)
    ring.append(Frame(b"\x01\x00" * int(seconds * 16000), captured_at=T0))
    core = ClientCore(ring, model="openai/whisper-large-v3", chunk_samples=chunk)
    core.gate_open(0)  # gate off: one span from the first sample, never closed
    return core


def ev(kind: str, **fields: object) -> str:
    return json.dumps({"type": kind, **fields})


def created(core: ClientCore, now: float = 0.0) -> None:
    core.connection_made(now)
    assert core.receive(ev("session.created", session={"id": "sess_1"}), now) == [
        Ready("sess_1")]


def drain(core: ClientCore, now: float = 0.0, flush: bool = False) -> list[bytes]:
    sent = []
    while (frame := core.next_append(now, flush)) is not None:
        event = json.loads(frame)
        assert event["type"] == "input_audio_buffer.append"
        sent.append(base64.b64decode(event["audio"]))
    return sent


def test_connect_url_and_headers() -> None:
    settings = UplinkSettings(url="wss://api.together.ai/v1/realtime",
                              vad=VadSettings(send=True, min_silence_duration_ms=700))
    url = urlsplit(connect_url(settings))
    query = parse_qs(url.query)
    assert url.path == "/v1/realtime"
    assert query["model"] == ["openai/whisper-large-v3"]
    assert query["input_audio_format"] == ["pcm_s16le_16000"]
    assert query["turn_detection"] == ["server_vad"]
    assert query["min_silence_duration_ms"] == ["700"]
    assert headers("k") == {"OpenAI-Beta": "realtime=v1", "Authorization": "Bearer k"}


def test_no_audio_before_session_created_then_chunks_of_4096() -> None:
    core = core_with_audio(1.0)
    core.connection_made(0.0)
    assert core.next_append(0.0) is None
    created(core)
    chunks = drain(core)
    assert [len(c) for c in chunks] == [8192] * 3  # 16000 samples = 3 whole chunks
    assert [len(c) for c in drain(core, flush=True)] == [(16000 - 3 * 4096) * 2]


def test_transcript_times_come_from_reported_ranges_and_release_the_ring() -> None:
    core = core_with_audio(6.0)
    created(core)
    drain(core, flush=True)
    core.receive(ev("input_audio_buffer.speech_started", item_id="i1", audio_start_ms=1000), 1)
    core.receive(ev("input_audio_buffer.speech_stopped", item_id="i1", audio_end_ms=3250), 2)
    assert core.receive(ev("conversation.item.input_audio_transcription.delta",
                           item_id="i1", delta="hello"), 2) == [Partial("hello", "i1")]
    out = core.receive(ev("conversation.item.input_audio_transcription.completed",
                          item_id="i1", transcript=" Hello there. "), 3)
    assert len(out) == 1 and isinstance(out[0], Transcript)
    t = out[0]
    assert t.text == "Hello there." and t.session_id == "sess_1" and t.item_id == "i1"
    assert t.captured_start == T0 + 1.0 and t.captured_end == T0 + 3.25
    assert not t.replayed
    assert core.ring.start == 3250 * 16


def test_capture_times_become_wall_times_as_the_wall_clock_reads_when_text_arrives() -> None:
    # The ring's times are monotonic (here 0 at the first sample); between capture and
    # the answer NTP stepped the wall clock: the transcript is dated on the new clock.
    ring = Ring(600)
    ring.append(Frame(b"\x01\x00" * 6 * 16000, captured_at=100.0))
    core = ClientCore(ring, model="m")
    core.gate_open(0)
    created(core, now=101.0)
    drain(core, 101.0, flush=True)
    core.receive(ev("input_audio_buffer.speech_started", item_id="i1", audio_start_ms=1000),
                 106.0, wall=T0 + 6.0)
    core.receive(ev("input_audio_buffer.speech_stopped", item_id="i1", audio_end_ms=3250),
                 106.0, wall=T0 + 6.0)
    stepped = T0 + 3600.0 + 7.0
    [t] = core.receive(ev("conversation.item.input_audio_transcription.completed",
                          item_id="i1", transcript="Hello."), 107.0, wall=stepped)
    assert isinstance(t, Transcript)
    assert t.captured_start == T0 + 3600.0 + 1.0 and t.captured_end == T0 + 3600.0 + 3.25
    assert t.received_at == stepped


def test_replay_after_outage_resends_unsettled_audio_and_maps_times() -> None:
    core = core_with_audio(4.0)
    created(core)
    drain(core, flush=True)
    core.receive(ev("input_audio_buffer.speech_started", item_id="a", audio_start_ms=500), 1)
    core.connection_lost()  # dropped before the transcript came
    assert core.ring.start == 0  # nothing was settled, so everything is kept
    core.ring.append(Frame(b"\x02\x00" * 16000, captured_at=T0 + 4.0))  # said offline
    created(core, now=10.0)
    resent = b"".join(drain(core, 10.0, flush=True))
    assert len(resent) == 5 * 16000 * 2  # the 4 s sent before plus 1 s captured offline
    core.receive(ev("input_audio_buffer.speech_started", item_id="b", audio_start_ms=500), 11)
    core.receive(ev("input_audio_buffer.speech_stopped", item_id="b", audio_end_ms=4500), 11)
    (t,) = core.receive(ev("conversation.item.input_audio_transcription.completed",
                           item_id="b", transcript="late words"), 12)
    assert isinstance(t, Transcript)
    assert t.replayed and t.captured_start == T0 + 0.5 and t.captured_end == T0 + 4.5


def test_second_session_maps_times_from_its_own_base() -> None:
    core = core_with_audio(3.0)
    created(core)
    drain(core, flush=True)
    core.receive(ev("input_audio_buffer.speech_stopped", item_id="x", audio_end_ms=2000), 1)
    core.receive(ev("conversation.item.input_audio_transcription.completed",
                    item_id="x", transcript="one"), 1)
    core.connection_lost()
    created(core, now=5.0)  # new session: its sample 0 is ring sample 32000
    core.receive(ev("input_audio_buffer.speech_stopped", item_id="y", audio_end_ms=500), 6)
    (t,) = core.receive(ev("conversation.item.input_audio_transcription.completed",
                           item_id="y", transcript="two"), 6)
    assert isinstance(t, Transcript) and t.captured_end == T0 + 2.5


def test_server_without_ranges_releases_conservatively() -> None:
    core = core_with_audio(10.0)
    created(core)
    drain(core, flush=True)
    core.receive(ev("conversation.item.input_audio_transcription.delta", delta="ask"), 1)
    (t,) = core.receive(ev("conversation.item.input_audio_transcription.completed",
                           transcript="ask not"), 2)
    assert isinstance(t, Transcript)
    # sent 10 s; released 10 - (0.5 silence + 0.25 pad + 1 margin) = 8.25 s
    assert core.ring.start == int(8.25 * 16000)


def test_silence_settles_after_settle_s_but_not_while_a_segment_is_open() -> None:
    core = core_with_audio(2.0)
    core.settle_s = 20.0
    created(core)
    drain(core, now=0.0, flush=True)
    core.tick(10.0)
    assert core.ring.start == 0
    core.tick(25.0)
    assert core.ring.start == 32000
    core.ring.append(Frame(b"\x00\x00" * 16000, captured_at=T0 + 2))
    drain(core, now=30.0, flush=True)
    core.receive(ev("input_audio_buffer.speech_started", item_id="s", audio_start_ms=2100), 31)
    core.tick(60.0)
    assert core.ring.start == 2100 * 16  # silence before the open segment only


def test_errors_both_shapes_malformed_and_unknown_events() -> None:
    core = core_with_audio(1.0)
    created(core)
    assert core.receive(ev("error", error={"code": "invalid_api_key", "message": "bad"}), 1) \
        == [ServerError("invalid_api_key", "bad")]
    assert core.receive(ev("error", message="overloaded"), 1) == [ServerError("error",
                                                                              "overloaded")]
    assert core.receive("not json{", 1)[0].malformed
    assert core.receive(json.dumps([1, 2]), 1)[0].malformed
    bad = core.receive(ev("input_audio_buffer.speech_started", audio_start_ms="x"), 1)
    assert bad[0].malformed
    assert core.receive(ev("conversation.item.created", item={}), 1) == []
    failed = core.receive(ev("conversation.item.input_audio_transcription.failed",
                             item_id="q", error={"message": "boom", "code": "asr"}), 1)
    assert failed == [ServerError("asr", "boom")]


def test_manual_commit_covers_everything_sent() -> None:
    core = core_with_audio(2.0)
    created(core)
    drain(core, flush=True)
    json.loads(core.commit())
    core.receive(ev("input_audio_buffer.committed", item_id="m", previous_item_id=None), 1)
    assert core.segment_open
    (t,) = core.receive(ev("conversation.item.input_audio_transcription.completed",
                           item_id="m", transcript="all of it"), 2)
    assert isinstance(t, Transcript) and t.captured_end == T0 + 2.0
    assert not core.segment_open and core.ring.start == 32000


def test_gated_spans_skip_silence_and_map_times_across_the_gap() -> None:
    ring = Ring(600)
    core = ClientCore(ring, model="m", chunk_samples=4096, keep_samples=8000,
                      idle_disconnect_s=30)
    # 10 s captured; the gate sent [1 s, 3 s) and [6 s, 8 s), skipping 3..6 s
    ring.append(Frame(b"\x01\x00" * 160000, captured_at=T0))
    core.gate_open(16000)
    core.gate_close(48000)
    core.gate_open(96000)
    core.gate_close(128000)
    created(core)
    sent = b"".join(drain(core))
    assert len(sent) == 4 * 16000 * 2  # 4 s sent, not 10
    assert core.commit_due() and core.commit_due() and not core.commit_due()
    # the server's 2.5 s is ring 6.5 s: its timeline has no gap
    core.receive(ev("input_audio_buffer.speech_started", item_id="g", audio_start_ms=2500), 1)
    core.receive(ev("input_audio_buffer.committed", item_id="g",
                    audio_start_ms=2500, audio_end_ms=4000), 1)
    (t,) = core.receive(ev("conversation.item.input_audio_transcription.completed",
                           item_id="g", transcript="after the gap"), 2)
    assert isinstance(t, Transcript)
    assert t.captured_start == T0 + 6.5 and t.captured_end == T0 + 8.0
    # everything sent is settled, the spans are done: silence goes, less the pre-roll
    core.tick(3)
    assert ring.start == 160000 - 8000
    assert core.wants_connection()
    core.gate_idle()
    assert not core.wants_connection()
    core.gate_open(158000)
    assert core.wants_connection()


def test_span_end_on_a_run_boundary_stays_in_the_earlier_run() -> None:
    ring = Ring(600)
    core = ClientCore(ring, model="m", chunk_samples=16000)
    ring.append(Frame(b"\x01\x00" * 64000, captured_at=T0))
    core.gate_open(0)
    core.gate_close(16000)
    core.gate_open(32000)
    created(core)
    drain(core, flush=True)
    core.receive(ev("input_audio_buffer.speech_stopped", item_id="b", audio_end_ms=1000), 1)
    (t,) = core.receive(ev("conversation.item.input_audio_transcription.completed",
                           item_id="b", transcript="first"), 1)
    assert isinstance(t, Transcript) and t.captured_end == T0 + 1.0


def test_idle_with_a_closed_span_unsent_waits_for_its_transcript() -> None:
    # A privacy mute mid-sentence: the gate closes the span and says idle at once;
    # the socket stays until the last words are sent, committed and transcribed.
    ring = Ring(600)
    core = ClientCore(ring, model="m", chunk_samples=4096)
    ring.append(Frame(b"\x01\x00" * 32000, captured_at=T0))
    core.gate_open(0)
    core.gate_close(32000)
    core.gate_idle()
    assert core.wants_connection()
    created(core)
    drain(core)
    assert core.wants_connection() and core.commit_due()
    core.commit()
    assert core.wants_connection()
    core.receive(ev("input_audio_buffer.committed", item_id="c",
                    audio_start_ms=0, audio_end_ms=2000), 1)
    (t,) = core.receive(ev("conversation.item.input_audio_transcription.completed",
                           item_id="c", transcript="last words"), 2)
    assert isinstance(t, Transcript) and t.captured_end == T0 + 2.0
    assert not core.wants_connection()


def test_nothing_to_send_before_the_gate_first_opens() -> None:
    core = ClientCore(Ring(60), model="m")
    assert not core.wants_connection()  # a silent room needs no socket
    core.gate_open(0)
    assert core.wants_connection()


# -- flow control and the answer to a commit ----------------------------------------


def sent_samples(frames: list[bytes]) -> int:
    return sum(len(f) for f in frames) // 2


def test_a_backlog_goes_no_further_than_the_window_ahead_of_processed() -> None:
    core = core_with_audio(120.0)
    core.window_samples = 10 * 16000
    created(core)
    assert sent_samples(drain(core)) == 10 * 16000  # the window, then it waits
    core.receive(ev("input_audio_buffer.processed", processed_ms=4000), 1.0)
    assert core.server_paces is True
    assert core.ring.start == 4 * 16000  # what the server is done with is settled
    assert sent_samples(drain(core, 1.0)) == 4 * 16000  # exactly the room it made
    core.receive(ev("input_audio_buffer.processed", processed_ms=9000), 2.0)
    assert sent_samples(drain(core, 2.0)) == 5 * 16000
    assert core.window_full


def test_a_server_that_never_reports_progress_is_not_waited_for() -> None:
    core = core_with_audio(60.0)
    core.window_samples = 10 * 16000
    created(core)
    assert sent_samples(drain(core, 0.0)) == 10 * 16000
    assert drain(core, 4.0) == []  # still probing
    assert sent_samples(drain(core, 5.0, flush=True)) == 50 * 16000  # it does not pace
    assert core.server_paces is False
    # Nor is its silence a stalled window: a commit would cut the sentence being said
    # (bench/soak.py saw one every window_stall_s for the rest of the connection).
    assert not core.window_full
    assert not any(core.commit_due(5.0 + s) for s in (15.0, 30.0, 300.0))


def test_whether_a_server_paces_is_known_per_endpoint_not_per_daemon() -> None:
    core = core_with_audio(60.0)
    created(core)
    core.receive(ev("input_audio_buffer.processed", processed_ms=0), 0.0)
    assert core.server_paces is True
    # Another endpoint (the uplink passes what it learned of each): probed afresh.
    core.connection_made(1.0)
    assert core.server_paces is None
    core.connection_made(2.0, server_paces=False)
    assert core.server_paces is False


def test_a_window_stalled_without_progress_commits_once_per_stall() -> None:
    """A server holding one long open segment (turn detection off) would never move
    its watermark: a commit makes it finish that segment."""
    core = core_with_audio(60.0)
    core.window_samples = 10 * 16000
    created(core)
    core.receive(ev("input_audio_buffer.processed", processed_ms=0), 0.0)
    drain(core, 0.0)
    drain(core, 1.0)
    assert not core.commit_due(10.0)
    assert core.commit_due(16.0)
    core.commit()
    assert not core.commit_due(40.0)  # one commit at a time


def test_the_last_commit_is_answered_by_its_own_range_not_by_any_event() -> None:
    core = core_with_audio(10.0)
    core.window_samples = 60 * 16000
    created(core)
    drain(core, flush=True)
    core.commit()
    # An earlier segment's events are not the answer to this commit.
    core.receive(ev("input_audio_buffer.speech_started", item_id="i1", audio_start_ms=0), 1)
    core.receive(ev("input_audio_buffer.committed", item_id="i1", audio_start_ms=0,
                    audio_end_ms=4000), 1)
    assert not core.commit_answered
    core.receive(ev("conversation.item.input_audio_transcription.completed", item_id="i1",
                    transcript="first", audio_start_ms=0, audio_end_ms=4000), 1)
    assert not core.commit_answered
    core.receive(ev("error", error={"code": "rate_limited", "message": "slow down"}), 1)
    assert not core.commit_answered
    # The watermark reaching the commit is.
    core.receive(ev("input_audio_buffer.processed", processed_ms=10000), 2)
    assert core.commit_answered and core.settled


def test_an_empty_commit_is_answered_by_commit_empty() -> None:
    core = core_with_audio(1.0)
    created(core)
    drain(core, flush=True)
    core.commit()
    out = core.receive(ev("error", error={"code": "input_audio_buffer_commit_empty",
                                          "message": "nothing to commit"}), 1)
    assert out == [] and core.commit_answered


def test_a_server_without_ranges_answers_a_commit_with_its_next_completed() -> None:
    core = core_with_audio(3.0)
    created(core)
    drain(core, flush=True)
    core.commit()
    core.receive(ev("conversation.item.input_audio_transcription.delta", delta="hi"), 1)
    core.receive(ev("conversation.item.input_audio_transcription.completed",
                    transcript="hi there"), 1)
    assert core.commit_answered


def test_stopping_with_unsent_audio_counts_it_as_dropped() -> None:
    core = core_with_audio(100.0)
    core.window_samples = 10 * 16000
    created(core)
    drain(core)
    assert core.untranscribed_s == 100.0
    assert core.abandon() == 100.0
    assert core.ring.dropped_samples == 100 * 16000


def test_a_turn_that_failed_is_settled_a_session_that_failed_is_not() -> None:
    """Together's `failed`: with event_type one turn is lost and the session goes on;
    without, the session is over and its audio must go to the next connection."""
    core = core_with_audio(10.0)
    created(core)
    drain(core, flush=True)
    fatal = core.receive(ev("conversation.item.input_audio_transcription.failed",
                            error={"code": "internal", "message": "worker died"}), 1)
    assert fatal == [ServerError("internal", "worker died", fatal=True)]
    assert core.ring.start == 0  # nothing settled: it is replayed
    turn = core.receive(ev("conversation.item.input_audio_transcription.failed",
                           event_type="completed", item_id="i1",
                           error={"code": "bad_audio", "message": "cannot decode"}), 2)
    assert turn == [ServerError("bad_audio", "cannot decode")]

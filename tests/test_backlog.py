"""A backlog of minutes through the real server (tiny.en), as after a long outage.

The microphone is a WAV read unpaced (`file_realtime = false`), so minutes of speech
are captured at once and wait in the ring, exactly as audio captured during an outage
does; then the daemon is stopped by the end of the file with all of it still to send.
What a user checks: every utterance arrives once, in order, stamped with when it was
said; no connection dies of keepalive while the server is busy; and a stop that
cannot wait for the whole backlog says how much it left, and exits non-zero.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest

from conftest import Broker, normal_words
from mqttkit import Subscriber, wait
from stack import CLIPS, Room, daemon_config, make_room, start_daemon, start_server

pytestmark = pytest.mark.server

# Each round names the four clips in another order, and no clip follows itself.
ORDERS = [(0, 1, 2, 3), (1, 3, 0, 2), (3, 0, 2, 1), (2, 3, 1, 0), (1, 2, 0, 3),
          (0, 2, 3, 1)]


def iso(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def backlog_room(tmp: Path, rounds: int) -> Room:
    clips = [CLIPS[i] for order in ORDERS[:rounds] for i in order]
    assert all(a != b for a, b in itertools.pairwise(clips))
    return make_room(tmp / "backlog.wav", clips, gap_s=2.0, tail_s=1.0)


def coverage(reference: str, text: str) -> float:
    ref, got = normal_words(reference), set(normal_words(text))
    return sum(w in got for w in ref) / len(ref)


def by_utterance(room: Room, transcripts: list[dict[str, Any]]) -> list[list[str]]:
    """Each transcript's text under the utterance its capture times fall in. The
    clock's origin is the first transcript, which must be the first utterance's."""
    origin = iso(transcripts[0]["start"]) - room.spans[0][0]
    heard: list[list[str]] = [[] for _ in room.spans]
    for t in transcripts:
        start, end = iso(t["start"]) - origin, iso(t["end"]) - origin
        # Padding reaches at most ~0.5 s into the 2 s gaps around an utterance.
        owners = [i for i, (lo, hi) in enumerate(room.spans)
                  if start < hi + 0.8 and end > lo - 0.8]
        assert len(owners) == 1, f"{t['text']!r} at {start:.1f}-{end:.1f} s: {owners}"
        heard[owners[0]].append(t["text"])
    return heard


def run_backlog(tmp: Path, broker: Broker, rounds: int, final_timeout_s: float
                ) -> tuple[Room, Subscriber, int | None, str]:
    server, port = start_server(tmp)
    room = backlog_room(tmp, rounds)
    sub = Subscriber(broker.port)
    config = daemon_config(tmp, server_port=port, broker_port=broker.port, wav=room.path,
                           realtime=False, extra="[gate]\nmode = \"off\"\n")
    text = re.sub(r"final_timeout_s = \d+", f"final_timeout_s = {final_timeout_s}",
                  config.read_text())
    config.write_text(text.replace("[uplink]\n", "[uplink]\nwindow_s = 20\n", 1))
    daemon = start_daemon(tmp, config)
    try:
        status = daemon.wait(final_timeout_s + 60)
    finally:
        daemon.stop()
        server.stop()
    wait(lambda: sub.on("availability") and
         sub.on("availability")[-1].payload == b"offline", timeout_s=10,
         what="the daemon's offline")
    sub.close()
    return room, sub, status, daemon.output()


def test_a_backlog_of_minutes_drains_every_utterance_once_in_order(
        tmp_path: Path, broker: Broker) -> None:
    room, sub, status, out = run_backlog(tmp_path, broker, rounds=6, final_timeout_s=900)
    assert status == 0, out[-3000:]
    assert "Traceback" not in out and "keepalive" not in out, out[-3000:]
    assert "reconnecting" not in out, out[-3000:]  # one connection served it all
    transcripts = sub.transcripts()
    assert len({t["id"] for t in transcripts}) == len(transcripts)
    starts = [iso(t["start"]) for t in transcripts]
    assert starts == sorted(starts)
    for a, b in itertools.pairwise(transcripts):  # nothing transcribed twice
        assert iso(a["end"]) <= iso(b["start"]) + 0.05, (a["text"], b["text"])
    heard = by_utterance(room, transcripts)
    for ref, texts in zip(room.references, heard, strict=True):
        said, got = normal_words(ref), normal_words(" ".join(texts))
        assert coverage(ref, " ".join(texts)) >= 0.6, (ref, texts)
        assert len(got) <= 1.5 * len(said) + 2, (ref, texts)  # not twice
    assert len(room.spans) == 24 and room.spans[-1][1] > 150  # minutes of backlog


def test_a_stop_with_a_backlog_says_what_was_not_transcribed_and_fails(
        tmp_path: Path, broker: Broker) -> None:
    room, sub, status, out = run_backlog(tmp_path, broker, rounds=4, final_timeout_s=3)
    assert status == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    warnings = [line for line in out.splitlines()
                if "WARNING" in line and "not transcribed" in line]
    assert len(warnings) == 1, out[-3000:]
    lost_s = float(warnings[0].split("stopping with ")[1].split(" s ")[0])
    total_s = room.spans[-1][1] + 3.0
    assert 0 < lost_s <= total_s
    # What did get through is accounted for: transcribed + lost covers the recording.
    state = json.loads(sub.on("state")[-1].payload)
    assert state["dropped_s"] >= lost_s - 0.1
    transcripts = sub.transcripts()
    if transcripts:
        last_end = iso(transcripts[-1]["end"]) - iso(transcripts[0]["start"])
        assert last_end + lost_s >= total_s - room.spans[0][0] - 5.0

"""The uplink against the real self-hosted server (a subprocess, as users run it):
real speech in, the reference words out, once, in order, with capture times; and the
same when the server dies mid-utterance or the network black-holes."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection

from conftest import assert_heard, free_port, reference_texts
from faultproxy import FaultProxy
from roomscribe.audio import Frame
from roomscribe.config import Settings, UplinkSettings
from roomscribe.doctor import check_server
from roomscribe.protocol import ClientCore
from roomscribe.ring import Ring
from roomscribe.transcript import Transcript
from roomscribe.uplink import Uplink
from stack import CLIPS, read_mono_16k, start_server
from test_faults import Relay
from timing import scaled

pytestmark = pytest.mark.server
# Capture times are on the monotonic clock (as capture stamps them); transcripts come
# back on the wall clock, so the audio's start is T0 there.
MONO_T0 = time.monotonic()
T0 = MONO_T0 + time.time() - time.monotonic()
BLOCK = 1024  # samples per captured frame (64 ms)


def room_pcm(clips: list[str], gap_s: float = 2.0) -> tuple[np.ndarray, list[tuple[float, float]]]:
    parts, spans, t = [np.zeros(int(gap_s * 16000))], [], gap_s
    for clip in clips:
        speech = read_mono_16k(clip)
        parts += [speech, np.zeros(int(gap_s * 16000))]
        spans.append((t, t + len(speech) / 16000))
        t += len(speech) / 16000 + gap_s
    return np.concatenate(parts).astype(np.int16), spans


def settings(port: int, **kw: object) -> UplinkSettings:
    return UplinkSettings(url=f"ws://127.0.0.1:{port}/v1/realtime", final_timeout_s=scaled(30),
                          backoff_max_s=1.0, connect_timeout_s=scaled(5), ping_interval_s=1,
                          ping_timeout_s=2, **kw)  # type: ignore[arg-type]


async def stream(uplink: Uplink, ring: Ring, pcm: np.ndarray, speed: float,
                 faults: dict[float, object] | None = None) -> None:
    """Capture at `speed` x real time, calling each fault at its audio time."""
    faults = dict(faults or {})
    task = asyncio.create_task(uplink.run())
    for i in range(0, len(pcm), BLOCK):
        t = i / 16000
        for at in [k for k in faults if k <= t]:
            fault = faults.pop(at)
            await asyncio.to_thread(fault)  # type: ignore[arg-type]
        ring.append(Frame(pcm[i:i + BLOCK].tobytes(), captured_at=MONO_T0 + t))
        uplink.audio_arrived()
        await asyncio.sleep(BLOCK / 16000 / speed)
    uplink.stop()
    await asyncio.wait_for(task, 90)


def run(port: int, pcm: np.ndarray, speed: float = 4.0,
        faults: dict[float, object] | None = None, window_s: float = 30.0,
        **kw: object) -> list[Transcript]:
    got: list[Transcript] = []
    ring = Ring(600)
    core = ClientCore(ring, model="openai/whisper-large-v3",
                      window_samples=int(window_s * 16000))  # as app.py sets it
    core.gate_open(0)  # gate off: send everything
    uplink = Uplink(settings(port, **kw), core, "", on_transcript=got.append)
    asyncio.run(stream(uplink, ring, pcm, speed, faults))
    return got


def check(got: list[Transcript], clips: list[str], spans: list[tuple[float, float]]) -> None:
    refs = reference_texts()
    assert_heard([t.text for t in got], [refs[c] for c in clips])
    # capture times: in order, the first transcript where the first clip was said
    starts = [t.captured_start - T0 for t in got]
    assert starts == sorted(starts)
    first = got[0]
    assert spans[0][0] - 0.6 <= first.captured_start - T0 <= spans[0][0] + 0.5
    assert all(t.captured_end > t.captured_start for t in got)
    last_start, last_end = spans[-1]
    assert last_start < got[-1].captured_end - T0 <= last_end + 0.6


def test_real_speech_through_the_uplink(tmp_path: Path) -> None:
    server, port = start_server(tmp_path)
    try:
        pcm, spans = room_pcm(CLIPS)
        got = run(port, pcm)
    finally:
        server.stop()
    check(got, CLIPS, spans)
    assert not any(t.replayed for t in got)
    assert len({t.item_id for t in got}) == len(got)


def test_server_killed_mid_utterance_and_back(tmp_path: Path) -> None:
    port = free_port()
    server, _ = start_server(tmp_path, port)
    clips = CLIPS[:1]
    pcm, spans = room_pcm(clips)
    restarted: list[object] = []

    def kill() -> None:
        server.kill()

    def restart() -> None:
        restarted.append(start_server(tmp_path, port)[0])

    try:
        # killed 4 s into the JFK clip, back 8 s later (audio time; 4x speed)
        got = run(port, pcm, faults={spans[0][0] + 4: kill, spans[0][0] + 12: restart},
                  speed=1.0)
    finally:
        server.stop()
        for p in restarted:
            p.stop()  # type: ignore[attr-defined]
    check(got, clips, spans)
    assert any(t.replayed for t in got)


def test_black_holed_server_is_detected_and_replayed(tmp_path: Path) -> None:
    server, port = start_server(tmp_path)
    proxy = FaultProxy(port)
    clips = CLIPS[:1]
    pcm, spans = room_pcm(clips, gap_s=2.0)
    started = time.monotonic()
    try:
        got = run(proxy.port, pcm, speed=1.0,
                  faults={spans[0][0] + 3: proxy.blackhole, spans[0][0] + 8: proxy.heal})
    finally:
        proxy.close()
        server.stop()
    check(got, clips, spans)
    assert proxy.connections >= 2  # the dead socket was noticed and replaced
    assert time.monotonic() - started < 80


class WithoutWatermark(Relay):
    """The real server, as Together's older servers speak: no
    `input_audio_buffer.processed` (the one difference, and the point)."""

    async def down(self, conn: ServerConnection, message: str | bytes) -> None:
        if json.loads(message).get("type") != "input_audio_buffer.processed":
            await conn.send(message)


def test_failing_over_to_a_server_without_a_watermark_keeps_sending(tmp_path: Path) -> None:
    """Pacing is learned per endpoint: the first (ours) sends `processed`, the second
    does not. Kept from the first, the daemon sent the second one window (20 s here)
    and then waited for a watermark that never came: the last clip was never heard."""
    server, port = start_server(tmp_path)
    proxy = FaultProxy(port)
    legacy = WithoutWatermark(port)
    pcm, spans = room_pcm(CLIPS + CLIPS)

    def primary_gone() -> None:
        proxy.refuse()
        proxy.cut()

    try:
        got = run(proxy.port, pcm, faults={spans[len(CLIPS) - 1][1] + 1: primary_gone},
                  urls=(f"ws://127.0.0.1:{proxy.port}/v1/realtime",
                        f"ws://127.0.0.1:{legacy.port}/v1/realtime"),
                  window_s=20, failback_probe_s=600)
    finally:
        legacy.close()
        proxy.close()
        server.stop()
    check(got, CLIPS + CLIPS, spans)
    switch = T0 + spans[len(CLIPS) - 1][1] + 1
    assert any(t.captured_start > switch for t in got)  # the second pass was heard


class Corrupting(Relay):
    """Breaks the base64 of the appends that carry [from_s, to_s) of the first
    session's audio, as a broken proxy might (TCP and TLS never do): the server
    answers each with `invalid_base64` and has not that audio."""

    def __init__(self, target_port: int, from_s: float, to_s: float) -> None:
        super().__init__(target_port)
        self.span = (from_s, to_s)
        self.sent_s = 0.0
        self.corrupted = 0

    def up(self, message: str | bytes) -> str | bytes:
        event = json.loads(message) if self.sessions == 1 else {}
        if event.get("type") != "input_audio_buffer.append":
            return message
        start = self.sent_s
        self.sent_s += len(base64.b64decode(event["audio"])) / 32000
        if not self.span[0] <= start < self.span[1]:
            return message
        self.corrupted += 1
        event["audio"] = "!" + event["audio"][1:]
        return json.dumps(event)


def test_audio_the_server_could_not_read_is_sent_again(tmp_path: Path) -> None:
    """A second of JFK's sentence is lost on the way. The server says it could not
    read those frames; going on, the words in them were lost and every time after
    them was early by a second. A new connection replays them."""
    server, port = start_server(tmp_path)
    clips = CLIPS[:1]
    pcm, spans = room_pcm(clips)
    relay = Corrupting(port, spans[0][0] + 5, spans[0][0] + 6)
    try:
        got = run(relay.port, pcm)
    finally:
        relay.close()
        server.stop()
    assert relay.corrupted  # the fault happened
    check(got, clips, spans)
    # every word (going on lost "What your country"), and the sentence ends when it
    # was said (going on it ended 0.8 s early)
    assert_heard([t.text for t in got], [reference_texts()[clips[0]]], min_ratio=0.95)
    assert abs(got[-1].captured_end - T0 - spans[0][1]) <= 0.5
    assert relay.sessions == 2


def test_the_connection_check_says_when_a_server_refuses_the_vad_settings(tmp_path: Path) -> None:
    server, port = start_server(tmp_path)
    proxy = FaultProxy(port)
    proxy.refuse_requests("max_speech_duration_s=", 400, json.dumps({"error": {
        "code": "invalid_value", "message": "max_speech_duration_s must be at most 10"}}))
    try:
        direct = asyncio.run(check_server(Settings(uplink=settings(port))))
        refused = asyncio.run(check_server(Settings(uplink=settings(proxy.port))))
    finally:
        proxy.close()
        server.stop()
    assert direct.ok, direct.line()
    assert not refused.ok and "HTTP 400 invalid_value" in refused.detail, refused.line()
    assert "[uplink.vad]" in refused.fix and "send = false" in refused.fix

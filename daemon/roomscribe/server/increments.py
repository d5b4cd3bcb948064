"""Deltas as OpenAI's clients read them: increments to append, never revised.

Together's protocol (and the daemon) takes each delta as the whole hypothesis so far,
replacing the one before. OpenAI's clients append them: its SDK examples, LiveKit's
OpenAI plugin (`current_text += delta`) and the like. Sent whole hypotheses, such a
client shows "And so my And so my fellow Americans ...". So a session whose client
connected the OpenAI way (see `handshake.check`) gets increments instead.

An increment cannot take back a word, and Whisper's hypotheses of a growing segment
revise their last words (a word cut off by the end of the audio so far comes out as
another word). So a word goes out once two hypotheses in a row agree on it and on
every word before it (the *local agreement* of streaming Whisper decoders, e.g.
whisper_streaming's LocalAgreement-2), compared without case and punctuation. A
later hypothesis that reads an already sent word differently sends nothing until it
agrees again on what follows; the item's `completed` carries its whole text either way.
Pure logic: hypotheses in, text to send out.
"""

from __future__ import annotations

import re

_PLAIN = re.compile(r"[^\w']+")


def _key(word: str) -> str:
    return _PLAIN.sub("", word.lower())


class Increments:
    """The increments of one session's open item. Memory: two hypotheses of one item."""

    def __init__(self) -> None:
        self._item = ""
        self._last: list[str] = []  # the previous hypothesis, in words
        self._sent: list[str] = []  # the words of the item already sent, as keys

    def next(self, item: str, text: str) -> str:
        """What to send for `text`, the item's newest hypothesis: "" for nothing."""
        words = text.split()
        if item != self._item:
            self._item, self._last, self._sent = item, [], []
        agreed = 0
        for a, b in zip(self._last, words, strict=False):
            if _key(a) != _key(b):
                break
            agreed += 1
        self._last = words
        done = len(self._sent)
        if agreed <= done or [_key(w) for w in words[:done]] != self._sent:
            return ""  # nothing new agreed, or the text moved away from what was sent
        self._sent += [_key(w) for w in words[done:agreed]]
        new = " ".join(words[done:agreed])
        return " " + new if done else new

"""The model behind the server: short-window decodes hear the words, loops are caught,
long finals and non-speech are handled as a room microphone needs."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import NO_SERVER_EXTRA, reference_texts

pytest.importorskip("faster_whisper", reason=NO_SERVER_EXTRA)

from roomscribe.server.transcriber import Decoded, looped
from server_support import RATE, coverage, normalise, silence, speech, transcriber

pytestmark = pytest.mark.server


def test_partial_decode_hears_the_words_so_far() -> None:
    first_3s = speech("jfk-44k1-stereo.wav")[: 3 * RATE]
    text = transcriber().transcribe(first_3s, final=False)
    assert coverage("and so my fellow Americans", text) >= 0.6, text


def test_a_looping_decode_is_recognised() -> None:
    assert looped("in 1813 " * 12)
    assert not looped("And so, my fellow Americans, ask not what your country can do.")
    assert not looped("")


def test_a_final_longer_than_one_window_is_transcribed_whole() -> None:
    """A manual commit may hold minutes: past 27 s it goes through faster-whisper's
    long-form path rather than the short window. Four different recordings, so that
    the text does not compress like a loop: one clip said three times did, and sent
    faster-whisper to its random temperature fallback (an empty final in one CI run)."""
    names = ["jfk-44k1-stereo.wav", "ami-es2011a-16k.wav", "lj002-0020-22k05.wav",
             "lj002-0035-22k05.wav", "jfk-44k1-stereo.wav"]
    pieces = [p for name in names for p in (speech(name), silence(1.0))]
    long = np.concatenate(pieces[:-1])
    assert len(long) > 30 * RATE
    text = transcriber().transcribe(long, final=True)
    texts = reference_texts()
    said = " ".join(texts[name] for name in names)
    assert coverage(said, text) >= 0.8, text
    assert "abigail" in text.lower(), text
    # The second window: the last words of the last clip are there too.
    assert normalise(text)[-3:] == ["for", "your", "country"], text


@pytest.mark.parametrize("sound", ["white noise", "mains hum", "clicks", "silence"])
def test_a_final_of_a_room_noise_is_empty(sound: str) -> None:
    """Whisper is known to write "Thank you." over noise; a room mic must not publish it."""
    n = 2 * RATE
    t = np.arange(n)
    pcm = {"white noise": np.random.default_rng(0).normal(0, 3000, n),
           "mains hum": 3000 * np.sin(2 * np.pi * 50 * t / RATE),
           "clicks": np.where(t % 4000 < 40, 8000, 0),
           "silence": np.zeros(n)}[sound]
    assert transcriber().transcribe(pcm.astype(np.int16), final=True) == ""


def test_a_final_that_loops_is_decoded_again_the_long_way(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The fault is the point: make the short window loop, as tiny.en sometimes does."""
    model = transcriber()
    monkeypatch.setattr(model, "_window", lambda *args: Decoded("in 1813 " * 12, -0.2))
    audio = speech("lj002-0020-22k05.wav")
    final = model.transcribe(audio, final=True)
    assert not looped(final)
    assert coverage("In eighteen thirteen.", final) >= 0.8, final
    assert model.transcribe(audio, final=False) == ""  # a partial just waits for the next

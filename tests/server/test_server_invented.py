"""What Whisper says over sound that is not speech: dropped; what people say: kept."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from server_support import RATE, coverage, recording, silence, speech, transcriber

pytest.importorskip("faster_whisper")

from roomscribe.server import invented
from roomscribe.server.invented import speech_heard, strip_invented

pytestmark = pytest.mark.server
JFK_SAID = ("And so, my fellow Americans, ask not what your country can do for you; "
            "ask what you can do for your country.")


def fan_noise(seconds: float, seed: int = 1) -> np.ndarray:
    """Broadband noise with a 100 Hz hum, at room level (about -35 dBFS)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    noise = rng.normal(0, 400, n) + 300 * np.sin(2 * np.pi * 100 * t)
    return np.clip(noise, -32768, 32767).astype(np.int16)


def said_over(said: np.ndarray, noise: Callable[[float], np.ndarray], snr_db: float = 10,
              pad_s: float = 0.25) -> np.ndarray:
    """`said` between `pad_s` of silence each side, with `noise(seconds)` `snr_db` under
    the level of what was said, as a room segment holds it."""
    level = float(np.sqrt(np.mean(said.astype(np.float32) ** 2)))
    pcm = np.concatenate([silence(pad_s), said, silence(pad_s)]).astype(np.float32)
    bed = noise(len(pcm) / RATE).astype(np.float32)
    pcm += bed * (level / float(np.sqrt(np.mean(bed ** 2)))) * 10 ** (-snr_db / 20)
    return np.clip(np.rint(pcm), -32768, 32767).astype(np.int16)


@pytest.mark.parametrize("text", ["Thank you.", "Thanks for watching!", "you",
                                  "(upbeat music)", "♪ ♪", "[BLANK_AUDIO]"])
def test_silence_phrases_over_noise_are_dropped(text: str) -> None:
    assert strip_invented(text, fan_noise(2.0)) == ""


def meeting_you() -> np.ndarray:
    """"You", said at 3.36 s of the meeting recording (the next word starts at 3.56 s),
    alone between quarter-second pads of silence, as a room segment would be."""
    you = speech("ami-es2011a-16k.wav")[int(3.2 * RATE):int(3.56 * RATE)]
    return np.concatenate([silence(0.25), you, silence(0.25)])


def test_a_silence_phrase_someone_said_is_kept() -> None:
    padded = meeting_you()
    assert 0.12 <= speech_heard(padded).speech_s < 0.3
    assert strip_invented("You.", padded) == "You."


def test_a_silence_phrase_whisper_doubts_is_dropped() -> None:
    """The same "you", cut from the middle of a sentence: tiny.en writes its silence
    phrase "Thank you." for it, giving 0.66 that there is no speech (log-probability
    -0.86), as it wrote "Thank you very much. Thank you very much." over babble through
    a wall that Silero heard for 0.9 s (0.65, -0.90). Nobody said "Thank you."."""
    assert transcriber().transcribe(meeting_you(), final=True) == ""


@pytest.mark.parametrize("room", ["quiet", "fan at 10 dB SNR"])
def test_a_whole_thank_you_said_in_a_room_is_kept(room: str) -> None:
    """A person's "Thank you." (a studio prompt), as a room segment holds it: Whisper is
    sure it is speech (no-speech probability 0.05-0.25 for two such prompts in five
    rooms, bench/silence_phrases.py)."""
    said = recording("allison-thank-you-16k.wav")
    audio = said_over(said, fan_noise) if room != "quiet" else \
        np.concatenate([silence(0.25), said, silence(0.25)])
    assert transcriber().transcribe(audio, final=True) == "Thank you."


def test_words_over_a_sliver_of_speech_are_dropped() -> None:
    # 150 ms cut from inside a word of the meeting recording: Silero hears two 32 ms
    # windows of speech at most. tiny.en wrote "We are here." and "We got it right."
    # over such slivers of babble (bench/real_speech.py).
    sliver = speech("ami-es2011a-16k.wav")[int(2.25 * RATE):int(2.4 * RATE)]
    padded = np.concatenate([silence(0.5), sliver, silence(0.5)])
    said, top, _mean = speech_heard(padded)
    assert said < 0.07 and top >= 0.3
    assert strip_invented("We got it right.", padded) == ""


def test_silence_phrases_in_a_row_are_one_silence_phrase() -> None:
    # 200 ms of the meeting recording: three windows of speech, less than a real "you".
    short = speech("ami-es2011a-16k.wav")[int(2.2 * RATE):int(2.4 * RATE)]
    padded = np.concatenate([silence(0.5), short, silence(0.5)])
    assert 0.07 <= speech_heard(padded).speech_s < 0.12
    assert strip_invented("Thank you. Thank you very much.", padded) == ""
    assert strip_invented("Thank you very much.", padded) == ""
    assert strip_invented("Thank you, Anna.", padded) == "Thank you, Anna."
    # Over 1.5 s of real speech the same words stay.
    said = speech("lj002-0020-22k05.wav")
    assert strip_invented("Thank you. Thank you very much.", said) != ""


def test_sound_descriptions_are_removed_from_real_words() -> None:
    jfk = speech("jfk-44k1-stereo.wav")
    said = ("And so, my fellow Americans, ask not what your country can do for you; "
            "ask what you can do for your country.")
    assert strip_invented(f"(applause) {said} [Music]", jfk) == said


def test_the_model_says_nothing_over_room_noise() -> None:
    # A manual commit (no VAD) over 3 s of fan noise, then over near-silence.
    model = transcriber()
    assert model.transcribe(fan_noise(3.0), final=True) == ""
    assert model.transcribe(fan_noise(3.0, seed=2) // 40, final=True) == ""


def test_few_words_over_long_babble_and_loops_are_dropped() -> None:
    # What tiny.en said over reversed-speech babble (bench/real_speech.py): a phrase
    # over many seconds, or one phrase again and again.
    babble = fan_noise(9.0) * 8  # loud enough for Silero to hear something
    padded = np.concatenate([babble, speech("jfk-44k1-stereo.wav")[:RATE]])
    assert strip_invented("I don't know what's up.", padded) == ""
    jfk = speech("jfk-44k1-stereo.wav")
    assert strip_invented("No, no, no, no, no, no.", jfk) == ""
    assert strip_invented("No, no, no, no, no. No, I don't, I don't.", jfk) == ""
    assert strip_invented("I don't know. I don't know. I don't know.", jfk) == ""
    assert strip_invented("No, no, no!", jfk[:2 * RATE]) == "No, no, no!"  # said, short


def test_long_real_speech_is_kept_whole() -> None:
    jfk = speech("jfk-44k1-stereo.wav")
    said = ("And so, my fellow Americans, ask not what your country can do for you; "
            "ask what you can do for your country.")
    assert strip_invented(said, jfk) == said
    # Numbers in digits are several spoken words; a sentence said three times stays.
    lj = np.concatenate([silence(0.5), speech("lj002-0020-22k05.wav"), silence(0.4),
                         speech("lj002-0035-22k05.wav"), silence(1.0)])
    assert strip_invented("In 1813. 8. The press yard.", lj) == "In 1813. 8. The press yard."
    thrice = np.concatenate([jfk, jfk, jfk])
    assert strip_invented(f"{said} {said} {said}", thrice) == f"{said} {said} {said}"


def test_subtitle_sign_offs_are_removed() -> None:
    jfk = speech("jfk-44k1-stereo.wav")
    said = ("And so, my fellow Americans, ask not what your country can do for you; "
            "ask what you can do for your country.")
    assert strip_invented(f"{said} Thank you very much for watching, and I'll see you "
                          "next time.", jfk) == said
    assert strip_invented("Thanks for watching! Please subscribe.", jfk) == ""


def test_a_sentence_looped_three_times_is_dropped() -> None:
    jfk = speech("jfk-44k1-stereo.wav")
    loop = "This is what I'm going to do. " * 3
    assert strip_invented(loop, jfk) == ""


@pytest.mark.parametrize(("partial", "shown"), [
    ("Hello? Hello? Hello? Hello? Hello, hello. I didn't know you were",
     "Hello? Hello. I didn't know you were"),
    ("I don't know. I don't know. I don't know. I don't know. Maybe.",
     "I don't know. I don't know. Maybe."),
    ("No, no, no.", "No, no."),
    ("within thine own bud-be-be-be-be-be-", "within thine own bud-be-be-"),
    # Phrases said again, but not three times in a row, stay.
    ("One of the best and one of the worst.", "One of the best and one of the worst."),
    ("Hello? Hello? Oh, hello.", "Hello? Hello? Oh, hello."),
])
def test_a_partial_says_a_repeated_phrase_at_most_twice(partial: str, shown: str) -> None:
    assert invented.without_loops(partial) == shown


def two_reversed_voices(seconds: float) -> np.ndarray:
    """Babble with no word in it: JFK and the meeting recording played backwards at
    once, at equal level, each from a random place (seeded)."""
    return reversed_voices(seconds, ("jfk-44k1-stereo.wav", "ami-es2011a-16k.wav"), 12)


def reversed_voices(seconds: float, names: tuple[str, ...], seed: int) -> np.ndarray:
    """The recordings `names` played backwards at once, at equal level, each from a
    place drawn with `seed`."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    mix = np.zeros(n, dtype=np.float32)
    for name in names:
        voice = speech(name).astype(np.float32)[::-1]
        voice *= 1000 / float(np.sqrt(np.mean(voice ** 2)))
        loop = np.tile(voice, n // len(voice) + 2)
        start = int(rng.integers(len(voice)))
        mix += loop[start:start + n]
    return np.clip(mix, -32768, 32767).astype(np.int16)


def test_words_over_voices_whisper_cannot_read_are_dropped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Silero is sure it hears speech; tiny.en writes words ("Oh, yeah, yeah.") with an
    # average log-probability far under that of any real speech Silero is as sure of
    # (-0.56 at worst in bench/real_speech.py).
    babble = two_reversed_voices(4.0)
    assert speech_heard(babble).mean >= 0.6  # precondition: Silero takes it for speech
    model = transcriber()
    assert model.transcribe(babble, final=True) == ""
    monkeypatch.setattr(invented, "UNSURE_LOGPROB", -5.0)  # this rule, and no other
    monkeypatch.setattr(invented, "HEARD_SHARE", 0.0)
    assert model.transcribe(babble, final=True) != ""
    monkeypatch.undo()
    # The rule goes by the decode's own confidence, and only where Silero is sure:
    # JFK's pauses keep his speech out of it.
    said = "I'm going down more than that. I can't remember why I fell more than that."
    assert strip_invented(said, babble, avg_logprob=-0.4) == said
    assert strip_invented(said, babble, avg_logprob=-0.9) == ""
    jfk = speech("jfk-44k1-stereo.wav")
    assert speech_heard(jfk).mean < 0.6
    assert strip_invented(JFK_SAID, jfk, avg_logprob=-0.9) == JFK_SAID
    # Real speech with the same babble 10 dB under it is kept.
    text = model.transcribe(said_over(jfk, two_reversed_voices, pad_s=0), final=True)
    assert coverage(JFK_SAID, text) >= 0.8, text


THREE_VOICES = {
    "Thank you very much.": (("jfk-44k1-stereo.wav", "ami-es2011a-16k.wav",
                              "lj002-0020-22k05.wav"), 34),
    "You have to make a waste": (("jfk-44k1-stereo.wav", "lj002-0020-22k05.wav",
                                  "lj002-0035-22k05.wav"), 39),
}


@pytest.mark.parametrize("invented_text", list(THREE_VOICES))
def test_a_likely_phrase_half_heard_over_voices_is_dropped(
        monkeypatch: pytest.MonkeyPatch, invented_text: str) -> None:
    # Over 2.5 s of three reversed voices tiny.en writes a phrase that is likely with
    # no audio at all, with a confidence (-0.72) that passes UNSURE_LOGPROB: the audio
    # explains too little of it (HEARD_SHARE). These clips were found after the
    # threshold was set on the corpus (bench/real_speech.py, bench/short_phrases.py).
    talk = reversed_voices(2.5, *THREE_VOICES[invented_text])
    model = transcriber()
    assert model.transcribe(talk, final=True) == ""
    # This rule alone drops it, and without it the phrase comes out.
    monkeypatch.setattr(invented, "UNSURE_LOGPROB", -5.0)
    assert model.transcribe(talk, final=True) == ""
    monkeypatch.setattr(invented, "HEARD_SHARE", 0.0)
    assert model.transcribe(talk, final=True).startswith(invented_text)


def test_confidence_is_weighed_against_how_likely_the_words_are_unheard() -> None:
    babble = two_reversed_voices(4.0)
    model = transcriber()
    # With no audio, the model finds a silence phrase far likelier than a line of a
    # sonnet (-2.0 and -8.0 a token).
    assert model.prior_logprob("Thank you.") > -3 > -6 > model.prior_logprob(
        "To thy sweet self too cruel.")
    asked: list[str] = []

    def prior(value: float) -> Callable[[str], float]:
        def unheard(text: str) -> float:
            asked.append(text)
            return value
        return unheard

    # The talk show's final (bench/real_speech.py): -0.66 a token, where the same
    # words with no audio score -3.3: the audio explains 80 % of them.
    said = "Are you going to be doing what?"
    assert strip_invented(said, babble, avg_logprob=-0.66, prior=prior(-3.3)) == ""
    # As sure of an unlikely text ("log in incorrect.": -0.58, -6.8 unheard): kept.
    assert strip_invented(said, babble, avg_logprob=-0.66, prior=prior(-6.8)) == said
    # Words likelier unheard than heard are not heard at all.
    assert strip_invented(said, babble, avg_logprob=-0.66, prior=prior(-0.5)) == ""
    # Sure enough, the text is not weighed (one model call saved per final).
    asked.clear()
    assert strip_invented(said, babble, avg_logprob=-0.4, prior=prior(-1.0)) == said
    assert asked == []
    # Nor where Silero is unsure it hears speech.
    jfk = speech("jfk-44k1-stereo.wav")
    assert strip_invented(JFK_SAID, jfk, avg_logprob=-0.66, prior=prior(-1.0)) == JFK_SAID


def test_one_word_said_over_voices_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    # A word said alone over a TV scores as low to Whisper as babble does: the mean of
    # one word rests on a token or two. So *voices but no words* judges two words or
    # more, and a lone silence phrase.
    model = transcriber()
    eight = said_over(speech("lj002-0035-22k05.wav")[:int(0.47 * RATE)], two_reversed_voices)
    assert speech_heard(eight).mean >= invented.SURE_SPEECH_MEAN
    assert model.transcribe(eight, final=True) == "Eight."
    # JFK's "what", cut from its sentence, reads "Thank you." over the same voices.
    what = said_over(speech("jfk-44k1-stereo.wav")[int(4.51 * RATE):int(5.75 * RATE)],
                     two_reversed_voices)
    assert model.transcribe(what, final=True) == ""
    # Both are this rule's case (Silero sure of speech, Whisper unsure of the words):
    # judging one word too drops "Eight.", and without the rule "Thank you." stays.
    monkeypatch.setattr(invented, "VOICES_MIN_WORDS", 1)
    assert model.transcribe(eight, final=True) == ""
    monkeypatch.setattr(invented, "UNSURE_LOGPROB", -5.0)
    monkeypatch.setattr(invented, "HEARD_SHARE", 0.0)
    assert model.transcribe(what, final=True) == "Thank you."


def test_a_loop_carried_across_a_cut_is_dropped() -> None:
    # 5 s pieces of babble (bench/real_speech.py): the first said "Thank you.", and each
    # later piece, decoded with the turn's text as context, went on with it.
    jfk = speech("jfk-44k1-stereo.wav")
    assert strip_invented("Thank you. Thank you very much.", jfk, context="Thank you.") == ""
    assert strip_invented("Thank you very much.", jfk,
                          context="Thank you very much. Thank you very much.") == ""
    # A piece that goes on with different words, or repeats once, stays.
    assert strip_invented(JFK_SAID, jfk, context="Thank you. Thank you. Thank you.") \
        == JFK_SAID
    assert strip_invented("Thank you very much.", jfk[:2 * RATE],
                          context="Thank you very much.") == "Thank you very much."

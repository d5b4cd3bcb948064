"""Deltas for clients that append them (OpenAI's), with no model: hypotheses in, the
text to append out (roomscribe.server.increments)."""

from __future__ import annotations

from roomscribe.server.increments import Increments


def shown(hypotheses: list[str], item: str = "item_1") -> tuple[str, list[str]]:
    """What an appending client shows after each hypothesis, and the increments."""
    inc = Increments()
    sent = [inc.next(item, h) for h in hypotheses]
    return "".join(sent), [s for s in sent if s]


def test_a_word_goes_out_once_two_hypotheses_agree_on_it() -> None:
    text, sent = shown(["And so", "And so my fell", "And so my fellow Americans",
                        "And so, my fellow Americans, ask not."])
    assert sent == ["And so", " my", " fellow Americans,"]
    assert text == "And so my fellow Americans,"


def test_a_revised_word_is_never_sent_and_nothing_is_sent_twice() -> None:
    # The cut-off last word changes from one hypothesis to the next.
    text, _ = shown(["Turn on the kit", "Turn on the kitten", "Turn on the kitchen",
                     "Turn on the kitchen lights", "Turn on the kitchen lights."])
    assert text == "Turn on the kitchen lights."
    # Once a sent word is read otherwise, nothing more until the text returns to it.
    text, _ = shown(["I heard a", "I heard a beat", "I heard the beat and",
                     "I heard the beat and then", "I heard a beat and then so"])
    assert text == "I heard a"  # the words after "a" never agreed with a sent "a"


def test_case_and_punctuation_do_not_count_as_a_revision() -> None:
    # Each word as the newer of the two hypotheses that agreed on it wrote it.
    text, _ = shown(["hello there", "Hello, there.", "Hello, there. How are",
                     "Hello there how are"])
    assert text == "Hello, there. how are"


def test_each_item_starts_afresh_and_a_repeated_hypothesis_adds_nothing() -> None:
    inc = Increments()
    assert inc.next("a", "Lights on") == ""
    assert inc.next("a", "Lights on") == "Lights on"
    assert inc.next("a", "Lights on") == ""
    assert inc.next("b", "Lights off") == ""  # another item: no agreement carried over
    assert inc.next("b", "Lights off please") == "Lights off"

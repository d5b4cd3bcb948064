"""Does Whisper doubt a real, whole silence phrase? (a script, not a test; issue #13,
docs/architecture.md "Silence phrases that Whisper doubts").

server/invented.py drops a final made only of the phrases Whisper writes over silence
("Thank you.", "Goodbye.", ...) when Whisper itself gives over PHRASE_NO_SPEECH_PROB
that there is no speech and its log-probability is under UNSURE_LOGPROB. This plays
six real ones, each said alone by one voice (Allison Smith's studio prompts from
bench/corpus.py's Debian package: "Thank you." twice, "Goodbye." twice, "I'm sorry.",
"Oh."), at -26 dBFS between quarter-second pads, in five rooms: quiet, and at 10 dB
SNR under the corpus's fan, TV-like babble, music and kitchen sound. Each is decoded
as a final by the server's Transcriber (bundled tiny.en); printed: the text, what the
rules keep, the log-probability and the no-speech probability.

    uv run python bench/silence_phrases.py      # about a minute after the corpus
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

import corpus
from real_speech import read_16k  # also puts tests/ and tests/server on the path
from roomscribe.server import invented
from roomscribe.server.transcriber import Decoded, Transcriber
from server_support import transcriber

PROMPTS = ["auth-thankyou", "privacy-thankyou", "goodbye", "vm-goodbye", "im-sorry",
           "digits/oh"]
ROOMS = ["fan__16000", "babble-tv__44100", "music-system__16000", "kitchen__48000"]
LEVEL_DBFS = -26.0
SNR_DB = 10.0


def room_noises(folder: Path) -> dict[str, corpus.Audio]:
    """The corpus's recordings of ROOMS, as the capture path hands them on."""
    return {n: read_16k(folder / "nonspeech" / f"{n}.wav").astype(np.float32)
            for n in ROOMS}


def said_in_rooms(model: Transcriber, said: corpus.Audio, noises: dict[str, corpus.Audio],
                  rng: np.random.Generator) -> Iterator[tuple[str, Decoded, str, corpus.Pcm]]:
    """`said` alone at LEVEL_DBFS between quarter-second pads, quiet and at SNR_DB under
    each of ROOMS (as bench/corpus.py mixes its noisy variants), decoded as a final:
    (room, the decode, what the invented-words rules keep of it, the audio)."""
    said = corpus.at_level(said, LEVEL_DBFS)
    pad = np.zeros(corpus.RATE // 4, dtype=np.float32)
    clip = np.concatenate([pad, said, pad])
    for room in ["quiet", *ROOMS]:
        mixed = clip
        if room != "quiet":
            bed = corpus.fit(noises[room], len(clip), rng)
            mixed = clip + corpus.at_level(bed, corpus.rms_db(said) - SNR_DB)
        pcm = corpus.to_int16(mixed)
        decoded = model._decode(pcm, True, "")
        kept = invented.strip_invented(decoded.text, pcm, decoded.avg_logprob, "",
                                       decoded.no_speech_prob,
                                       model.prior_logprob) if decoded.text else ""
        yield room, decoded, kept, pcm


def main() -> int:
    # No options; --help says what the script does before its minutes of decoding.
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    folder, _ = corpus.ensure()
    files = corpus.Sources(folder / "packages").files("asterisk-core-sounds-en-g722",
                                                      corpus.ALLISON_DIR)
    noises = room_noises(folder)
    model = transcriber()
    rng = np.random.default_rng(3)
    print("| prompt | room | text | kept | log-prob | no-speech p |")
    print("|---|---|---|---|---|---|")
    worst = 0.0
    dropped = 0
    for name in PROMPTS:
        said = corpus.decode(files[f"{corpus.ALLISON_DIR}{name}.g722"], "g722")
        for room, decoded, kept, _pcm in said_in_rooms(model, said, noises, rng):
            worst = max(worst, decoded.no_speech_prob)
            dropped += bool(decoded.text) and not kept
            print(f"| {name} | {room} | {decoded.text} | {kept} | "
                  f"{decoded.avg_logprob:.2f} | {decoded.no_speech_prob:.2f} |", flush=True)
    print(f"\nhighest no-speech probability {worst:.2f} (the rule: over "
          f"{invented.PHRASE_NO_SPEECH_PROB} with log-probability under "
          f"{invented.UNSURE_LOGPROB}); finals the rules dropped: {dropped} of "
          f"{len(PROMPTS) * (1 + len(ROOMS))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

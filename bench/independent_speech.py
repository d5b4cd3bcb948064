"""Does the server drop real speech it was never tuned on? (a script, not a test; #13)

The rules of roomscribe/server/invented.py were set on bench/corpus.py's recordings.
This runs them on speech kept apart for independent checks: the sample recordings of
the `moonshine-voice` package (pinned, sha256-checked, fetched from PyPI into the
corpus folder): a Beckett line read slowly, a short accented sentence, a two-voice
scene from Endgame, the opening of A Tale of Two Cities, and two 1 s alert sounds.

Each file goes through the daemon's capture conversion and a server Session with the
default VAD, as bench/real_speech.py does, twice: with invented.py's rules and with
them turned off. Reported per file: the finals, the words each way, the finals the
rules dropped or changed (any is a lost piece of speech, unless the file is a sound),
and how far each streamed text is from the same model on the whole file (WER against
the offline text: there is no reference text in the package; over the 1 s alert
sounds any word, offline or streamed, is an invented one).

    uv run python bench/independent_speech.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import numpy.typing as npt

import corpus
from real_speech import errors, read_16k, words
from roomscribe.server import invented
from roomscribe.server.session import Session
from roomscribe.server.vad import VadParams
from server_latency import offline_text
from server_support import Driver, params, transcriber

MOONSHINE = corpus.Package(
    "pypi", "moonshine-voice", "0.1.5",
    # The wheel is per platform; only its sound files are read, so any machine can use
    # this one.
    "moonshine_voice-0.1.5-py3-none-manylinux_2_34_x86_64.whl",
    "1ed9e0ccf94be4845d69e7fa862dcf4c8b5801a758796966494c694f48184496", "MIT")
ASSETS = "moonshine_voice/assets/"


def recordings(folder: Path) -> list[Path]:
    out = folder / "independent"
    out.mkdir(parents=True, exist_ok=True)
    files = corpus.members(MOONSHINE, folder / "packages",
                           lambda n: n.startswith(ASSETS) and n.endswith(".wav"))
    paths = []
    for name, data in sorted(files.items()):
        path = out / name.removeprefix(ASSETS)
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
        paths.append(path)
    return paths


def finals(pcm: npt.NDArray[np.int16]) -> list[str]:
    """Every item's `completed` transcript, empty ones included (so that two runs with
    the same VAD line up item by item)."""
    driver = Driver(Session(params(VadParams())), partials=False)
    driver.stream(pcm)
    driver.send(json.dumps({"type": "input_audio_buffer.commit"}))
    return driver.transcripts()


def main() -> int:
    # No options; --help says what the script does before its minutes of decoding.
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    folder = corpus.corpus_dir()
    transcriber()  # load the model first
    print("| file | audio | finals | words, rules on / off | finals dropped or changed "
          "| offline words | WER vs offline, rules on / off |")
    print("|---|---|---|---|---|---|---|")
    changed_total = 0
    for path in recordings(folder):
        pcm = read_16k(path)
        kept = finals(pcm)
        with mock.patch.object(invented, "strip_invented", lambda text, *a, **k: text):
            raw = finals(pcm)
        # The VAD does not depend on the text: the same items, one to one.
        changed = [f"{r!r} -> {k!r}" for r, k in zip(raw, kept, strict=True) if r != k]
        changed_total += len(changed)
        offline = offline_text(pcm)
        vs = [f"{100 * errors(offline, ' '.join(t)).wer:.1f} %" if words(offline) else "-"
              for t in (kept, raw)]
        print(f"| {path.stem} | {len(pcm) / 16000:.1f} s | {sum(1 for t in raw if t)} "
              f"| {len(words(' '.join(kept)))} / {len(words(' '.join(raw)))} "
              f"| {len(changed)}{': ' + '; '.join(changed) if changed else ''} "
              f"| {len(words(offline))} | {vs[0]} / {vs[1]} |")
    print(f"\nfinals dropped or changed by invented.py: {changed_total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

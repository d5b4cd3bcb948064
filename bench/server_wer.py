"""The streaming penalty of `roomscribe serve` on more words than the shared recordings
hold (a script, not a test).

Text does not depend on timing, so no socket and no clock: each corpus is fed to a
`Session` in 100 ms appends and every segment's final is decoded as the server would
decode it. Prints, per corpus, the WER of the streamed text against the reference text
and against the same model transcribing each whole file offline (faster-whisper's
defaults), the same for the offline run of each file with 250 ms of silence added on
both sides (how far the model's words move on a change that carries no information),
and the decode time per segment of the server's path and of
faster-whisper's 30 s path on the same segments.

Corpora: `shared` (the four /work/shared/audio files, 1.5 s apart) and `espeak`
(20 sentences a home might say, synthesised by espeak-ng, 0.8 s apart; skipped
without espeak-ng). Synthetic speech is easy for Whisper in some ways and hard in
others: it widens the evidence, it does not replace real speech.

    uv run python bench/server_wer.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jiwer
import numpy as np
import numpy.typing as npt

from roomscribe.server.session import Session
from server_latency import FILES, load, norm, offline_text, reference_texts
from server_support import Driver, params, transcriber

RATE = 16000
SENTENCES = [
    "Turn on the kitchen lights and set them to fifty percent.",
    "The quick brown fox jumps over the lazy dog.",
    "Please remind me to call my sister tomorrow morning at nine.",
    "It was the best of times, it was the worst of times.",
    "What is the weather going to be like this weekend?",
    "Close the garage door and lock the front entrance.",
    "The museum opens at ten and closes at five in the afternoon.",
    "I would like a cup of coffee with milk and no sugar.",
    "Set a timer for twelve minutes for the pasta.",
    "Our neighbours are going on holiday to Spain next week.",
    "The train to the city leaves from platform number three.",
    "Can you play some quiet music in the living room?",
    "She sells sea shells by the sea shore every summer.",
    "The committee will meet again on Thursday to discuss the budget.",
    "Water the plants in the garden before the sun goes down.",
    "He walked slowly along the river, thinking about the future.",
    "Dinner is ready, everybody come to the table now.",
    "The library has thousands of books about history and science.",
    "Dim the bedroom lamp and turn off the television.",
    "We need more bread, eggs, butter and a bag of apples.",
]


def espeak(text: str, folder: Path) -> npt.NDArray[np.int16]:
    path = folder / "s.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(path), text],
                   check=True)
    return load(path)


def corpora() -> dict[str, tuple[list[npt.NDArray[np.int16]], list[str], float]]:
    """name -> (clips, reference texts, gap between clips in seconds)."""
    refs = reference_texts()
    out = {"shared": ([load(f) for f in FILES], [refs[f] for f in FILES], 1.5)}
    if shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as tmp:
            out["espeak"] = ([espeak(s, Path(tmp)) for s in SENTENCES], SENTENCES, 0.8)
    else:
        print("espeak-ng not found: the espeak corpus is skipped", file=sys.stderr)
    return out


def stream_finals(pcm: npt.NDArray[np.int16]) -> tuple[str, list[npt.NDArray[np.int16]]]:
    """The streamed text as a session cuts and the server decodes it (no load: every
    job runs at once), and the audio of each segment's final, in order."""
    driver = Driver(Session(params()), partials=False)
    driver.stream(pcm)
    driver.send(json.dumps({"type": "input_audio_buffer.commit"}))
    finals: dict[str, npt.NDArray[np.int16]] = {}
    for job in driver.jobs:
        finals.setdefault(job.item_id, job.pcm)  # a guess and its final hold the same audio
    return " ".join(driver.transcripts()), list(finals.values())


def main() -> int:
    # No options; --help says what the script does before its minutes of decoding.
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    model = transcriber()
    print("| corpus | words | segments | streamed WER vs reference | offline WER vs reference "
          "| streamed vs offline | offline vs offline padded | decode per segment: server "
          "path | faster-whisper 30 s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (clips, refs, gap_s) in corpora().items():
        gap = np.zeros(int(gap_s * RATE), dtype=np.int16)
        stream = np.concatenate([gap] + [part for clip in clips for part in (clip, gap)])
        reference = norm(" ".join(refs))
        offline = norm(" ".join(offline_text(clip) for clip in clips))
        # The same files with the session's 250 ms pad of silence on each side: how much
        # tiny.en's words move on a change that carries no information.
        pad = np.zeros(RATE // 4, dtype=np.int16)
        padded = norm(" ".join(offline_text(np.concatenate([pad, c, pad])) for c in clips))
        text, segs = stream_finals(stream)
        streamed = norm(text)
        start = time.perf_counter()
        for s in segs:
            model.transcribe(s, final=True)
        server_s = (time.perf_counter() - start) / len(segs)
        start = time.perf_counter()
        for s in segs:
            model.transcribe_full(s, final=True)
        full_s = (time.perf_counter() - start) / len(segs)
        print(f"| {name} | {len(reference.split())} | {len(segs)} "
              f"| {jiwer.wer(reference, streamed):.1%} | {jiwer.wer(reference, offline):.1%} "
              f"| {jiwer.wer(offline, streamed):.1%} | {jiwer.wer(offline, padded):.1%} "
              f"| {server_s * 1000:.0f} ms "
              f"| {full_s * 1000:.0f} ms |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

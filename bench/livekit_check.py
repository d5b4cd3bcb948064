"""LiveKit Agents' OpenAI STT plugin as a client of `roomscribe serve`. Not in CI: heavy.

A voice agent built on LiveKit can take its speech-to-text from any server that speaks
OpenAI's realtime transcription protocol: `openai.STT(use_realtime=True, base_url=...)`.
The plugin is someone else's client, used as its docs say but for the host: it sends
OpenAI's GA `session.update` (24 kHz, server VAD), adds up deltas into its interim
transcripts (`current_text += delta`) and takes each `completed` as a final.

This starts the server, plays the four shared recordings at real time (1.5 s of
silence between) into the plugin's stream in LiveKit's own venv, and checks what a
user of it would see: every word tiny.en gets offline in the finals, in order, none
twice; no interim saying a word twice ("And soAnd so my", which whole-hypothesis
deltas gave); each interim how its final begins.

    # once: LiveKit in its own venv
    uv venv --python 3.11 /tmp/lk-venv
    uv pip install --python /tmp/lk-venv/bin/python livekit-agents==1.8.9 \\
        livekit-plugins-openai
    # then
    uv run --extra server python bench/livekit_check.py --python /tmp/lk-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "server"), str(ROOT / "bench")]

RATE = 24000  # the plugin's only rate
GAP_S = 1.5

# Runs in LiveKit's venv: raw 24 kHz s16le in (argv[1]), one JSON line per event out.
CHILD = r'''
import asyncio, json, sys, time
from livekit import rtc
from livekit.agents import stt as agents_stt
from livekit.agents.utils import http_context
from livekit.plugins import openai

async def main(path, port):
    pcm = open(path, "rb").read()
    async with http_context.open():  # what a script outside LiveKit's worker does
        client = openai.STT(model="gpt-4o-mini-transcribe", use_realtime=True,
                            base_url=f"http://127.0.0.1:{port}/v1", api_key="bench-key")
        stream = client.stream()
        async def microphone():
            step = 2400 * 2  # 100 ms
            start = time.monotonic()
            for i in range(0, len(pcm), step):
                chunk = pcm[i:i + step]
                stream.push_frame(rtc.AudioFrame(chunk, 24000, 1, len(chunk) // 2))
                await asyncio.sleep(max(0.0, start + (i // step + 1) * 0.1 - time.monotonic()))
            stream.end_input()
        sender = asyncio.create_task(microphone())
        async def events():
            async for ev in stream:
                if ev.type in (agents_stt.SpeechEventType.INTERIM_TRANSCRIPT,
                               agents_stt.SpeechEventType.FINAL_TRANSCRIPT):
                    print(json.dumps({"type": ev.type.value,
                                      "text": ev.alternatives[0].text}), flush=True)
        reader = asyncio.create_task(events())
        await sender
        await asyncio.sleep(10)  # the last final (the plugin's stream never ends itself)
        reader.cancel()
        await stream.aclose()
        await client.aclose()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", required=True, help="LiveKit venv's python")
    args = parser.parse_args()

    import numpy as np

    from server_support import normalise, speech
    from stack import CLIPS, start_server
    from test_server_clients import check_words

    gap = np.zeros(int(GAP_S * RATE), np.int16)
    pcm = np.concatenate([gap, *[np.concatenate([speech(n, RATE), gap]) for n in CLIPS]])
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "audio.raw").write_bytes(pcm.astype("<i2").tobytes())
        (tmp / "child.py").write_text(CHILD)
        server, port = start_server(tmp, extra='tokens = ["bench-key"]\n')
        try:
            run = subprocess.run([args.python, str(tmp / "child.py"), str(tmp / "audio.raw"),
                                  str(port)], capture_output=True, text=True,
                                 timeout=len(pcm) / RATE + 120)
        finally:
            server.stop()
    events: list[dict[str, Any]] = []
    for line in run.stdout.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    if run.returncode != 0 or not events:
        print(run.stderr[-3000:])
        print(f"FAIL: the LiveKit client exited {run.returncode} with {len(events)} events")
        return 1
    finals = [e["text"] for e in events if e["type"] == "final_transcript"]
    problems: list[str] = []
    try:
        n = check_words(finals, CLIPS)
        print(f"finals: {len(finals)}, every one of the {n} offline words, in order, once")
    except AssertionError as exc:
        problems.append(f"finals: {exc}")
    # Each interim until the next final, against that final.
    interims = prefixes = 0
    pending: list[str] = []
    for e in events:
        if e["type"] == "interim_transcript":
            pending.append(e["text"])
            continue
        final = normalise(e["text"])
        for text in pending:
            words = normalise(text)
            interims += 1
            prefixes += words == final[:len(words)]
            if len(words) > len(final) + 1:
                problems.append(f"interim {text!r} is longer than its final {e['text']!r}")
        pending = []
    print(f"interims: {interims}, of which {prefixes} are how their final begins")
    for e in events:
        print(f"  {e['type']:18} {e['text']}")
    if not interims:
        problems.append("no interim transcripts")
    for p in problems:
        print(f"FAIL: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

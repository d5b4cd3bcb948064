"""Voice-agent frameworks' speech-to-text as clients of `roomscribe serve`. Not in CI.

A voice agent can take its speech-to-text from any server that speaks OpenAI's realtime
transcription protocol. Two frameworks' clients, each in its own venv, used as their
docs say but for the host:

- LiveKit Agents' OpenAI plugin, `openai.STT(use_realtime=True, base_url=...)`: OpenAI's
  GA `session.update` (24 kHz, server VAD); it adds deltas up into its interim
  transcripts (`current_text += delta`) and takes each `completed` as a final.
- OpenAI's Agents SDK voice pipeline, `OpenAISTTModel` (`openai-agents[voice]`): GA
  `session.update` with `semantic_vad`; it yields each `completed` as a turn, and at
  the end commits, clears, and waits for every committed item's transcript. Any other
  `error` event ends its session.

Each gets the four shared recordings at real time (1.5 s of silence between) and is
checked for what its user would see: every word tiny.en gets offline, in order, none
twice; for LiveKit also no interim longer than its final (whole-hypothesis deltas
added up gave "And soAnd so my ..."), and how many interims are how their final begins
(counted, not required: a word cut off by the audio so far can agree twice).

    # once: each framework in its own venv
    uv venv --python 3.11 /tmp/lk-venv
    uv pip install --python /tmp/lk-venv/bin/python livekit-agents==1.8.9 \\
        livekit-plugins-openai==1.8.9
    uv venv --python 3.11 /tmp/oa-venv
    uv pip install --python /tmp/oa-venv/bin/python "openai-agents[voice]==0.24.0"
    # then (either or both)
    uv run --extra server python bench/voice_agents_check.py \\
        --livekit /tmp/lk-venv/bin/python --openai-agents /tmp/oa-venv/bin/python
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

# Each runs in its framework's venv: raw 24 kHz s16le (argv[1]) and the port (argv[2])
# in, one JSON line per transcript out.
LIVEKIT = r'''
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


AGENTS = r'''
import asyncio, json, sys, time
import numpy as np
from openai import AsyncOpenAI
from agents.voice import StreamedAudioInput, STTModelSettings
from agents.voice.models.openai_stt import OpenAISTTModel

async def main(path, port):
    pcm = np.frombuffer(open(path, "rb").read(), np.int16)
    client = AsyncOpenAI(api_key="bench-key", base_url=f"http://127.0.0.1:{port}/v1",
                         websocket_base_url=f"ws://127.0.0.1:{port}/v1")
    stream = StreamedAudioInput()
    session = await OpenAISTTModel("gpt-4o-transcribe", client).create_session(
        stream, STTModelSettings(), trace_include_sensitive_data=False,
        trace_include_sensitive_audio_data=False)
    async def microphone():
        start = time.monotonic()
        for i in range(0, len(pcm), 2400):  # 100 ms
            await stream.add_audio(pcm[i:i + 2400])
            await asyncio.sleep(max(0.0, start + (i // 2400 + 1) * 0.1 - time.monotonic()))
        await stream.add_audio(None)  # the end: it commits, clears and waits
    sender = asyncio.create_task(microphone())
    async def turns():
        async for text in session.transcribe_turns():
            print(json.dumps({"type": "final_transcript", "text": text}), flush=True)
    await asyncio.wait_for(turns(), len(pcm) / 24000 + 60)
    await sender
    await session.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
'''


def run_client(name: str, python: str, code: str, pcm: Any, port: int, tmp: Path
               ) -> list[str]:
    """Play `pcm` through one framework's client; its problems (none: it passed)."""
    from server_support import normalise
    from stack import CLIPS
    from test_server_clients import check_words

    script = tmp / f"client_{name.replace('-', '_')}.py"  # not the package's name
    script.write_text(code)
    run = subprocess.run([python, str(script), str(tmp / "audio.raw"), str(port)],
                         capture_output=True, text=True, timeout=len(pcm) / RATE + 120)
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    print(f"{name}:")
    if run.returncode != 0 or not events:
        print(run.stderr[-3000:])
        return [f"the client exited {run.returncode} with {len(events)} events"]
    finals = [e["text"] for e in events if e["type"] == "final_transcript"]
    problems: list[str] = []
    try:
        n = check_words(finals, CLIPS)
        print(f"  finals: {len(finals)}, every one of the {n} offline words, in order, once")
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
    if name == "livekit":
        print(f"  interims: {interims}, of which {prefixes} are how their final begins")
        if not interims:
            problems.append("no interim transcripts")
    for e in events:
        print(f"    {e['type']:18} {e['text']}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--livekit", help="the python of a venv with LiveKit's plugin")
    parser.add_argument("--openai-agents", help="the python of a venv with openai-agents")
    args = parser.parse_args()
    clients = [(n, py, code) for n, py, code in (("livekit", args.livekit, LIVEKIT),
                                                 ("openai-agents", args.openai_agents, AGENTS))
               if py]
    if not clients:
        parser.error("name at least one client's venv")

    import numpy as np

    from server_support import speech
    from stack import CLIPS, start_server

    gap = np.zeros(int(GAP_S * RATE), np.int16)
    pcm = np.concatenate([gap, *[np.concatenate([speech(n, RATE), gap]) for n in CLIPS]])
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "audio.raw").write_bytes(pcm.astype("<i2").tobytes())
        server, port = start_server(tmp, extra='tokens = ["bench-key"]\n')
        try:
            for name, python, code in clients:
                problems += [f"{name}: {p}" for p in run_client(name, python, code, pcm, port,
                                                                 tmp)]
        finally:
            server.stop()
    for p in problems:
        print(f"FAIL: {p}")
    return 1 if problems else 0

if __name__ == "__main__":
    sys.exit(main())

"""Daemon cost benchmark: CPU per audio hour, peak RSS, publish latency.

Streams AUDIO_S seconds (default one hour) of real speech, looped, through the real
daemon (file source, unpaced) into a light local realtime server that answers with a
transcript every few seconds, and on to a real Mosquitto. In the same run, a naive
client written the way Together's docs example is (numpy concatenation per capture
callback, same 4096-sample chunks, no MQTT) streams the same audio to the same
server, for comparison. Each side runs REPEATS times; medians are reported.

    uv run python bench/daemon_bench.py [--audio-s 3600] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import wave
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from websockets.asyncio.server import ServerConnection, serve

ROOT = Path(__file__).resolve().parent.parent
AUDIO = ROOT.parent / "shared" / "audio" / "jfk-44k1-stereo.wav"
SEGMENT_S = 5.0  # the bench server "transcribes" every 5 s of audio it receives


async def light_server(conn: ServerConnection) -> None:
    """Speaks the protocol with the extras, no model: an answer per SEGMENT_S."""
    await conn.send(json.dumps({"type": "session.created",
                                "session": {"id": "bench", "object": "realtime.session"}}))
    samples = 0
    next_cut = int(SEGMENT_S * 16000)
    item = 0
    async for message in conn:
        event = json.loads(message)
        if event.get("type") == "input_audio_buffer.append":
            samples += len(base64.b64decode(event["audio"])) // 2
            while samples >= next_cut:
                item += 1
                end_ms = next_cut // 16
                for kind, extra in (
                    ("input_audio_buffer.speech_started",
                     {"audio_start_ms": end_ms - int(SEGMENT_S * 1000)}),
                    ("input_audio_buffer.speech_stopped", {"audio_end_ms": end_ms}),
                    ("conversation.item.input_audio_transcription.completed",
                     {"transcript": f"segment {item} sent at {time.time():.6f}"}),
                ):
                    await conn.send(json.dumps({"type": kind, "item_id": f"i{item}", **extra}))
                next_cut += int(SEGMENT_S * 16000)
        elif event.get("type") == "input_audio_buffer.commit":
            await conn.send(json.dumps({"type": "input_audio_buffer.committed",
                                        "item_id": "last"}))
            await conn.send(json.dumps({
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": "last", "transcript": f"final sent at {time.time():.6f}"}))


def run_server(port_box: list[int], ready: threading.Event) -> None:
    async def main() -> None:
        async with serve(light_server, "127.0.0.1", 0, max_size=1 << 22) as server:
            port_box.append(server.sockets[0].getsockname()[1])
            ready.set()
            await asyncio.Future()

    asyncio.run(main())


def make_wav(path: Path, audio_s: float) -> None:
    """The JFK clip, 44.1 kHz stereo as a USB mic gives it, looped to audio_s."""
    with wave.open(str(AUDIO)) as w:
        clip = np.frombuffer(w.readframes(w.getnframes()), np.int16).reshape(-1, 2)
        rate = w.getframerate()
    reps = int(np.ceil(audio_s * rate / len(clip)))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(rate)
        block = clip.tobytes()
        written = 0
        for _ in range(reps):
            take = min(len(clip), int(audio_s * rate) - written)
            out.writeframes(block[: take * 4])
            written += take


NAIVE = textwrap.dedent("""
    # Written the way Together's realtime example is: a capture callback that
    # concatenates numpy arrays, a loop that slices 4096-sample chunks and sends them.
    import asyncio, base64, json, sys, wave
    import numpy as np, soxr, websockets

    async def main(url, path):
        buf = np.zeros(0, dtype=np.int16)
        async with websockets.connect(url, max_size=1 << 22) as ws:
            await ws.recv()  # session.created
            with wave.open(path) as w:
                rate, ch = w.getframerate(), w.getnchannels()
                while True:
                    raw = w.readframes(1024)  # one capture callback
                    if not raw:
                        break
                    x = np.frombuffer(raw, np.int16).reshape(-1, ch).mean(axis=1)
                    x = soxr.resample(x.astype(np.float32), rate, 16000)
                    buf = np.concatenate([buf, x.astype(np.int16)])
                    while len(buf) >= 4096:
                        chunk, buf = buf[:4096], buf[4096:]
                        await ws.send(json.dumps({"type": "input_audio_buffer.append",
                            "audio": base64.b64encode(chunk.tobytes()).decode()}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            async for m in ws:
                if "final" in m:
                    break

    asyncio.run(main(sys.argv[1], sys.argv[2]))
""")


def child_cost(cmd: list[str]) -> tuple[float, float, float]:
    """CPU seconds (user+sys), peak RSS in MB and wall time of one child process."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {cmd[1:3]} exited with status {proc.returncode}")
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, time.monotonic() - start


class Latency:
    """Subscriber measuring completed-sent → MQTT-arrival (same host, same clock)."""

    def __init__(self, port: int) -> None:
        self.samples: list[float] = []
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("roomscribe/+/transcript", qos=1)
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        text = json.loads(msg.payload)["text"]
        sent = float(text.rsplit(" ", 1)[1])
        self.samples.append((time.time() - sent) * 1000)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--audio-s", type=float, default=3600.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import start_broker  # the same real Mosquitto the tests use

    port_box: list[int] = []
    ready = threading.Event()
    threading.Thread(target=run_server, args=(port_box, ready), daemon=True).start()
    ready.wait(10)
    url = f"ws://127.0.0.1:{port_box[0]}/v1/realtime"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        broker = start_broker(tmp)
        wav = tmp / "hour.wav"
        make_wav(wav, args.audio_s)
        (tmp / "naive.py").write_text(NAIVE)
        (tmp / "bench.toml").write_text(textwrap.dedent(f"""
            [device]
            id = "bench"
            [capture]
            source = "file"
            file = "{wav}"
            file_realtime = false
            [uplink]
            url = "{url}"
            [mqtt]
            port = {broker.port}
            [state]
            dir = "{tmp / 'state'}"
            [log]
            level = "warning"
        """))
        latency = Latency(broker.port)
        naive, daemon = [], []
        try:
            for _ in range(args.repeats):
                naive.append(child_cost([sys.executable, str(tmp / "naive.py"), url, str(wav)]))
            for _ in range(args.repeats):
                daemon.append(child_cost([sys.executable, "-m", "roomscribe", "run",
                                          "--config", str(tmp / "bench.toml")]))
        finally:
            latency.close()
            broker.stop()
    hours = args.audio_s / 3600

    def med(rows: list[tuple[float, float, float]], i: int) -> float:
        return statistics.median(r[i] for r in rows)

    lat = sorted(latency.samples)
    p = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]) if lat else (lambda q: float("nan"))
    print(f"audio per run: {args.audio_s:.0f} s; runs per client: {args.repeats}\n")
    print("| client | CPU s per audio hour (median) | peak RSS MB | wall s (median) |")
    print("|---|---|---|---|")
    print(f"| naive (Together docs style) | {med(naive, 0) / hours:.1f} | "
          f"{max(r[1] for r in naive):.0f} | {med(naive, 2):.1f} |")
    print(f"| roomscribe run (+MQTT) | {med(daemon, 0) / hours:.1f} | "
          f"{max(r[1] for r in daemon):.0f} | {med(daemon, 2):.1f} |")
    print(f"\ncompleted → MQTT arrival over {len(lat)} transcripts: "
          f"p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms, max {lat[-1] if lat else 0:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

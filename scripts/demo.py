"""The whole job offline, end to end, and tidy afterwards.

Builds a "room" recording from the real speech in ../shared/audio (44.1 kHz stereo,
as a USB mic gives it, with silences between speakers), starts a Mosquitto and the
self-hosted server on free ports, runs the daemon on that recording at real time, and
prints each transcript as it arrives over MQTT. Everything it started, it stops.

    bash scripts/demo.sh [--fast] [--audio DIR]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import soxr

ROOT = Path(__file__).resolve().parent.parent
ROOM_RATE_HZ = 44_100
GAP_S = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"demo: {what} exited early (status {proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"demo: {what} did not start within {timeout_s:.0f} s")


def read_mono(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
        return pcm.reshape(-1, w.getnchannels()).mean(axis=1), w.getframerate()


def build_room(audio_dir: Path, out: Path) -> list[tuple[str, str]]:
    with (audio_dir / "transcripts.tsv").open(encoding="utf-8") as fh:
        refs = [(r["file"], r["text"]) for r in csv.DictReader(fh, delimiter="\t")]
    gap = np.zeros(int(GAP_S * ROOM_RATE_HZ))
    parts = [gap]
    for name, _text in refs:
        mono, rate = read_mono(audio_dir / name)
        parts += [soxr.resample(mono, rate, ROOM_RATE_HZ), gap]
    room = np.clip(np.concatenate(parts), -32768, 32767).astype(np.int16)
    stereo = np.repeat(room[:, None], 2, axis=1)
    with wave.open(str(out), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(ROOM_RATE_HZ)
        w.writeframes(stereo.tobytes())
    return refs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="don't pace the audio at real time")
    parser.add_argument("--audio", type=Path, default=ROOT.parent / "shared" / "audio")
    args = parser.parse_args()
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="roomscribe-demo-") as tmp_name:
        tmp = Path(tmp_name)
        refs = build_room(args.audio, tmp / "room.wav")
        broker_port, server_port = free_port(), free_port()
        (tmp / "mosquitto.conf").write_text(
            f"listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        (tmp / "config.toml").write_text(f"""
[device]
id = "demo"
room = "Demo room"
[capture]
source = "file"
file = "{tmp / 'room.wav'}"
file_realtime = {str(not args.fast).lower()}
[uplink]
url = "ws://127.0.0.1:{server_port}/v1/realtime"
[mqtt]
port = {broker_port}
[state]
dir = "{tmp / 'state'}"
[server]
port = {server_port}
[log]
level = "warning"
""")
        cfg = ["--config", str(tmp / "config.toml")]
        roomscribe = [sys.executable, "-m", "roomscribe"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            print(f"demo: broker on 127.0.0.1:{broker_port}, server on 127.0.0.1:{server_port}")
            procs.append(subprocess.Popen([mosquitto, "-c", str(tmp / "mosquitto.conf")],
                                          stderr=subprocess.DEVNULL))
            wait_port(broker_port, procs[-1], "mosquitto", 10)
            procs.append(subprocess.Popen([*roomscribe, "serve", *cfg], env=env))
            wait_port(server_port, procs[-1], "the server", 120)
            listener = subprocess.Popen([*roomscribe, "listen", *cfg, "--seconds", "600"],
                                        env=env)
            procs.append(listener)
            time.sleep(0.5)
            length = sum(len(read_mono(args.audio / n)[0]) / read_mono(args.audio / n)[1]
                         for n, _ in refs) + GAP_S * (len(refs) + 1)
            pace = "as fast as it goes" if args.fast else f"at real time ({length:.0f} s)"
            print(f"demo: playing {len(refs)} recordings {pace}; transcripts follow\n")
            daemon = subprocess.run([*roomscribe, "run", *cfg], env=env, check=False)
            time.sleep(1.0)
            print("\ndemo: what was said:")
            for name, text in refs:
                print(f"  {name}: {text}")
            return daemon.returncode
        finally:
            for proc in reversed(procs):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    sys.exit(main())

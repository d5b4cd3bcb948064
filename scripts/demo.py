"""The whole job offline, end to end, and tidy afterwards.

Builds a "room" recording from the real speech in ../shared/audio (44.1 kHz stereo,
as a USB mic gives it, with silences between speakers), starts a Mosquitto and the
self-hosted server on free ports, runs the daemon on that recording at real time, and
prints each transcript as it arrives over MQTT. Everything it started, it stops.
It exits 0 only if transcripts arrived (and the daemon exited cleanly).

    bash scripts/demo.sh [--fast] [--audio DIR] [--server ws://HOST:8765/v1/realtime]

--server uses a realtime server that already runs (`roomscribe serve` on another,
64-bit machine) instead of starting one here: the server extra (faster-whisper,
onnxruntime) is 64-bit only, so on 32-bit ARM that is the only way.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

import numpy as np
import soxr

ROOT = Path(__file__).resolve().parent.parent
ROOM_RATE_HZ = 44_100
GAP_S = 2.0
# after the daemon exits, the listener gets what is still on its way; it is done once
# nothing more arrived for this long
SETTLE_S = 3.0
NO_SERVER_EXTRA = (
    "demo: no server to transcribe with: the self-hosted server needs the server extra "
    "(faster-whisper, onnxruntime), which is 64-bit only; run `roomscribe serve` on a "
    "64-bit machine and give its address: bash scripts/demo.sh --server "
    "ws://HOST:8765/v1/realtime")


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
    """A 16-bit PCM WAV as mono samples and its rate; a file that is not one exits with
    a line naming it."""
    try:
        with wave.open(str(path)) as w:
            if w.getsampwidth() != 2:
                sys.exit(f"demo: {path}: {8 * w.getsampwidth()}-bit samples; "
                         "give 16-bit PCM WAV files")
            pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
            return pcm.reshape(-1, w.getnchannels()).mean(axis=1), w.getframerate()
    except FileNotFoundError:
        sys.exit(f"demo: {path}: no such file (listed in transcripts.tsv)")
    except OSError as e:
        sys.exit(f"demo: {path}: {e.strerror or e}")
    except (wave.Error, EOFError) as e:
        sys.exit(f"demo: {path}: not a 16-bit PCM WAV file ({e})")


def read_transcripts(audio_dir: Path) -> list[tuple[str, str]]:
    """(file, text) of each line of `audio_dir`/transcripts.tsv, after its header."""
    path = audio_dir / "transcripts.tsv"
    try:
        with path.open(encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            if not {"file", "text"} <= set(reader.fieldnames or []):
                sys.exit(f"demo: {path}: line 1 must be the header 'file<TAB>text'")
            refs = [(r["file"], r["text"] or "") for r in reader if r["file"]]
    except UnicodeDecodeError:
        sys.exit(f"demo: {path}: not UTF-8 text")
    if not refs:
        sys.exit(f"demo: {path}: no recordings listed under the header")
    return refs


def build_room(audio_dir: Path, out: Path) -> list[tuple[str, str]]:
    refs = read_transcripts(audio_dir)
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


def daemon_peak_mb(proc: subprocess.Popen[bytes]) -> float:
    """The daemon's peak RSS (VmHWM), read until it exits. (getrusage's figure for
    children counts, at fork, this script's own memory: 630 MB with a long room.)"""
    peak_kb = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kb = max(peak_kb, int(line.split()[1]))
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    return peak_kb / 1024


class Lines:
    """Echoes a process's output and counts the transcript lines in it."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.stream = proc.stdout
        self.count = 0
        self.last = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="listen-output", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for raw in self.stream:
            line = raw.decode(errors="replace").rstrip("\n")
            print(line, flush=True)
            if line.startswith("["):  # "[12:00:01] demo: text"
                self.count += 1
            self.last = time.monotonic()

    def settle(self, quiet_s: float, most_s: float) -> None:
        give_up = time.monotonic() + most_s
        while time.monotonic() < give_up and time.monotonic() - self.last < quiet_s:
            time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="don't pace the audio at real time")
    parser.add_argument("--audio", type=Path, metavar="DIR", default=Path(
        os.environ.get("ROOMSCRIBE_SHARED") or ROOT.parent / "shared") / "audio",
        help="16-bit PCM WAV files and transcripts.tsv: a header line 'file<TAB>text', "
             "then a line for each file, played in that order (default: %(default)s)")
    parser.add_argument("--server", metavar="URL", default="",
                        help="a running realtime server (ws://HOST:PORT/v1/realtime) "
                             "instead of starting one here")
    args = parser.parse_args()
    if args.server and not args.server.startswith(("ws://", "wss://")):
        sys.exit(f"demo: --server {args.server!r}: give a ws:// or wss:// URL, "
                 "e.g. ws://HOST:8765/v1/realtime")
    if not args.server and importlib.util.find_spec("faster_whisper") is None:
        sys.exit(NO_SERVER_EXTRA)
    if not (args.audio / "transcripts.tsv").is_file():
        sys.exit(f"demo: no recordings at {args.audio} (transcripts.tsv and the WAV files)")
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="roomscribe-demo-") as tmp_name:
        tmp = Path(tmp_name)
        refs = build_room(args.audio, tmp / "room.wav")
        broker_port, server_port = free_port(), free_port()
        url = args.server or f"ws://127.0.0.1:{server_port}/v1/realtime"
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
url = "{url}"
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
            print(f"demo: broker on 127.0.0.1:{broker_port}, server at {url}")
            procs.append(subprocess.Popen([mosquitto, "-c", str(tmp / "mosquitto.conf")],
                                          stderr=subprocess.DEVNULL))
            wait_port(broker_port, procs[-1], "mosquitto", 10)
            if not args.server:
                procs.append(subprocess.Popen([*roomscribe, "serve", *cfg], env=env))
                wait_port(server_port, procs[-1], "the server", 120)
            listener = subprocess.Popen([*roomscribe, "listen", *cfg, "--seconds", "86400"],
                                        env=env, stdout=subprocess.PIPE)
            procs.append(listener)
            heard = Lines(listener)
            time.sleep(0.5)
            length = sum(len(read_mono(args.audio / n)[0]) / read_mono(args.audio / n)[1]
                         for n, _ in refs) + GAP_S * (len(refs) + 1)
            pace = "as fast as it goes" if args.fast else f"at real time ({length:.0f} s)"
            print(f"demo: playing {len(refs)} recordings {pace}; transcripts follow\n")
            daemon = subprocess.Popen([*roomscribe, "run", *cfg], env=env)
            procs.append(daemon)  # stopped below if the demo is interrupted
            peak_mb = daemon_peak_mb(daemon)
            heard.settle(SETTLE_S, 60)
            print("\ndemo: what was said:")
            for name, text in refs:
                print(f"  {name}: {text}")
            if heard.count == 0:  # the failure a user sees, whatever the daemon said
                print("demo: FAILED: no transcript arrived over MQTT (the server produced no "
                      "text for the recording; see the log above)", file=sys.stderr)
                return 1
            if daemon.returncode != 0:
                print(f"demo: FAILED: the daemon exited with status {daemon.returncode}",
                      file=sys.stderr)
                return daemon.returncode
            print(f"demo: {heard.count} transcripts arrived; the daemon's peak RSS: "
                  f"{peak_mb:.0f} MB")
            return 0
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
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C: main() has stopped what it started
        print("\ndemo: interrupted", file=sys.stderr)
        sys.exit(130)

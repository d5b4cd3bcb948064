"""Real processes for whole-pipeline tests: the self-hosted server and the daemon,
each as `python -m roomscribe ...` exactly as a user runs them, plus a "room"
recording made of the real speech in ../shared/audio with silences between."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soxr

from conftest import AUDIO_DIR, free_port, reference_texts, wait_port
from timing import scaled, scaled_s

PYTHON = [sys.executable, "-m", "roomscribe"]
SERVER = [sys.executable, "-m", "roomscribe.server"]
CLIPS = ["jfk-44k1-stereo.wav", "lj002-0020-22k05.wav", "lj002-0035-22k05.wav",
         "ami-es2011a-16k.wav"]


def read_mono(name: str, rate_hz: int = 16000) -> np.ndarray:
    """A shared recording down-mixed and resampled (soxr) straight to `rate_hz`, as
    float32 on the int16 scale."""
    with wave.open(str(AUDIO_DIR / name)) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), np.int16)
        mono = data.reshape(-1, w.getnchannels()).astype(np.float32).mean(axis=1)
        rate = w.getframerate()
    return soxr.resample(mono, rate, rate_hz) if rate != rate_hz else mono


def read_mono_16k(name: str) -> np.ndarray:
    return read_mono(name, 16000)


@dataclass
class Room:
    path: Path
    clips: list[str]
    # (start_s, end_s) of each clip inside the recording
    spans: list[tuple[float, float]]

    @property
    def references(self) -> list[str]:
        refs = reference_texts()
        return [refs[c] for c in self.clips]


def make_room(path: Path, clips: list[str] | None = None, gap_s: float = 2.0,
              rate_hz: int = 44100, channels: int = 2, tail_s: float = 0.0) -> Room:
    """Clips with gap_s of quiet between, written as a USB mic delivers (44.1 kHz
    stereo by default) so the capture path resamples and down-mixes for real."""
    clips = CLIPS if clips is None else clips
    rng = np.random.default_rng(7)
    parts, spans, t = [], [], gap_s

    def quiet(seconds: float) -> np.ndarray:
        return rng.normal(0, 8, int(seconds * 16000)).astype(np.float32)  # -72 dBFS hiss

    parts.append(quiet(gap_s))
    for clip in clips:
        speech = read_mono_16k(clip)
        parts += [speech, quiet(gap_s)]
        spans.append((t, t + len(speech) / 16000))
        t += len(speech) / 16000 + gap_s
    parts.append(quiet(tail_s))
    mono = np.concatenate(parts)
    if rate_hz != 16000:
        mono = soxr.resample(mono, 16000, rate_hz)
    pcm = np.clip(mono, -32768, 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(np.repeat(pcm[:, None], channels, axis=1).tobytes())
    return Room(path, clips, spans)


@dataclass
class Proc:
    args: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._fh = self.log.open("ab")
        self.proc = subprocess.Popen(self.args, stdout=self._fh, stderr=subprocess.STDOUT,
                                     env={**os.environ, **self.env})

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(scaled(timeout_s))

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(scaled(timeout_s))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(scaled(5))
            return None

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait(scaled(5))

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def server_config(tmp: Path, port: int, extra: str = "") -> Path:
    path = tmp / f"server-{port}.toml"
    path.write_text(f"[server]\nport = {port}\n{extra}")
    return path


def start_server(tmp: Path, port: int | None = None, extra: str = "") -> tuple[Proc, int]:
    port = port or free_port()
    proc = Proc([*SERVER, "--config", str(server_config(tmp, port, extra))],
                tmp / f"server-{port}.log")
    proc.start()
    deadline = time.monotonic() + scaled(120)
    while time.monotonic() < deadline:
        assert proc.proc is not None
        if proc.proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{proc.output()[-2000:]}")
        try:
            wait_port(port, timeout_s=0.5)
            return proc, port
        except TimeoutError:
            pass
    raise TimeoutError(f"server did not listen on {port}")


def daemon_config(tmp: Path, *, server_port: int, broker_port: int, wav: Path | None = None,
                  realtime: bool = True, extra: str = "", device: str = "test",
                  mqtt_extra: str = "") -> Path:
    """A daemon's config; `extra` is appended (tables), `mqtt_extra` goes into [mqtt]."""
    capture = (f'[capture]\nsource = "file"\nfile = "{wav}"\n'
               f"file_realtime = {str(realtime).lower()}\n") if wav else ""
    path = tmp / f"daemon-{device}.toml"
    path.write_text(f"""
[device]
id = "{device}"
room = "Test room"
{capture}
[uplink]
url = "ws://127.0.0.1:{server_port}/v1/realtime"
final_timeout_s = {scaled_s(30)}
backoff_max_s = 2
[mqtt]
port = {broker_port}
{mqtt_extra}[state]
dir = "{tmp / ('state-' + device)}"
[log]
level = "debug"
{extra}
""")
    return path


def start_daemon(tmp: Path, config: Path, env: dict[str, str] | None = None,
                 name: str = "daemon") -> Proc:
    proc = Proc([*PYTHON, "run", "--config", str(config)], tmp / f"{name}.log",
                env=env or {})
    proc.start()
    return proc

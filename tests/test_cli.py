"""The appliance commands as a user runs them, against real parts.

`roomscribe check --connect` tries a real ALSA capture device (ALSA's `file` plugin
reading a FIFO fed with real speech at real time), the real self-hosted server and a
real Mosquitto; `level` meters that device; `devices` lists a working and a broken
PCM; the daemon talks to a systemd-style notify socket the test binds; `--version`,
`--help` and `check` without `--connect` round it off.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import Broker, free_port
from stack import CLIPS, PYTHON, make_room, start_server
from test_pipeline import FifoMic, alsa_config
from test_publish import password_broker  # noqa: F401  (a fixture, used by name)
from timing import scaled, scaled_s

ROOMSCRIBE = str(Path(sys.executable).parent / "roomscribe")
KEY = "right"  # the one token the test server accepts
MQTT_USER, MQTT_PASS = "mic", "s3cret-Pa55"  # what test_publish's password_broker knows
SECRET_VARS = ("TOGETHER_API_KEY", "MQTT_PASSWORD", "NOTIFY_SOCKET", "WATCHDOG_USEC",
               "WATCHDOG_PID", "ALSA_CONFIG_PATH", "CREDENTIALS_DIRECTORY")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARS}
    return {**env, **extra}


def run_cli(*args: str, env: dict[str, str] | None = None,
            timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ROOMSCRIBE, *args], capture_output=True, text=True,
                          timeout=scaled(timeout_s), env=env or clean_env())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The real self-hosted server, accepting only the key KEY."""
    proc, port = start_server(tmp_path_factory.mktemp("server"),
                              extra=f'tokens = ["{KEY}"]\n')
    yield port
    proc.stop()


@contextlib.contextmanager
def fifo_mic(tmp: Path, wav: Path) -> Iterator[dict[str, str]]:
    """An ALSA capture PCM `roommic` that hears `wav` at real time, then silence.
    Yields the environment that makes a child process see it."""
    where = Path(tempfile.mkdtemp(dir=tmp, prefix="mic-"))
    fifo = where / "mic.fifo"
    mic = FifoMic(wav, fifo)
    try:
        yield clean_env(ALSA_CONFIG_PATH=str(alsa_config(where, fifo)))
    finally:
        # A writer still waiting for a reader (the device was never opened) is let go.
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        mic.stop()
        os.close(fd)


def write_wav(path: Path, pcm: np.ndarray, rate_hz: int = 44100, channels: int = 2) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(np.repeat(pcm.astype("<i2")[:, None], channels, axis=1).tobytes())
    return path


def check_config(tmp: Path, *, server_port: int, broker_port: int, device: str = "roommic",
                 username: str = "", name: str = "check") -> Path:
    path = tmp / f"{name}.toml"
    user = f'username = "{username}"\n' if username else ""
    path.write_text(f"""
[device]
id = "kitchen"
[capture]
source = "alsa"
device = "{device}"
rate_hz = 44100
channels = 2
[uplink]
url = "ws://127.0.0.1:{server_port}/v1/realtime"
connect_timeout_s = {scaled_s(10)}
[mqtt]
port = {broker_port}
{user}
[state]
dir = "{tmp / 'state'}"
""")
    return path


def verdicts(out: str) -> dict[str, str]:
    """part -> its `ok`/`FAIL` line, from check --connect's output."""
    found = {}
    for line in out.splitlines():
        m = re.match(r"(ok  |FAIL) (microphone|transcription server|broker): ", line)
        if m:
            found[m.group(2)] = line
    return found


# -- check --connect -------------------------------------------------------------------


@pytest.mark.server
def test_check_connect_each_part_working_then_broken_in_turn(
        tmp_path: Path, server: int, password_broker: Broker) -> None:  # noqa: F811
    speech = make_room(tmp_path / "speech.wav", CLIPS[:1], gap_s=0.2).path  # 44.1k stereo
    zeros = write_wav(tmp_path / "zeros.wav", np.zeros(0))
    broker_port = password_broker.port
    good = check_config(tmp_path, server_port=server, broker_port=broker_port,
                        username=MQTT_USER)

    def check(config: Path, wav: Path = speech, key: str = KEY,
              password: str = MQTT_PASS) -> tuple[int, dict[str, str], str]:
        with fifo_mic(tmp_path, wav) as env:
            env.update(TOGETHER_API_KEY=key, MQTT_PASSWORD=password)
            done = run_cli("check", "--connect", "--config", str(config), env=env)
        out = done.stdout + done.stderr
        assert "Traceback" not in out, out
        return done.returncode, verdicts(done.stdout), out

    def broken(part: str, rc: int, lines: dict[str, str], out: str) -> str:
        """Exactly `part` fails (exit 1), the other two still work."""
        assert rc == 1, out
        assert lines[part].startswith("FAIL"), out
        assert " -> " in lines[part], f"no fix hint: {lines[part]}"
        others = set(lines) - {part}
        assert others == {"microphone", "transcription server", "broker"} - {part}, out
        assert all(lines[p].startswith("ok") for p in others), out
        return lines[part]

    # everything works: three ok lines, exit 0
    rc, lines, out = check(good)
    assert rc == 0, out
    assert list(lines) == ["microphone", "transcription server", "broker"], out
    assert all(line.startswith("ok") for line in lines.values()), out
    mic_db = re.search(r"(-?\d+) dBFS rms", lines["microphone"])
    assert mic_db and -50 < int(mic_db.group(1)) < 0, lines["microphone"]  # speech level
    assert "session" in lines["transcription server"]
    assert f"as {MQTT_USER}" in lines["broker"]
    assert MQTT_PASS not in out and f'"{KEY}"' not in out

    # a device name ALSA does not know
    typo = check_config(tmp_path, server_port=server, broker_port=broker_port,
                        username=MQTT_USER, device="roomimc", name="typo")
    line = broken("microphone", *check(typo))
    assert "roomimc" in line and "no such PCM" in line and "roommic" in line, line

    # a device that opens but hears only digital silence
    line = broken("microphone", *check(good, wav=zeros))
    assert "hears nothing" in line and "gain" in line, line

    # no server listening
    down = check_config(tmp_path, server_port=free_port(), broker_port=broker_port,
                        username=MQTT_USER, name="server-down")
    line = broken("transcription server", *check(down))
    assert "connection refused" in line and "roomscribe serve" in line, line

    # the server is up but rejects the key
    wrong_key = "wr0ng-Key-4711"
    rc, lines, out = check(good, key=wrong_key)
    line = broken("transcription server", rc, lines, out)
    assert "401" in line and "API key" in line, line
    assert wrong_key not in out

    # the broker rejects the password
    wrong_pass = "wr0ng-Pass-0815"
    rc, lines, out = check(good, password=wrong_pass)
    line = broken("broker", rc, lines, out)
    assert "refused" in line and "password" in line, line
    assert wrong_pass not in out

    # the broker is down
    password_broker.stop()
    line = broken("broker", *check(good))
    assert str(broker_port) in line and "connection refused" in line, line
    assert "broker running" in line, line


# -- level -----------------------------------------------------------------------------


def meter_readings(out: str) -> list[tuple[float, float]]:
    """(rms, peak) dBFS of each line `roomscribe level` prints when piped."""
    return [(float(m.group(1)), float(m.group(2))) for m in re.finditer(
        r"^rms +(-?[\d.]+) dBFS +peak +(-?[\d.]+) dBFS +\[[#-]+\]", out, re.MULTILINE)]


def test_level_meters_real_speech_and_a_sine_of_known_level(tmp_path: Path) -> None:
    config = tmp_path / "level.toml"
    config.write_text('[capture]\nsource = "alsa"\ndevice = "roommic"\n'
                      "rate_hz = 44100\nchannels = 2\n")
    speech = make_room(tmp_path / "speech.wav", CLIPS[:1], gap_s=0.2).path
    with fifo_mic(tmp_path, speech) as env:
        done = run_cli("level", "--seconds", "2", "--config", str(config), env=env)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    readings = meter_readings(done.stdout)
    assert len(readings) >= 5, done.stdout  # about one reading per 200 ms
    assert -50 < max(rms for rms, _ in readings) < 0, done.stdout
    assert all(peak >= rms for rms, peak in readings), done.stdout

    # 1 kHz at -20 dBFS rms (resampled 44.1k stereo -> 16k mono keeps its level)
    t = np.arange(44100 * 4) / 44100
    sine = np.round(32768 * 10 ** (-20 / 20) * np.sqrt(2) * np.sin(2 * np.pi * 1000 * t))
    with fifo_mic(tmp_path, write_wav(tmp_path / "sine.wav", sine)) as env:
        done = run_cli("level", "--seconds", "2", "--config", str(config), env=env)
    assert done.returncode == 0, done.stderr
    readings = meter_readings(done.stdout)
    assert len(readings) >= 5, done.stdout
    # a sine's peak is 3 dB above its rms
    assert all(abs(rms - -20.0) <= 1.0 and abs(peak - -17.0) <= 1.0
               for rms, peak in readings), done.stdout


def test_level_on_a_mic_that_is_not_there_says_so_and_exits(tmp_path: Path) -> None:
    """It used to log "retrying in 1 s" once and then sit there, --seconds or not."""
    conf = tmp_path / "asound.conf"
    conf.write_text("</usr/share/alsa/alsa.conf>\n"
                    'pcm.gonemic {\n type file\n slave.pcm "null"\n file "/dev/null"\n'
                    f' infile "{tmp_path / "unplugged" / "in.raw"}"\n format "raw"\n}}\n')
    config = tmp_path / "level.toml"
    config.write_text('[capture]\ndevice = "gonemic"\n')
    done = run_cli("level", "--seconds", "2", "--config", str(config),
                   env=clean_env(ALSA_CONFIG_PATH=str(conf)), timeout_s=30)
    assert done.returncode == 2, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("roomscribe: level: capture.device 'gonemic': "), done.stderr
    assert "roomscribe devices" in last and "Traceback" not in done.stderr
    assert not done.stdout


# -- devices ---------------------------------------------------------------------------


def test_devices_lists_a_working_and_a_broken_pcm(tmp_path: Path) -> None:
    recording = tmp_path / "in.raw"
    recording.write_bytes(bytes(64000))
    conf = tmp_path / "asound.conf"
    conf.write_text("</usr/share/alsa/alsa.conf>\n"
                    f'pcm.goodmic {{\n type file\n slave.pcm "null"\n file "/dev/null"\n'
                    f' infile "{recording}"\n format "raw"\n}}\n'
                    'pcm.gonemic {\n type file\n slave.pcm "null"\n file "/dev/null"\n'
                    f' infile "{tmp_path / "unplugged" / "in.raw"}"\n format "raw"\n}}\n')
    # With a mistake in the config a command reads by default (the service's, being
    # edited): `devices` is how the user finds the capture.device to put there.
    broken = tmp_path / "config.toml"
    broken.write_text('[capture]\ndevice = "plughw:CARD=\n')
    done = run_cli("devices", env=clean_env(ALSA_CONFIG_PATH=str(conf),
                                            ROOMSCRIBE_CONFIG=str(broken)))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = {line.split(":")[0]: line for line in done.stdout.splitlines()}
    assert "goodmic" in lines and "gonemic" in lines, done.stdout
    assert "16000" in lines["goodmic"] and "unavailable" not in lines["goodmic"]
    assert "unavailable" in lines["gonemic"], lines["gonemic"]


# -- the watchdog, at daemon level ---------------------------------------------------


class NotifySocket:
    """What systemd binds for Type=notify: an AF_UNIX datagram socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, str]] = []

    def collect(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def times(self, message: str, since: float = 0.0) -> list[float]:
        return [t for t, m in self.messages if m == message and t >= since]

    def close(self) -> None:
        self.sock.close()


@pytest.mark.server
def test_watchdog_pings_only_while_audio_flows(tmp_path: Path, server: int,
                                               broker: Broker) -> None:
    config = tmp_path / "daemon.toml"
    config.write_text(f"""
[capture]
source = "stdin"
rate_hz = 16000
channels = 1
[gate]
mode = "off"
[uplink]
url = "ws://127.0.0.1:{server}/v1/realtime"
final_timeout_s = {scaled_s(5)}
[mqtt]
port = {broker.port}
[state]
dir = "{tmp_path / 'state'}"
""")
    notify = NotifySocket(tmp_path / "notify.sock")
    log = tmp_path / "daemon.log"
    # WatchdogSec=2: pings every second; a stall is declared after at most 2 s.
    env = clean_env(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="2000000",
                    TOGETHER_API_KEY=KEY)
    with log.open("wb") as fh:
        proc = subprocess.Popen([*PYTHON, "run", "--config", str(config)],
                                stdin=subprocess.PIPE, stdout=fh, stderr=subprocess.STDOUT,
                                env=env)
    assert proc.stdin is not None

    def output() -> str:
        return log.read_text(errors="replace")[-3000:]

    block = bytes(3200)  # 100 ms of digital silence, 16 kHz mono s16le

    def feed(seconds: float) -> None:
        assert proc.stdin is not None
        t = time.monotonic()
        for _ in range(round(seconds * 10)):
            proc.stdin.write(block)
            proc.stdin.flush()
            notify.collect(max(0.0, t + 0.1 - time.monotonic()))
            t += 0.1

    try:
        notify.collect(0)
        feed(5.0)
        assert notify.times("READY=1"), f"{notify.messages}\n{output()}"
        fed_until = time.monotonic()
        pings = notify.times("WATCHDOG=1")
        # systemd needs one within every WatchdogSec; they come every WatchdogSec / 2
        assert len(pings) >= 3, notify.messages
        assert max(b - a for a, b in itertools.pairwise(pings)) < 2.0, pings
        # the microphone stops delivering (stdin stays open): the pings stop (within
        # the 2 s stall bound; 5 s leaves room for a slow machine), so systemd would
        # restart the unit
        notify.collect(8.0)
        assert proc.poll() is None, output()
        assert notify.times("WATCHDOG=1", since=fed_until + 5.0) == [], notify.messages

        # audio comes back: the pings resume
        feed(1.5)
        assert notify.times("WATCHDOG=1", since=fed_until + 8.0), notify.messages

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(scaled(30)) == 0, output()
        notify.collect(0.2)
        assert "STOPPING=1" in [m for _, m in notify.messages], notify.messages
        # what `systemctl status` shows: one line each, and here the server was reached
        statuses = [m for _, m in notify.messages if m.startswith("STATUS=")]
        assert any(s.startswith("STATUS=streaming, ") for s in statuses), statuses
        assert "Traceback" not in log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(scaled(5))
        proc.stdin.close()
        notify.close()


# -- version, help, check ------------------------------------------------------------


def test_version_and_help() -> None:
    done = run_cli("--version")
    assert done.returncode == 0 and re.fullmatch(r"roomscribe \d+\.\d+\S*\n", done.stdout)
    done = subprocess.run([*PYTHON, "--help"], capture_output=True, text=True, timeout=scaled(30),
                          env=clean_env())
    assert done.returncode == 0
    for command in ("run", "check", "devices", "level", "listen", "serve"):
        assert command in done.stdout


def test_check_prints_settings_with_secrets_masked(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[device]\nid = "hall"\n[mqtt]\nusername = "mic"\n'
                      '[server]\ntokens = ["t0ken-Server-99"]\n')
    secrets = {"TOGETHER_API_KEY": "sk-Secret-Key-123", "MQTT_PASSWORD": "Mqtt-Pass-456"}
    done = run_cli("check", "--config", str(config), env=clean_env(**secrets))
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    for secret in [*secrets.values(), "t0ken-Server-99"]:
        assert secret not in out
    assert out.count("(set, hidden)") == 3, out
    assert '"id": "hall"' in out and f"{config}: OK" in out


@pytest.mark.parametrize("argv", [["listen", "--seconds", "-3"], ["listen", "--seconds", "nan"],
                                  ["listen", "--count", "0"], ["level", "--seconds", "0"]])
def test_a_time_or_count_that_would_stop_at_once_or_never_is_refused(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from roomscribe.cli import build_parser

    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(argv)
    assert stopped.value.code == 2
    assert f"argument {argv[1]}: '{argv[2]}' is not a" in capsys.readouterr().err
    assert build_parser().parse_args([argv[0], argv[1], "2"]).__dict__[argv[1][2:]] == 2


def test_check_says_which_gate_run_would_use(tmp_path: Path) -> None:
    """gate.mode = "webrtc" without its package: `run` gates by energy and logs why;
    `check` says the same before its OK (it said only OK)."""
    import importlib.util

    config = tmp_path / "c.toml"
    config.write_text(f'[gate]\nmode = "webrtc"\n[state]\ndir = "{tmp_path / "s"}"\n')
    done = run_cli("check", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{config}: OK")
    if importlib.util.find_spec("webrtcvad") is None:
        assert done.stderr.strip() == (
            "ERROR roomscribe.gate: gate.mode = 'webrtc' needs the package webrtcvad-wheels "
            "(pip install webrtcvad-wheels); using gate.mode = 'energy' instead")
    else:
        assert not done.stderr.strip()

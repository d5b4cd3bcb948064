"""The unit files: systemd accepts them, their sandbox scores well, and audio still works in it."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sys
import textwrap
import wave
from pathlib import Path

import pytest

from conftest import AUDIO_DIR, REPO
from roomscribe import credentials
from timing import scaled

UNITS = REPO / "systemd"
EXEC = Path("opt/roomscribe/venv/bin/roomscribe")
SYSTEM_UNITS = Path("/usr/lib/systemd/system")

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or not SYSTEM_UNITS.is_dir(),
    reason="systemd-analyze not installed (apt-get install systemd)",
)


def directives(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (UNITS / unit).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def scratch_root(tmp_path: Path, with_exec: bool = True) -> Path:
    """A tree that `systemd-analyze verify --root=` can resolve: the system's own
    targets, our units, and (unless told otherwise) the executable they start."""
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    for unit in UNITS.glob("*.service"):
        shutil.copy(unit, etc / unit.name)
    if with_exec:
        (root / EXEC).parent.mkdir(parents=True)
        (root / EXEC).write_text("#!/bin/sh\n")
        (root / EXEC).chmod(0o755)
    return root


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True,
                          timeout=scaled(60), check=False)


UNIT_NAMES = ["roomscribe.service", "roomscribe-server.service"]


@needs_analyze
@pytest.mark.parametrize("unit", UNIT_NAMES)
def test_systemd_accepts_the_unit_without_complaint(tmp_path: Path, unit: str) -> None:
    result = analyze("verify", f"--root={scratch_root(tmp_path)}", "--man=no", unit)
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if "roomscribe" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


@needs_analyze
def test_verify_would_catch_a_missing_executable(tmp_path: Path) -> None:
    """Guards the test above: its scratch root really is what verify checks."""
    root = scratch_root(tmp_path, with_exec=False)
    result = analyze("verify", f"--root={root}", "--man=no", "roomscribe.service")
    assert result.returncode != 0
    assert "/opt/roomscribe/venv/bin/roomscribe" in result.stderr


@needs_analyze
@pytest.mark.parametrize("unit", UNIT_NAMES)
def test_exposure_is_at_most_2(unit: str) -> None:
    result = analyze("security", "--offline=yes", "--no-pager", str(UNITS / unit))
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_daemon_unit_keeps_audio_and_the_watchdog() -> None:
    d = directives("roomscribe.service")
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["WatchdogSec"] == ["30"]
    assert d["ExecStart"][0].startswith(f"/{EXEC} run ")
    assert "yes" not in d.get("PrivateDevices", [])  # would hide /dev/snd
    assert d["DeviceAllow"] == ["char-alsa rw"] and d["SupplementaryGroups"] == ["audio"]
    # Every secret the daemon reads is loaded from where install.sh puts it (the
    # server token was not: a LAN server behind Together got no token, 401), and each
    # is optional: a SetCredential fallback of the same id.
    loaded = dict(v.split(":", 1) for v in d["LoadCredential"])
    fallback = {v.split(":")[0] for v in d["SetCredential"]}
    assert set(loaded) == fallback == set(credentials.CREDENTIALS)
    assert all(path == f"/etc/roomscribe/{name}" for name, path in loaded.items())


def test_server_unit_runs_serve_without_devices() -> None:
    d = directives("roomscribe-server.service")
    # The accepted tokens as a credential (optional), out of the world-readable config.
    assert d["LoadCredential"] == [f"{credentials.SERVER_TOKENS}:/etc/roomscribe/"
                                   f"{credentials.SERVER_TOKENS}"]
    assert [v.split(":")[0] for v in d["SetCredential"]] == [credentials.SERVER_TOKENS]
    assert d["ExecStart"][0].startswith(f"/{EXEC} serve ")
    assert d["PrivateDevices"] == ["yes"]
    assert d["MemoryMax"] == ["1500M"]


def _mdwe_available() -> bool:
    """prctl(PR_GET_MDWE) answers on Linux 6.3+, the kernel's form of W^X."""
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(66, 0, 0, 0, 0) >= 0)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _mdwe_available(),
                    reason="kernel without PR_SET_MDWE (Linux < 6.3)")
def test_capture_stack_works_without_writable_executable_memory(tmp_path: Path) -> None:
    """The daemon unit sets MemoryDenyWriteExecute=yes: real ALSA capture (file plugin),
    soxr, sqlite and TLS set-up must all work under that rule."""
    raw = tmp_path / "speech.raw"
    with wave.open(str(AUDIO_DIR / "ami-es2011a-16k.wav")) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
        raw.write_bytes(wav.readframes(wav.getnframes()))
    conf = tmp_path / "asound.conf"
    conf.write_text(textwrap.dedent(f"""
        pcm.roomscribe_test {{
            type file
            slave.pcm {{ type null }}
            file "/dev/null"
            infile "{raw}"
            format "raw"
        }}
    """))
    script = textwrap.dedent("""
        import ctypes, mmap, sqlite3, ssl, sys
        assert ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) == 0  # PR_SET_MDWE, refuse exec gain
        try:
            mmap.mmap(-1, 4096, prot=7)
            sys.exit("W^X is not enforced")
        except OSError:
            pass
        import alsaaudio, numpy as np, soxr
        pcm = alsaaudio.PCM(alsaaudio.PCM_CAPTURE, device="roomscribe_test", channels=1,
                            rate=16000, format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=1024)
        data = b"".join(pcm.read()[1] for _ in range(10))
        stream = soxr.ResampleStream(16000, 8000, 1, dtype="int16")
        out = stream.resample_chunk(np.frombuffer(data, dtype=np.int16))
        sqlite3.connect(":memory:").execute("create table t(x)")
        ssl.create_default_context()
        sys.stdout.buffer.write(data)
        sys.stderr.write(f"resampled {len(out)}\\n")
    """)
    env = {"ALSA_CONFIG_PATH": str(conf), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env,
                            timeout=scaled(60), check=False)
    assert result.returncode == 0, result.stderr.decode()
    captured = result.stdout
    assert len(captured) == 10 * 1024 * 2
    assert captured == raw.read_bytes()[: len(captured)]  # the real speech, not silence

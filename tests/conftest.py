"""Shared fixtures: real speech, free ports, a real Mosquitto per test."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from timing import SLOWDOWN, SOURCE, scaled

REPO = Path(__file__).resolve().parent.parent
# A command run without --config reads the installed service's /etc/roomscribe/config.toml:
# on a machine where the service is installed, the tests must still see the defaults.
os.environ["ROOMSCRIBE_CONFIG"] = ""
# shared/ beside the checkout, or where scripts/bootstrap.sh found it.
AUDIO_DIR = (Path(os.environ.get("ROOMSCRIBE_SHARED") or REPO.parent / "shared")
             / "audio").resolve()


# The server extra (faster-whisper, onnxruntime) installs on 64-bit machines only:
# ctranslate2 and onnxruntime publish no 32-bit ARM wheels. Without it the server's
# tests are skipped with this reason: the marked ones here, tests/server/ modules by
# their importorskip.
HAS_SERVER_EXTRA = importlib.util.find_spec("faster_whisper") is not None
NO_SERVER_EXTRA = ("needs the server extra (faster-whisper, onnxruntime), which is not "
                   "installed: the server extra is 64-bit only (ctranslate2 and "
                   "onnxruntime have no armv7l wheels)")


def pytest_report_header() -> list[str]:
    lines = [f"roomscribe: waits scaled x{SLOWDOWN:g} ({SOURCE}; "
             "ROOMSCRIBE_TEST_SLOWDOWN sets it)"]
    if not HAS_SERVER_EXTRA:
        lines.append(f"roomscribe: server tests skipped: {NO_SERVER_EXTRA}")
    return lines


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skips the server's tests without its extra; scales pytest-timeout's limit (the
    ini's or a test's own marker) like every wait."""
    if not HAS_SERVER_EXTRA:
        for item in items:
            if item.get_closest_marker("server") is not None:
                item.add_marker(pytest.mark.skip(reason=NO_SERVER_EXTRA))
    if SLOWDOWN == 1.0:
        return
    default = getattr(config, "_env_timeout", None)
    for item in items:
        marker = item.get_closest_marker("timeout")
        base = marker.args[0] if marker is not None and marker.args else default
        if base:
            item.add_marker(pytest.mark.timeout(float(base) * SLOWDOWN), append=False)


def reference_texts() -> dict[str, str]:
    with (AUDIO_DIR / "transcripts.tsv").open(encoding="utf-8") as fh:
        return {row["file"]: row["text"] for row in csv.DictReader(fh, delimiter="\t")}


def words(text: str) -> list[str]:
    """Lower-case words without punctuation, for comparing transcripts."""
    cleaned = "".join(c.lower() if c.isalnum() or c == "'" else " " for c in text)
    return cleaned.split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + scaled(timeout_s)
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@dataclass
class Broker:
    port: int
    conf: Path
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(scaled(5))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(scaled(5))

    def start(self) -> None:
        """(Re)start on the same port, e.g. after a simulated broker reboot."""
        self.stop()
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)


def start_broker(tmp: Path, extra: str = "") -> Broker:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                    f"persistence false\n{extra}")
    proc = subprocess.Popen([exe, "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return Broker(port, conf, proc)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = start_broker(tmp_path)
    yield b
    b.stop()


@pytest.fixture
def persistent_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker that keeps sessions, queued and retained messages across restarts (as
    root, `user root`: mosquitto would otherwise drop to a user that cannot write here)."""
    data = tmp_path / "mosquitto-data"
    data.mkdir()
    b = start_broker(tmp_path, f"persistence true\npersistence_location {data}/\nuser root\n")
    yield b
    b.stop()


NUMBERS = {"1813": "eighteen thirteen", "8": "eight"}


def normal_words(text: str) -> list[str]:
    """words() with the digits tiny.en writes spelled out as the references do."""
    out: list[str] = []
    for word in words(text):
        out += NUMBERS.get(word, word).split()
    return out


def assert_heard(texts: list[str], references: list[str], min_ratio: float = 0.8) -> None:
    """What a user checks: the words said arrive, in order, and none twice.

    The order and loss check is an alignment of all words heard against all words
    said (tiny.en mishears a word here and there); the duplicate check is that no
    more words arrive than were said, give or take a misheard split.
    """
    import difflib

    said = [w for ref in references for w in normal_words(ref)]
    heard = [w for text in texts for w in normal_words(text)]
    ratio = difflib.SequenceMatcher(a=said, b=heard, autojunk=False).ratio()
    assert ratio >= min_ratio, f"heard {heard}\nsaid  {said}\nratio {ratio:.2f}"
    assert len(heard) <= len(said) * 1.15 + 2, f"more words than said: {heard}"


class SmallDisk:
    """A real, small file system (tmpfs) that can be filled to the last byte."""

    def __init__(self, where: Path) -> None:
        self.path = where
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(where)],
                              capture_output=True, timeout=scaled(10))
        if done.returncode != 0:
            pytest.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN): "
                        + done.stderr.decode(errors="replace").strip())

    def fill(self) -> None:
        # ENOSPC ends it: the disk is full.
        with (self.path / "fill").open("wb", buffering=0) as fh, contextlib.suppress(OSError):
            while fh.write(b"\0" * 4096):
                pass

    def free(self) -> None:
        (self.path / "fill").unlink()

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True,
                       timeout=scaled(10))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "disk")
    yield disk
    disk.unmount()

"""scripts/demo.py: it succeeds only when transcripts arrive, and says why it fails."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from conftest import REPO, free_port
from timing import scaled

DEMO = [sys.executable, str(REPO / "scripts" / "demo.py")]


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DEMO, *args], capture_output=True, text=True,
                          timeout=scaled(300), check=False)


@pytest.fixture
def mute_server() -> Iterator[int]:
    """A realtime server that accepts the session and the audio but never answers."""
    port = free_port()
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop: asyncio.Future[None] = loop.create_future()

    async def handler(conn: ServerConnection) -> None:
        await conn.send(json.dumps({"type": "session.created", "session": {"id": "sess_m"}}))
        async for _ in conn:
            pass

    async def main() -> None:
        async with serve(handler, "127.0.0.1", port):
            ready.set()
            await stop

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(scaled(10)), "the mute server did not start"
    yield port
    loop.call_soon_threadsafe(stop.set_result, None)
    thread.join(scaled(10))


def test_no_transcript_is_a_failure(mute_server: int) -> None:
    done = run_demo("--fast", "--server", f"ws://127.0.0.1:{mute_server}/v1/realtime")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "demo: FAILED: no transcript arrived over MQTT" in done.stderr
    assert "transcripts arrived" not in done.stdout


def test_a_bad_server_url_is_one_line() -> None:
    done = run_demo("--server", "http://example.invalid")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "demo: --server 'http://example.invalid': give a ws:// or wss:// URL, "
        "e.g. ws://HOST:8765/v1/realtime"]


@pytest.mark.server
def test_the_demo_prints_transcripts() -> None:
    done = run_demo("--fast")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "fellow americans" in done.stdout.lower()
    assert "transcripts arrived; the daemon's peak RSS" in done.stdout


def write_wav(path: Path, sample_width: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(sample_width)
        w.setframerate(16000)
        w.writeframes(b"\0" * sample_width * 1600)


@pytest.mark.parametrize(("tsv", "files", "error"), [
    ("a.wav\tHello.\n", {}, "transcripts.tsv: line 1 must be the header 'file<TAB>text'"),
    ("file\ttext\n", {}, "transcripts.tsv: no recordings listed under the header"),
    ("file\ttext\nb.wav\tHello.\n", {}, "b.wav: no such file (listed in transcripts.tsv)"),
    ("file\ttext\nc.wav\tHello.\n", {"c.wav": 3},
     "c.wav: 24-bit samples; give 16-bit PCM WAV files"),
    ("file\ttext\nd.wav\tHello.\n", {"d.wav": 0}, "d.wav: not a 16-bit PCM WAV file"),
    ("file\ttext\ne\tHello.\n", {"e": -1}, "e: Is a directory"),
    ("file\ttext\nf.wav\tCaf\xe9.\n".encode("latin-1"), {}, "transcripts.tsv: not UTF-8 text"),
])
def test_bad_recordings_are_one_line_naming_the_file(
        tmp_path: Path, tsv: str | bytes, files: dict[str, int], error: str) -> None:
    tsv_path = tmp_path / "transcripts.tsv"
    tsv_path.write_bytes(tsv if isinstance(tsv, bytes) else tsv.encode())
    for name, width in files.items():  # width 0: not a WAV; -1: a folder
        if width > 0:
            write_wav(tmp_path / name, width)
        elif width == 0:
            (tmp_path / name).write_bytes(b"not a wav file at all")
        else:
            (tmp_path / name).mkdir()
    # A server that would refuse: the recordings are read before anything starts.
    done = run_demo("--audio", str(tmp_path), "--server", "ws://127.0.0.1:9/v1/realtime")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"demo: {tmp_path}/"), lines
    assert error in lines[0], lines


def test_without_the_server_extra_it_says_what_it_needs() -> None:
    # as on 32-bit ARM: faster_whisper cannot be imported, and no --server was given
    hide = ("import runpy, sys; sys.modules['faster_whisper'] = None; "
            f"sys.argv = ['demo.py']; runpy.run_path({str(DEMO[1])!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True,
                          timeout=scaled(60), check=False)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("demo: no server to transcribe with: "), lines
    assert "64-bit only" in lines[0] and "--server ws://HOST:8765/v1/realtime" in lines[0]

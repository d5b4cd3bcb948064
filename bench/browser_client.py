"""A real web browser as a client of `roomscribe serve` (not in CI: it needs Chromium).

Together's browser-style handshake is tested byte for byte in
tests/server/test_server_clients.py; this checks it with the real thing. A headless
Chromium (Debian's `chromium`) opens bench/browser_client.html, a page written as a web
developer would: its microphone through getUserMedia and an AudioWorklet, converted to
16 or 24 kHz by the browser's own AudioContext, base64 `input_audio_buffer.append`
every 100 ms, the key in a subprotocol (a page cannot set headers) or in the query.
Chromium's fake microphone plays the four shared recordings (48 kHz, 1.5 s gaps) at
real time. The page posts every event back; this script prints the subprotocol and
extensions the browser agreed, the transcripts, and the words tiny.en gets offline
that did not arrive, or arrived twice.

    apt-get install chromium
    uv run --extra server python bench/browser_client.py   # ~35 s a run, 3 runs
"""

from __future__ import annotations

import argparse
import difflib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT.parent / "tests"), str(ROOT.parent / "tests" / "server")]

from conftest import free_port, reference_texts, wait_port  # noqa: E402
from server_support import normalise, speech, transcriber  # noqa: E402

KEY = "tgp-Browser-Key-1"
NAMES = ["jfk-44k1-stereo.wav", "lj002-0020-22k05.wav", "lj002-0035-22k05.wav",
         "ami-es2011a-16k.wav"]
MIC_HZ = 48000  # what a browser's microphone runs at
GAP_S = 1.5
COMPLETED = "conversation.item.input_audio_transcription.completed"
# (how the key travels, the rate the page's AudioContext converts to)
RUNS = [("subprotocol", 16000), ("subprotocol", 24000), ("query", 16000)]


def mic_wav(folder: Path) -> tuple[Path, float]:
    gap = np.zeros(int(GAP_S * MIC_HZ), np.int16)
    pcm = np.concatenate([gap, *[np.concatenate([speech(n, MIC_HZ), gap]) for n in NAMES],
                          gap])
    path = folder / "mic.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(MIC_HZ)
        w.writeframes(pcm.tobytes())
    return path, len(pcm) / MIC_HZ


def page_server(reports: list[tuple[str, dict[str, Any]]]) -> int:
    page = (ROOT / "browser_client.html").read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            reports.append((self.path.rsplit("/", 1)[-1], body))
            self.send_response(204)
            self.end_headers()

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, name="page", daemon=True).start()
    return port


def browse(chromium: str, url: str, wav: Path, seconds: float, profile: Path) -> None:
    browser = subprocess.Popen(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={profile}", "--use-fake-ui-for-media-stream",
         "--use-fake-device-for-media-stream",
         f"--use-file-for-fake-audio-capture={wav}%noloop",
         "--autoplay-policy=no-user-gesture-required", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(seconds)
    finally:
        browser.terminate()
        browser.wait(15)


def verdict(texts: list[str]) -> tuple[list[str], int]:
    """(words missing, words beyond those said): what a user would check. The words
    that must arrive are the reference's that tiny.en gets on each whole file offline
    (as in tests/server/test_server_clients.py): a name it spells three ways is not
    the socket's fault."""
    tr = transcriber()
    refs = reference_texts()
    want: list[str] = []
    for name in NAMES:
        offline = set(normalise(tr.transcribe(speech(name), True)))
        want += [w for w in normalise(refs[name]) if w in offline]
    heard = [w for t in texts for w in normalise(t)]
    matcher = difflib.SequenceMatcher(a=want, b=heard, autojunk=False)
    found = {a + k for a, _, size in matcher.get_matching_blocks() for k in range(size)}
    said = sum(len(normalise(refs[n])) for n in NAMES)
    return [w for i, w in enumerate(want) if i not in found], len(heard) - said


def main() -> int:
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print("browser_client: no chromium here (apt-get install chromium)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="browser-client-"))
    wav, seconds = mic_wav(tmp)
    config = tmp / "server.toml"
    config.write_text(f'[server]\ntokens = ["{KEY}"]\n[log]\nlevel = "info"\n')
    ws_port = free_port()
    log = tmp / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen([str(Path(sys.executable).parent / "roomscribe"), "serve",
                                  "--port", str(ws_port), "--host", "127.0.0.1",
                                  "--config", str(config)], stdout=out,
                                 stderr=subprocess.STDOUT)
    failed = 0
    try:
        wait_port(ws_port, 120)
        for n, (style, rate) in enumerate(RUNS):
            reports: list[tuple[str, dict[str, Any]]] = []
            url = (f"http://127.0.0.1:{page_server(reports)}/?key={KEY}&port={ws_port}"
                   f"&rate={rate}&style={style}")
            browse(chromium, url, wav, seconds + 8, tmp / f"profile-{n}")
            opened = [body for kind, body in reports if kind == "open"]
            texts = [b["transcript"] for k, b in reports if k == "event" and b["type"] == COMPLETED]
            errors = [b for k, b in reports if k in ("failed", "wserror")
                      or (k == "event" and b["type"] == "error")]
            missing, extra = verdict(texts)
            ok = bool(opened) and not errors and not missing and extra <= 0
            failed += not ok
            print(f"## key in the {style}, AudioContext at {rate} Hz: {'ok' if ok else 'FAILED'}")
            print(f"agreed: {opened[0] if opened else 'never opened'}")
            for text in texts:
                print(f"  {text}")
            print(f"words missing: {missing or 'none'}; words beyond: {max(extra, 0)}"
                  f"; errors: {errors or 'none'}\n")
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
    print(f"server log: {log}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

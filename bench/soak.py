"""Soak benchmark: hours of audio through the real daemon with faults at random.

Phase 1 (soak): looped real speech with pauses is piped into `roomscribe run`
(stdin source, 16 kHz mono) at SPEED x real time, so one wall second is SPEED audio
seconds. The uplink goes through a TCP fault proxy to the light scripted server of
bench/daemon_bench.py (a subprocess: an answer per 5 s of audio, with speech_started/
stopped ranges; the real server on 2 cores cannot keep up with hours at 25x), and
transcripts go to a real Mosquitto (persistent, so a restart keeps the subscriber's
queue). At random: server SIGKILLs (down for a random time), proxy cuts, black holes,
broker restarts. Audio is said to be delivered when the capture ranges of the
transcripts cover it; gaps are lost audio, overlaps are duplicated content.
The daemon's wall-clock timeouts are scaled down by SPEED (backoff, ping, connect).

Phase 2: a 600 s-of-audio outage with the default 600 s buffer: the light server is
down while 600 s are piped in as fast as the daemon reads, then it comes back; the
buffered seconds at reconnect and the drain rate are measured.

Phase 3: drain rate against the real server (tiny.en): speech piped in while the
server is not yet up, then it starts.

    uv run python bench/soak.py [--audio-s 9000] [--speed 25] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import json
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from conftest import Broker, free_port, normal_words, start_broker, wait_port  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402
from mqttkit import Subscriber  # noqa: E402
from stack import CLIPS, PYTHON, SERVER, Proc, read_mono_16k, server_config  # noqa: E402

BPS = 32000  # bytes per second of 16 kHz mono s16le


def speech_loop() -> np.ndarray:
    """The test clips with 2 s pauses of faint hiss between: ~36 s, looped."""
    rng = np.random.default_rng(7)
    parts: list[np.ndarray] = []
    for clip in CLIPS:
        parts += [rng.normal(0, 8, 32000), read_mono_16k(clip)]
    parts.append(rng.normal(0, 8, 32000))
    return np.clip(np.concatenate(parts), -32768, 32767).astype(np.int16)


def iso(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Feeder:
    """Pipes the loop into the daemon's stdin at `speed` x real time (0 = no pacing)."""

    def __init__(self, proc: subprocess.Popen[bytes], speed: float) -> None:
        self.proc = proc
        self.speed = speed
        self.loop = speech_loop().tobytes()
        self.pos = 0  # bytes written
        self.target = 0  # bytes to write before pausing

    def feed(self, audio_s: float, speed: float | None = None) -> None:
        speed = self.speed if speed is None else speed
        assert self.proc.stdin is not None
        end = self.pos + int(audio_s * 16000) * 2
        t0, p0 = time.monotonic(), self.pos
        while self.pos < end:
            step = min(end - self.pos, BPS // 4)
            at = self.pos % len(self.loop)
            chunk = (self.loop[at:] + self.loop)[:step]
            self.proc.stdin.write(chunk)
            self.proc.stdin.flush()
            self.pos += step
            if speed:
                due = t0 + (self.pos - p0) / BPS / speed
                time.sleep(max(0.0, due - time.monotonic()))

    @property
    def audio_s(self) -> float:
        return self.pos / BPS


class LogWatch:
    """Tails the daemon's log; remembers when each reconnect happened."""

    READY = re.compile(r"session \S+ ready; sending ([\d.]+) s of buffered audio")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ready: list[tuple[float, float]] = []  # (wall time, buffered audio s)
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.path.exists():
            time.sleep(0.05)
        with self.path.open(errors="replace") as fh:
            while not self._stop.is_set():
                line = fh.readline()
                if not line:
                    time.sleep(0.02)
                    continue
                self.lines.append(line)
                if m := self.READY.search(line):
                    self.ready.append((time.time(), float(m.group(1))))

    def ready_after(self, t: float, timeout_s: float = 60) -> tuple[float, float]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for when, buffered in self.ready:
                if when >= t:
                    return when, buffered
            time.sleep(0.02)
        raise TimeoutError("the daemon did not reconnect")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


class Rss:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(2.0):
            try:
                text = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            if m := re.search(r"VmRSS:\s+(\d+) kB", text):
                self.samples.append(int(m.group(1)) / 1024)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(3)


def light_server_main(port: int) -> None:
    from websockets.asyncio.server import serve

    from daemon_bench import light_server

    async def main() -> None:
        async with serve(light_server, "127.0.0.1", port, max_size=1 << 22):
            await asyncio.Future()

    asyncio.run(main())


class LightServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--light-server",
                                      str(self.port)], stderr=subprocess.DEVNULL)
        wait_port(self.port, 20)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def daemon_toml(tmp: Path, name: str, url: str, broker_port: int, speed: float,
                gate: str) -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(f"""
[device]
id = "{name}"
[capture]
source = "stdin"
rate_hz = 16000
channels = 1
[gate]
mode = "{gate}"
[uplink]
url = "{url}"
final_timeout_s = 30
backoff_max_s = {max(0.2, 30 / speed):.2f}
connect_timeout_s = {max(1.0, 10 / speed):.2f}
ping_interval_s = {max(0.5, 10 / speed):.2f}
ping_timeout_s = {max(1.0, 20 / speed):.2f}
[mqtt]
port = {broker_port}
reconnect_max_s = 2
[state]
dir = "{tmp / ('state-' + name)}"
[log]
level = "info"
""")
    return path


def start_daemon(tmp: Path, config: Path, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp / f"{name}.log"
    fh = log.open("wb")
    proc = subprocess.Popen([*PYTHON, "run", "--config", str(config)], stdin=subprocess.PIPE,
                            stdout=fh, stderr=subprocess.STDOUT)
    return proc, log


@dataclass
class Fault:
    kind: str
    at: float  # wall time it began
    pos_s: float  # audio position when it began
    wall_s: float  # how long it lasted (wall)
    reconnect_at: float = 0.0
    buffered_s: float = 0.0  # backlog the daemon reported at reconnect
    lost: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def coverage(transcripts: list[dict[str, Any]], total_s: float
             ) -> tuple[list[tuple[float, float]], float, list[str], float]:
    """(gaps, lost s, overlapping pairs described, overlap s) of [0, total_s] on the
    audio timeline; sample 0 is the start of the first light-server segment."""
    spans = sorted(((iso(t["start"]), iso(t["end"]), t) for t in transcripts),
                   key=lambda x: (x[0], x[1]))
    if not spans:
        return [(0.0, total_s)], total_s, [], 0.0
    t0 = spans[0][0]
    gaps: list[tuple[float, float]] = []
    overlaps: list[str] = []
    reach, overlap_s, last = 0.0, 0.0, spans[0][2]
    for s, e, t in spans:
        s, e = s - t0, e - t0
        if s > reach + 0.05:
            gaps.append((reach, s))
        elif s < reach - 0.05:
            overlaps.append(f"{s:.2f}-{e:.2f} s {_short(t)} over ...-{reach:.2f} s "
                            f"{_short(last)}")
            overlap_s += min(reach, e) - s
        if e > reach:
            reach, last = e, t
    if total_s - reach > 0.05:
        gaps.append((reach, total_s))
    return gaps, sum(b - a for a, b in gaps), overlaps, overlap_s


def _short(t: dict[str, Any]) -> str:
    return (f"[seq {t.get('seq')}, session {str(t.get('session'))[-6:]}"
            f"{', replayed' if t.get('replayed') else ''}: {t.get('text', '')[:40]!r}]")


FAULTS = ("server_kill", "proxy_cut", "blackhole", "broker_restart")


def inject(kind: str, meanwhile: Callable[[], None], proxy: FaultProxy, broker: Broker,
           kill_server: Callable[[], None], start_server: Callable[[], None]) -> None:
    """One fault of `kind`; `meanwhile` (the room going on) runs while it lasts."""
    if kind == "server_kill":
        kill_server()
    elif kind == "proxy_cut":
        proxy.cut()
    elif kind == "blackhole":
        proxy.blackhole()
    else:
        broker.stop()
    meanwhile()
    if kind == "server_kill":
        start_server()
    elif kind == "blackhole":
        proxy.heal()
    elif kind == "broker_restart":
        broker.start()


def stop_daemon(proc: subprocess.Popen[bytes], rss: Rss, watch: LogWatch) -> None:
    """Kill the daemon if it is still there; stop watching it; let the broker settle."""
    if proc.poll() is None:
        proc.kill()
    rss.close()
    watch.close()
    time.sleep(2)


def soak(tmp: Path, audio_s: float, speed: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    broker = start_broker(tmp, "persistence true\n"
                          f"persistence_location {tmp}/\n")
    light = LightServer(free_port())
    light.start()
    proxy = FaultProxy(light.port)
    sub = Subscriber(broker.port, persistent_id="soak-sub")
    config = daemon_toml(tmp, "soak", f"ws://127.0.0.1:{proxy.port}/v1/realtime",
                         broker.port, speed, gate="off")
    proc, log = start_daemon(tmp, config, "soak")
    watch = LogWatch(log)
    rss = Rss(proc.pid)
    feeder = Feeder(proc, speed)
    faults: list[Fault] = []
    started = time.monotonic()
    outage: dict[str, Any] = {}
    try:
        feeder.feed(5)
        while feeder.audio_s < audio_s:
            feeder.feed(min(rng.uniform(15, 40) * speed, audio_s - feeder.audio_s))
            if feeder.audio_s >= audio_s:
                break
            kind = rng.choice(FAULTS)
            down = 0.0 if kind == "proxy_cut" else rng.uniform(1, 12)
            fault = Fault(kind, time.time(), feeder.audio_s, down)
            inject(kind, functools.partial(feeder.feed, down * speed), proxy, broker, light.kill,
                   light.start)
            if kind != "broker_restart":
                fault.reconnect_at, fault.buffered_s = watch.ready_after(fault.at)
            faults.append(fault)

        # Phase 2: 600 s of audio while the server is down, at the daemon's speed.
        time.sleep(3)
        light.kill()
        cut_at = time.time()
        pos0 = feeder.audio_s
        fed_t = time.monotonic()
        feeder.feed(600, speed=0)
        outage["feed_wall_s"] = time.monotonic() - fed_t
        outage["pos"] = (pos0, feeder.audio_s)
        time.sleep(2)  # let the daemon read what is still in the pipe
        light.start()
        outage["reconnect_at"], outage["buffered_s"] = watch.ready_after(cut_at)
        outage["drained_at"] = wait_covered(sub, feeder.audio_s - 6, 120)
        feeder.feed(10)
        assert proc.stdin is not None
        proc.stdin.close()
        status = proc.wait(120)
    finally:
        stop_daemon(proc, rss, watch)
        transcripts = sub.transcripts()
        states = [json.loads(m.payload) for m in sub.on("state")]
        sub.close()
        proxy.close()
        light.kill()
        broker.stop()
    wall = time.monotonic() - started
    total = feeder.audio_s
    gaps, lost_s, overlaps, overlap_s = coverage(transcripts, total)
    p0, p1 = outage["pos"]
    for fault in faults:
        end_pos = fault.pos_s + (max(fault.reconnect_at, fault.at + fault.wall_s)
                                 - fault.at) * speed
        # A gap reaching phase 2's outage is that outage's (its buffer overflows by the
        # unconfirmed audio before it), not a phase-1 fault's.
        fault.lost = any(a < end_pos + 10 and fault.pos_s - 10 < b < p0 - 10
                         for a, b in gaps)
    outage["lost"] = any(a < p1 + 10 and b > p0 - 10 for a, b in gaps)
    ids = [t["id"] for t in transcripts]
    text = log.read_text(errors="replace")
    return dict(
        audio_s=total, wall_s=wall, status=status, tracebacks=text.count("Traceback"),
        transcripts=len(transcripts), dup_ids=len(ids) - len(set(ids)),
        expected=int(total // 5), gaps=gaps, lost_s=lost_s, overlaps=overlaps,
        overlap_s=overlap_s, faults=faults, outage=outage, speed=speed,
        dropped_s=max((s.get("dropped_s", 0) for s in states), default=0),
        rss=rss.samples, broker_restarts=sum(f.kind == "broker_restart" for f in faults),
    )


def wait_covered(sub: Subscriber, pos_s: float, timeout_s: float) -> float:
    """Wall time when transcripts first cover the audio timeline up to pos_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msgs = sub.on("transcript")
        if msgs:
            spans = [(iso(m["start"]), iso(m["end"]))
                     for m in (json.loads(x.payload) for x in msgs)]
            t0 = min(s for s, _ in spans)
            if max(e for _, e in spans) - t0 >= pos_s:
                return time.time()
        time.sleep(0.05)
    raise TimeoutError(f"audio up to {pos_s:.0f} s was not transcribed")


def real_server_drain(tmp: Path, loops: int) -> dict[str, Any]:
    """Speech piped in while the real server is not up yet; then it starts."""
    broker = start_broker(tmp)
    port = free_port()
    sub = Subscriber(broker.port)
    config = daemon_toml(tmp, "drain", f"ws://127.0.0.1:{port}/v1/realtime",
                         broker.port, speed=30, gate="energy")
    proc, log = start_daemon(tmp, config, "drain")
    watch = LogWatch(log)
    feeder = Feeder(proc, speed=30)
    loop_s = len(feeder.loop) / BPS
    server = Proc([*SERVER, "--config", str(server_config(tmp, port))], tmp / "server.log")
    try:
        feeder.feed(loop_s * loops)
        time.sleep(3)
        up_at = time.time()
        server.start()
        reconnect_at, buffered = watch.ready_after(up_at, 180)
        # drained: transcripts stopped coming (10 s without a new one)
        count, changed = 0, time.time()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and (not count or time.time() - changed < 10):
            if len(sub.texts()) != count:
                count, changed = len(sub.texts()), time.time()
            time.sleep(0.1)
        drained_at = changed
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
        watch.close()
        server.stop()
        texts = sub.texts()
        sub.close()
        broker.stop()
    import jiwer

    heard = [w for t in texts for w in normal_words(t)]
    said = _said(loops)
    # An alignment, not difflib's ratio: on text that repeats (the loops) difflib can
    # pair one loop with another and count most words unmatched (0.63 for a drain whose
    # 21 transcripts were all right and in order).
    hits = jiwer.process_words(" ".join(said), " ".join(heard) or "-").hits
    return dict(buffered_s=buffered, wall_s=drained_at - reconnect_at, hits=hits,
                heard=len(heard), said=len(said))


def _refs() -> list[str]:
    from conftest import reference_texts

    refs = reference_texts()
    return [refs[c] for c in CLIPS]


def _said(loops: int) -> list[str]:
    return [w for _ in range(loops) for r in _refs() for w in normal_words(r)]


def report(s: dict[str, Any], drain: dict[str, Any]) -> None:
    faults: list[Fault] = s["faults"]
    speed = s["speed"]
    kinds: dict[str, int] = {}
    for f in faults:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
    uplink = [f for f in faults if f.kind != "broker_restart"]
    outages = [((f.reconnect_at - f.at) * speed, f) for f in uplink]
    ok = [o for o, f in outages if not f.lost]
    o = s["outage"]
    drain_light = o["buffered_s"] / max(1e-9, o["drained_at"] - o["reconnect_at"])
    rss = s["rss"]
    print(f"Soak: {s['audio_s'] / 3600:.2f} h of looped speech at {speed:g}x real time "
          f"through `roomscribe run` (stdin source, gate off) → fault proxy → light "
          f"scripted server (bench/daemon_bench.py) → Mosquitto; {s['wall_s'] / 60:.1f} "
          f"min wall.\n")
    print("| measure | value |\n|---|---|")
    rows = [
        ("faults injected", ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))),
        ("transcripts expected (audio / 5 s) vs delivered",
         f"~{s['expected']} vs {s['transcripts']}"),
        ("audio lost (gaps in transcript coverage)",
         f"{s['lost_s']:.1f} s in {len(s['gaps'])} gap(s)"),
        ("ring overflow (state dropped_s, max)", f"{s['dropped_s']} s"),
        ("duplicated by id", str(s["dup_ids"])),
        ("duplicated by content (overlapping audio)",
         f"{len(s['overlaps'])} ({s['overlap_s']:.1f} s)"),
        ("longest uplink outage survived with zero loss (audio s)",
         f"{max(ok):.0f} s" if ok else "none"),
        ("10-min outage: audio fed while down / buffered at reconnect",
         f"{o['pos'][1] - o['pos'][0]:.0f} s / {o['buffered_s']:.0f} s "
         f"(fed in {o['feed_wall_s']:.1f} s wall); "
         f"{'LOST audio' if o['lost'] else 'all delivered'}"),
        ("backlog drain, light server (audio s / wall s)", f"{drain_light:.0f}x"),
        ("backlog drain, real server tiny.en (audio s / wall s)",
         f"{drain['buffered_s'] / max(1e-9, drain['wall_s']):.1f}x "
         f"({drain['buffered_s']:.0f} s in {drain['wall_s']:.0f} s; {drain['hits']} of "
         f"{drain['said']} words said heard, in order, {drain['heard']} in all)"),
        ("daemon RSS start → end (max)",
         f"{rss[0]:.0f} → {rss[-1]:.0f} MB ({max(rss):.0f})" if rss else "n/a"),
        ("daemon exit status / tracebacks", f"{s['status']} / {s['tracebacks']}"),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")
    if s["gaps"]:
        print("\ngaps (audio s):", ", ".join(f"{a:.1f}-{b:.1f}" for a, b in s["gaps"][:10]))
    lost = [f for f in faults if f.lost]
    if lost:
        print("faults with loss:", ", ".join(f"{f.kind}@{f.pos_s:.0f}s" for f in lost))
    for line in s["overlaps"]:
        print("overlap:", line)
    print("faults (audio s):", ", ".join(f"{f.kind}@{f.pos_s:.0f}" for f in faults))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--audio-s", type=float, default=9000.0)
    parser.add_argument("--speed", type=float, default=25.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--drain-loops", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="keep the logs here")
    parser.add_argument("--light-server", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.light_server:
        light_server_main(args.light_server)
        return 0
    with tempfile.TemporaryDirectory() as name:
        tmp = args.keep or Path(name)
        (tmp / "soak").mkdir()
        (tmp / "drain").mkdir()
        drain = real_server_drain(tmp / "drain", args.drain_loops)
        result = soak(tmp / "soak", args.audio_s, args.speed, args.seed)
    report(result, drain)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Backlogs through the real server: drain speed, loss, and live rooms meanwhile (a
script, not a test).

Everything is real and out of process: `roomscribe serve` (tiny.en), Mosquitto, and
`roomscribe run` reading a WAV unpaced, so N minutes of speech (the four shared
recordings in rotating orders, 2 s apart) are captured at once and wait in the ring as
audio captured during an N-minute outage does. The capture then ends, so the daemon
drains the backlog under its stop rule (final_timeout_s set above the drain time).

- drain: N-minute backlogs; drain speed = audio / wall time from the daemon's first
  session to its exit; every utterance delivered once, in order (each transcript is
  placed by its capture times), and the daemon's exit status.
- live: end of speech -> completed for live rooms (real-time streams, as in
  bench/server_latency.py) alone, then while another room drains a backlog.
- restart: 4 rooms (daemons reading their WAV at real time) lose the server for
  --outage-s, then it comes back: utterances delivered once, how long each room takes
  to catch up, and the server's end-of-speech latency once they have.

    uv run python bench/backlog.py drain --minutes 10,30
    uv run python bench/backlog.py live --minutes 10 --streams 3
    uv run python bench/backlog.py restart --outage-s 60
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "server"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import normal_words, start_broker
from mqttkit import Subscriber, wait
from server_latency import end_latencies, one_stream, pct, playlist, stream_audio, utterances
from stack import (
    CLIPS,
    Room,
    daemon_config,
    make_room,
    read_mono_16k,
    start_daemon,
    start_server,
)
from test_backlog import ORDERS, by_utterance, coverage, iso


def room_of(tmp: Path, name: str, minutes: float, tail_s: float = 1.0) -> Room:
    """At least `minutes` of the four recordings in ORDERS' rotating orders, 2 s apart."""
    seconds = {c: len(read_mono_16k(c)) / 16000 + 2.0 for c in CLIPS}
    clips: list[str] = []
    for order in itertools.cycle(ORDERS):
        if sum(seconds[c] for c in clips) >= minutes * 60:
            break
        clips += [CLIPS[i] for i in order]
    assert all(a != b for a, b in itertools.pairwise(clips))
    return make_room(tmp / f"{name}.wav", clips, gap_s=2.0, tail_s=tail_s)


def daemon_for(tmp: Path, name: str, room: Room, server_port: int, broker_port: int,
               realtime: bool, buffer_s: float, final_timeout_s: float) -> Path:
    config = daemon_config(tmp, server_port=server_port, broker_port=broker_port,
                           wav=room.path, realtime=realtime, device=name,
                           extra=f'[gate]\nmode = "off"\n[buffer]\nseconds = {buffer_s}\n')
    text = re.sub(r"final_timeout_s = \d+", f"final_timeout_s = {final_timeout_s}",
                  config.read_text())
    config.write_text(text.replace('level = "debug"', 'level = "info"'))
    return config


def check(room: Room, transcripts: list[dict[str, Any]]) -> dict[str, Any]:
    """Utterances delivered (>= 60 % of their words, tiny.en's errors allowed), twice
    (more than 1.5x their words), transcripts out of order or overlapping."""
    heard = by_utterance(room, transcripts) if transcripts else [[] for _ in room.spans]
    delivered = sum(coverage(ref, " ".join(t)) >= 0.6
                    for ref, t in zip(room.references, heard, strict=True))
    twice = sum(len(normal_words(" ".join(t))) > 1.5 * len(normal_words(ref)) + 2
                for ref, t in zip(room.references, heard, strict=True))
    disorder = sum(iso(a["end"]) > iso(b["start"]) + 0.05
                   for a, b in itertools.pairwise(transcripts))
    return {"utterances": len(room.spans), "delivered": delivered, "twice": twice,
            "disorder": disorder, "ids_unique": len({t["id"] for t in transcripts})
            == len(transcripts)}


def drain(minutes: float, tmp: Path, broker_port: int, server_port: int) -> dict[str, Any]:
    room = room_of(tmp, f"drain{minutes:g}", minutes)
    audio_s = room.spans[-1][1] + 1.0
    sub = Subscriber(broker_port)
    config = daemon_for(tmp, f"drain{minutes:g}", room, server_port, broker_port,
                        realtime=False, buffer_s=audio_s + 60, final_timeout_s=audio_s)
    daemon = start_daemon(tmp, config, name=f"drain{minutes:g}")
    wait(lambda: "ready;" in daemon.output(), timeout_s=60, what="the first session")
    started = time.time()  # the backlog is all captured by now: the drain begins
    status = daemon.wait(audio_s + 120)
    ended = time.time()
    wait(lambda: bool(sub.on("availability")) and
         sub.on("availability")[-1].payload == b"offline", timeout_s=10, what="offline")
    sub.close()
    log = daemon.output()
    wall = ended - started
    return {"minutes": minutes, "audio_s": audio_s, "wall_s": wall,
            "speed": audio_s / wall, "status": status,
            "keepalive": log.count("keepalive"), "tracebacks": log.count("Traceback"),
            "reconnects": log.count("reconnecting"), **check(room, sub.transcripts())}


async def live_streams(port: int, streams: int, repeat: int) -> list[float]:
    lists = [playlist(repeat, 100 + i) for i in range(streams)]
    pcms = [stream_audio(names) for names in lists]
    results = await asyncio.gather(*(one_stream(port, pcm, 0.3 * i)
                                     for i, pcm in enumerate(pcms)))
    return [x for r, pcm in zip(results, pcms, strict=True)
            for x in end_latencies(r, utterances(pcm))]


def live(minutes: float, streams: int, tmp: Path, broker_port: int, server_port: int,
         repeat: int) -> dict[str, Any]:
    alone = asyncio.run(live_streams(server_port, streams, repeat))
    room = room_of(tmp, "busy", minutes)
    config = daemon_for(tmp, "busy", room, server_port, broker_port, realtime=False,
                        buffer_s=room.spans[-1][1] + 60, final_timeout_s=3600)
    daemon = start_daemon(tmp, config, name="busy")
    try:
        wait(lambda: "ready;" in daemon.output(), timeout_s=60, what="the drain to start")
        during = asyncio.run(live_streams(server_port, streams, repeat))
        still_draining = daemon.proc is not None and daemon.proc.poll() is None
    finally:
        daemon.stop(timeout_s=600)
    return {"streams": streams, "alone_p50": pct(alone, 50), "alone_p95": pct(alone, 95),
            "during_p50": pct(during, 50), "during_p95": pct(during, 95),
            "ratio_p95": pct(during, 95) / pct(alone, 95),
            "drain_outlasted_live": still_draining}


def restart(outage_s: float, rooms: int, tmp: Path, broker_port: int) -> dict[str, Any]:
    minutes = (outage_s + 150) / 60
    server, port = start_server(tmp)
    roomset = [room_of(tmp, f"room{i}", minutes, tail_s=30) for i in range(rooms)]
    sub = Subscriber(broker_port)
    daemons = [start_daemon(tmp, daemon_for(tmp, f"room{i}", r, port, broker_port,
                                            realtime=True, buffer_s=600,
                                            final_timeout_s=120), name=f"room{i}")
               for i, r in enumerate(roomset)]
    try:
        time.sleep(30)
        server.kill()
        killed = time.time()
        time.sleep(outage_s)
        server, _ = start_server(tmp, port)
        back = time.time()
        for d in daemons:
            d.wait(minutes * 60 + 300)
    finally:
        for d in daemons:
            d.stop()
        server.stop()
    time.sleep(2)
    sub.close()
    out: dict[str, Any] = {"rooms": rooms, "outage_s": outage_s, "per_room": []}
    for i, (room, d) in enumerate(zip(roomset, daemons, strict=True)):
        mine = [t for t in sub.transcripts() if t["device"] == f"room{i}"]
        replayed = [t for t in mine if t["replayed"]]
        caught_up = max((iso(t["received"]) for t in replayed), default=back) - back
        said_during = [t for t in mine if killed <= iso(t["start"]) <= back]
        out["per_room"].append({
            "status": d.proc.returncode if d.proc else None,
            "tracebacks": d.output().count("Traceback"),
            "replayed": len(replayed), "said_in_outage": len(said_during),
            "caught_up_s": caught_up,
            "lag_after_s": statistics.median(
                iso(t["received"]) - iso(t["end"]) for t in mine
                if iso(t["start"]) > back + caught_up) if mine else float("nan"),
            **check(room, mine)})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["drain", "live", "restart"])
    parser.add_argument("--minutes", default="10", help="backlog minutes, comma-separated")
    parser.add_argument("--streams", type=int, default=3, help="live rooms (live)")
    parser.add_argument("--repeat", type=int, default=2, help="passes per live room")
    parser.add_argument("--outage-s", type=float, default=60.0)
    parser.add_argument("--rooms", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="roomscribe-backlog-") as name:
        tmp = Path(name)
        broker = start_broker(tmp)
        try:
            if args.mode == "restart":
                print(restart(args.outage_s, args.rooms, tmp, broker.port))
                return 0
            server, port = start_server(tmp)
            try:
                for minutes in (float(m) for m in args.minutes.split(",")):
                    if args.mode == "drain":
                        print(drain(minutes, tmp, broker.port, port), flush=True)
                    else:
                        print(live(minutes, args.streams, tmp, broker.port, port,
                                   args.repeat), flush=True)
            finally:
                server.stop()
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())

"""The host's side of scripts/pi-vm.sh: what reaches the broker, and the verdict.

    python scripts/pi_vm_listen.py listen --mqtt-port P --marker-port M --out DIR
    python scripts/pi_vm_listen.py judge --out DIR --references transcripts.tsv

`listen` subscribes to the VM daemon's topics on the host's Mosquitto and takes the
markers the VM's driver sends over TCP (one line each: `name key=value ...`, e.g.
`play file=jfk-44k1-stereo.wav phase=1 t=<guest epoch>`), writing every event with the
host's arrival time to DIR/events.jsonl, until SIGTERM or --deadline-s.

`judge` reads that file and says whether the speech played into the VM's loopback came
back as transcripts, and whether the watchdog restart happened and the daemon came back:

- each transcript belongs to the utterance whose playback (guest clock, from the
  markers) overlaps the audio it covers (its `start`/`end`, the same guest clock);
- every utterance has at least one transcript, none arrives twice (by `id`), nothing is
  transcribed that was not played, and no utterance gets more words than it has
  (x1.15 + 2, a misheard split);
- word error rate against transcripts.tsv (lower case, no punctuation, the digits
  tiny.en writes spelled out as the references do): at most MAX_WER_EACH for each
  utterance (tiny.en writes names its own way: "Claflin", "Abbie") and MAX_WER_ALL
  over all of them;
- the watchdog: the driver saw NRestarts go up after it stopped the sound card's
  clock, the guest's journal (DIR/journal.txt, copied from the image) has systemd's
  `roomscribe.service: Watchdog timeout` for it, the broker saw the daemon go
  (`offline`, its last will) and come back (`online`), and an utterance played after
  the restart was transcribed.

Writes DIR/result.md; exit status 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import csv
import json
import selectors
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

MAX_WER_EACH = 0.4
MAX_WER_ALL = 0.15
# Audio a transcript covers may start a little before the playback marker (preroll,
# the guest's clock read) and end after it (the gate's hangover).
SLACK_S = 2.0
NUMBERS = {"1813": "eighteen thirteen", "8": "eight"}


# ------------------------------------------------------------------ listen


def listen(args: argparse.Namespace) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    log = (out / "events.jsonl").open("a", encoding="utf-8")

    def record(event: dict[str, Any]) -> None:
        event["t"] = time.time()
        with lock:
            log.write(json.dumps(event) + "\n")
            log.flush()

    def on_connect(client: mqtt.Client, _u: object, _f: object, reason: object,
                   _p: object) -> None:
        client.subscribe(f"{args.prefix}/#", qos=1)
        record({"kind": "listener", "event": f"connected to the broker ({reason})"})

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        record({"kind": "mqtt", "topic": msg.topic, "retain": bool(msg.retain),
                "payload": msg.payload.decode("utf-8", "replace")})

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                         client_id=f"pi-vm-listen-{args.mqtt_port}",
                         protocol=mqtt.MQTTv5)
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", args.mqtt_port, keepalive=30)
    client.loop_start()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = socket.create_server(("127.0.0.1", args.marker_port))
    server.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ)
    partial: dict[socket.socket, bytes] = {}
    deadline = time.monotonic() + args.deadline_s
    record({"kind": "listener", "event": "listening"})
    while not stop.is_set() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is server:
                conn, _addr = server.accept()
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ)
                partial[conn] = b""
                continue
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                sel.unregister(sock)
                sock.close()
                partial.pop(sock, None)
                continue
            buf = partial[sock] + data
            *lines, partial[sock] = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    record(marker(line.decode("utf-8", "replace")))
    record({"kind": "listener", "event": "stopped"})
    client.loop_stop()
    client.disconnect()
    log.close()
    return 0


def marker(line: str) -> dict[str, Any]:
    name, *rest = line.split()
    args = dict(part.split("=", 1) for part in rest if "=" in part)
    return {"kind": "marker", "name": name, "args": args}


# ------------------------------------------------------------------ judge


def words(text: str) -> list[str]:
    cleaned = "".join(c.lower() if c.isalnum() or c == "'" else " " for c in text)
    out: list[str] = []
    for word in cleaned.split():
        out += NUMBERS.get(word, word).split()
    return out


def edit_distance(a: list[str], b: list[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@dataclass
class Utterance:
    file: str
    phase: str
    start_guest: float
    start_host: float
    end_guest: float = 0.0
    end_host: float = 0.0
    transcripts: list[dict[str, Any]] = field(default_factory=list)

    def overlap(self, start: float, end: float) -> float:
        lo, hi = self.start_guest - SLACK_S, self.end_guest + SLACK_S
        return min(hi, end) - max(lo, start)


def judge(args: argparse.Namespace) -> int:
    out = Path(args.out)
    with open(args.references, encoding="utf-8") as fh:
        refs = {row["file"]: row["text"] for row in csv.DictReader(fh, delimiter="\t")}
    events = [json.loads(line) for line in
              (out / "events.jsonl").read_text(encoding="utf-8").splitlines() if line]
    markers = [e for e in events if e["kind"] == "marker"]
    mqtt = [e for e in events if e["kind"] == "mqtt"]
    failures: list[str] = []
    lines: list[str] = []

    utts: list[Utterance] = []
    for m in markers:
        a = m["args"]
        if m["name"] == "play":
            utts.append(Utterance(a["file"], a.get("phase", "1"), float(a["t"]), m["t"]))
        elif m["name"] == "played" and utts and utts[-1].file == a["file"]:
            utts[-1].end_guest, utts[-1].end_host = float(a["t"]), m["t"]
    if not utts:
        failures.append("no speech was played (no `play` marker from the VM)")

    seen: dict[str, int] = {}
    stray: list[dict[str, Any]] = []
    transcripts = [e for e in mqtt if e["topic"].endswith("/transcript")]
    for e in transcripts:
        payload = json.loads(e["payload"])
        payload["_host_t"] = e["t"]
        seen[payload["id"]] = seen.get(payload["id"], 0) + 1
        if seen[payload["id"]] > 1:
            continue
        start, end = epoch(payload["start"]), epoch(payload["end"])
        best = max(utts, key=lambda u: u.overlap(start, end), default=None)
        if best is None or best.overlap(start, end) <= 0:
            stray.append(payload)
        else:
            best.transcripts.append(payload)
    twice = {k: n for k, n in seen.items() if n > 1}
    if twice:
        failures.append(f"transcripts arrived more than once: {twice}")
    if stray:
        failures.append("transcripts of audio that was not played: "
                        + "; ".join(repr(p["text"]) for p in stray))

    lines += ["| phase | file | reference | transcripts (as published) | WER | first "
              "transcript, after playback start | last, after playback end |",
              "|---|---|---|---|---|---|---|"]
    ref_all: list[str] = []
    hyp_all: list[str] = []
    first_any: float | None = None
    for u in utts:
        u.transcripts.sort(key=lambda p: p["seq"])
        ref = words(refs.get(u.file, ""))
        hyp = [w for p in u.transcripts for w in words(p["text"])]
        ref_all += ref
        hyp_all += hyp
        wer = edit_distance(ref, hyp) / max(1, len(ref))
        arrivals = [p["_host_t"] for p in u.transcripts]
        first = f"{min(arrivals) - u.start_host:.1f} s" if arrivals else "-"
        last = f"{max(arrivals) - u.end_host:.1f} s" if arrivals and u.end_host else "-"
        if arrivals and first_any is None:
            first_any = min(arrivals) - u.start_host
        texts = " / ".join(p["text"].strip() for p in u.transcripts) or "(none)"
        lines.append(f"| {u.phase} | {u.file} | {refs.get(u.file, '?')} | {texts} | "
                     f"{wer:.0%} | {first} | {last} |")
        if not u.transcripts:
            failures.append(f"{u.file} (phase {u.phase}): no transcript")
        elif wer > MAX_WER_EACH:
            failures.append(f"{u.file} (phase {u.phase}): WER {wer:.0%} > {MAX_WER_EACH:.0%}")
        if len(hyp) > len(ref) * 1.15 + 2:
            failures.append(f"{u.file} (phase {u.phase}): more words than said: {hyp}")
    wer_all = edit_distance(ref_all, hyp_all) / max(1, len(ref_all))
    if wer_all > MAX_WER_ALL:
        failures.append(f"WER over all utterances {wer_all:.1%} > {MAX_WER_ALL:.0%}")
    got = sum(1 for u in utts if u.transcripts)
    lines += ["", f"Utterances transcribed: {got} of {len(utts)}; transcripts received: "
              f"{sum(len(u.transcripts) for u in utts)} (+{len(stray)} stray, "
              f"{sum(n - 1 for n in twice.values())} repeated); WER over all: "
              f"{wer_all:.1%} ({len(ref_all)} reference words)."]
    if first_any is not None:
        lines.append(f"First transcript on the broker {first_any:.1f} s after the first "
                     "playback started.")

    lines += ["", *watchdog(markers, mqtt, utts, failures, out / "journal.txt")]
    verdict = "PASS" if not failures else "FAIL"
    lines += ["", f"**{verdict}**", *(f"- {f}" for f in failures)]
    text = "\n".join(lines) + "\n"
    (out / "result.md").write_text(text, encoding="utf-8")
    print(text, end="")
    return 0 if not failures else 1


def watchdog(markers: list[dict[str, Any]], mqtt: list[dict[str, Any]],
             utts: list[Utterance], failures: list[str], journal: Path) -> list[str]:
    """The stalled-capture phase: the driver's markers, the availability topic and the
    transcripts on the host's clock; systemd's lines from the guest's journal."""
    named = {m["name"]: m for m in markers}
    stall = named.get("stall")
    if stall is None:
        failures.append("the watchdog phase did not run (no `stall` marker)")
        return []
    t0 = stall["t"]
    lines = ["| host time after the clock stopped | event |", "|---|---|"]
    rows: list[tuple[float, str]] = []
    for m in markers:
        if m["t"] >= t0 and m["name"] not in ("settled",):
            extra = " ".join(f"{k}={v}" for k, v in m["args"].items() if k != "t")
            rows.append((m["t"], f"VM: {m['name']} {extra}".rstrip()))
    went = came = None
    for e in mqtt:
        if e["topic"].endswith("/availability") and e["t"] >= t0 and not e["retain"]:
            rows.append((e["t"], f"broker: availability `{e['payload']}`"))
            if e["payload"] == "offline" and went is None:
                went = e["t"]
            elif e["payload"] == "online" and went is not None and came is None:
                came = e["t"]
    after = [u for u in utts if u.phase == "2"]
    for u in after:
        for p in u.transcripts:
            rows.append((p["_host_t"], f"broker: transcript {p['text'].strip()!r}"))
    lines += [f"| {t - t0:+.1f} s | {what} |" for t, what in sorted(rows)]
    said = []
    if journal.exists():
        said = [line for line in journal.read_text(encoding="utf-8", errors="replace").splitlines()
                if "roomscribe.service: Watchdog timeout" in line
                or "capture stalled" in line or "restart counter is at" in line]
        lines += ["", "The guest's journal (its clock):", "", *(f"    {x}" for x in said)]
    if not any("Watchdog timeout" in x for x in said):
        failures.append("no `roomscribe.service: Watchdog timeout` in the guest's journal")
    restarted = named.get("restarted")
    if restarted is None or int(restarted["args"].get("nrestarts", "0")) < 1:
        failures.append("no restart after the capture stalled (NRestarts did not go up)")
    if went is None:
        failures.append("the broker never saw the daemon go (no `offline` after the stall)")
    if came is None:
        failures.append("the daemon did not come back to the broker (no `online`)")
    if not after:
        failures.append("no utterance was played after the restart")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_listen = sub.add_parser("listen")
    p_listen.add_argument("--mqtt-port", type=int, required=True)
    p_listen.add_argument("--marker-port", type=int, required=True)
    p_listen.add_argument("--prefix", default="roomscribe/pi-vm")
    p_listen.add_argument("--deadline-s", type=float, default=3600)
    p_listen.add_argument("--out", required=True)
    p_judge = sub.add_parser("judge")
    p_judge.add_argument("--out", required=True)
    p_judge.add_argument("--references", required=True)
    args = parser.parse_args(argv)
    return listen(args) if args.command == "listen" else judge(args)


if __name__ == "__main__":
    sys.exit(main())

"""The daemon against MQTT brokers without MQTT 5, as users run them. Not in CI.

The daemon logs in with MQTT 5 by default. Brokers without it answer that login in
their own ways: Aedes (the broker Node-RED runs) with "unsupported protocol version",
amqtt by closing the connection some seconds later, RabbitMQ's MQTT plugin before 3.13
by closing it at once (Debian 12's RabbitMQ 3.10.8 was tried by hand, docs/mqtt.md: it
is a system service, so not started here). The suite has a proxy in front of Mosquitto
that answers both ways (tests/faultproxy.py); this runs the real brokers.

For each broker given: start it on a free port, then with the default configuration
(MQTT 5) `roomscribe listen`, the daemon on the four shared recordings through the
self-hosted server, and `roomscribe check --connect`. Checks: every transcript arrives
at a 3.1.1 subscriber once, in order, with the words said; the daemon logs that the
broker has no MQTT 5 once, connects with 3.1.1, logs no error and exits 0; `listen`
prints each transcript once; `check` says the broker took the 3.1.1 login.

    # once: the brokers
    mkdir /tmp/aedes && (cd /tmp/aedes && npm install aedes@0.51.3)
    uv venv --python 3.11 /tmp/amqtt-venv
    uv pip install --python /tmp/amqtt-venv/bin/python amqtt==0.12.1
    # then
    uv run --extra server python bench/brokers_check.py --aedes /tmp/aedes \\
        --amqtt /tmp/amqtt-venv/bin/amqtt
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from conftest import assert_heard, free_port, wait_port  # noqa: E402
from mqttkit import Subscriber, wait  # noqa: E402
from stack import CLIPS, PYTHON, Proc, daemon_config, make_room, start_server  # noqa: E402

AEDES_JS = """
const aedes = require('aedes')();
const server = require('net').createServer(aedes.handle);
server.listen(parseInt(process.argv[2]), '127.0.0.1', () => console.log('aedes up'));
"""
AMQTT_YAML = """
listeners:
  default:
    type: tcp
    bind: 127.0.0.1:{port}
plugins:
  amqtt.plugins.authentication.AnonymousAuthPlugin:
    allow_anonymous: true
"""


def start_aedes(tmp: Path, folder: Path) -> tuple[Proc, int]:
    port = free_port()
    script = folder / "roomscribe-broker.js"  # beside node_modules, where require looks
    script.write_text(AEDES_JS)
    proc = Proc(["node", str(script), str(port)], tmp / "aedes.log")
    proc.start()
    wait_port(port, 20)
    return proc, port


def start_amqtt(tmp: Path, amqtt: str) -> tuple[Proc, int]:
    port = free_port()
    (tmp / "amqtt.yaml").write_text(AMQTT_YAML.format(port=port))
    proc = Proc([amqtt, "-c", str(tmp / "amqtt.yaml")], tmp / "amqtt.log")
    proc.start()
    wait_port(port, 30)
    return proc, port


def check_broker(name: str, tmp: Path, port: int, server_port: int) -> list[str]:
    """What failed (empty: all passed); prints a line per check."""
    # A tail of silence: amqtt takes ~25 s to answer the second MQTT 5 try with a close.
    room = make_room(tmp / "room.wav", CLIPS, gap_s=2.0, tail_s=40)
    config = daemon_config(tmp, server_port=server_port, broker_port=port, wav=room.path,
                           device=name)
    failed: list[str] = []

    def verdict(ok: bool, what: str) -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {what}", flush=True)
        if not ok:
            failed.append(what)

    sub = Subscriber(port, topic=f"roomscribe/{name}/transcript")
    listen = Proc([*PYTHON, "listen", "--config", str(config), "--seconds", "180"],
                  tmp / "listen.log")
    daemon = Proc([*PYTHON, "run", "--config", str(config)], tmp / "daemon.log")
    try:
        listen.start()
        wait(lambda: "waiting for transcripts" in listen.output(), 60, "listen to subscribe")
        daemon.start()
        status = daemon.wait(180)
        log = daemon.output()
        time.sleep(2)  # the daemon exits once the broker has them; the subscriber next
        texts = sub.texts()
        checked = subprocess.run([*PYTHON, "check", "--connect", "--config", str(config)],
                                 capture_output=True, text=True, timeout=120, check=False)
    finally:
        daemon.stop()
        listen.stop()
        sub.close()
    out = listen.output()
    verdict(status == 0 and "Traceback" not in log, f"the daemon exited {status}, no traceback")
    try:
        assert_heard(texts, room.references)
        heard = True
    except AssertionError as exc:
        heard, texts = False, [*texts, str(exc)]
    verdict(heard and len(texts) == len(set(texts)),
            f"{len(texts)} transcripts, each once, the words said: {texts}")
    notes = [line for line in log.splitlines() if "does not speak MQTT 5" in line]
    verdict(len(notes) == 1 and "(MQTT 3.1.1)" in log, f"fallback said once: {notes}")
    errors = [line for line in log.splitlines() if line.startswith("ERROR")]
    verdict(not errors, f"no error in the daemon's log {errors}")
    printed = [line.split(": ", 1)[-1] for line in out.splitlines() if line.startswith("[")]
    verdict(printed == texts, f"listen printed each once ({len(printed)})")
    line = next((x for x in checked.stdout.splitlines() if " broker: " in x), checked.stdout)
    verdict(line.startswith("ok") and "with MQTT 3.1.1" in line, f"check --connect: {line}")
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aedes", type=Path, help="a folder with node_modules/aedes")
    parser.add_argument("--amqtt", help="the amqtt broker's command")
    parser.add_argument("--keep", type=Path, help="keep the logs in this (new) folder")
    args = parser.parse_args()
    if not (args.aedes or args.amqtt):
        parser.error("give --aedes and/or --amqtt")
    failed: list[str] = []
    with tempfile.TemporaryDirectory() as name:
        tmp = args.keep or Path(name)
        tmp.mkdir(parents=True, exist_ok=True)
        server, server_port = start_server(tmp)
        try:
            for broker, start in (("aedes", lambda t: start_aedes(t, args.aedes)),
                                  ("amqtt", lambda t: start_amqtt(t, args.amqtt))):
                if not getattr(args, broker):
                    continue
                folder = tmp / broker
                folder.mkdir()
                proc, port = start(folder)
                try:
                    failed += [f"{broker}: {f}" for f in
                               check_broker(broker, folder, port, server_port)]
                finally:
                    proc.stop()
        finally:
            server.stop()
    print(f"\n{'all checks passed' if not failed else f'{len(failed)} failed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

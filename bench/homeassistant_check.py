"""The daemon against a real Home Assistant, as a new user would try it. Not in CI: heavy.

Starts a Mosquitto, the self-hosted server and a real Home Assistant (its own venv;
PyPI `homeassistant` 2025.4.x is the newest that installs with the Python 3.13 here),
onboards it over its API, adds the MQTT integration (discovery on), and runs the daemon
on a shared recording. Then checks: every entity and device field, the example
automation from docs/mqtt.md pasted as is (fires once for the sentence; not again when
the daemon restarts), the mute round trip, availability, the Transcription problem
sensor and Status, a new device.id (the old device must go), `roomscribe forget`, and
Home Assistant's log for warnings or errors about our payloads (there must be none).

    # once: Home Assistant in its own venv
    uv venv --python python3.13 /tmp/ha-venv
    uv pip install --python /tmp/ha-venv/bin/python homeassistant==2025.4.4 \\
        paho-mqtt==2.1.0 isal==1.7.1
    # then
    uv run --extra server python bench/homeassistant_check.py --hass /tmp/ha-venv/bin/hass
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from conftest import free_port, start_broker, wait_port  # noqa: E402
from mqttkit import Subscriber  # noqa: E402
from stack import PYTHON, Proc, make_room, start_server  # noqa: E402

DEVICE = "bench"
RENAMED = "den"  # the same microphone after its Pi got a new hostname
ROOM = "Bench room"
PHRASE = "country"  # said twice in the JFK clip, in one sentence
ENTITIES = {
    "event": ["transcript"],
    "sensor": ["last_transcript", "status", "last_error", "buffered", "dropped", "overruns",
               "published", "uptime"],
    "switch": ["mute"],
    "binary_sensor": ["transcription"],
}
# Lines in Home Assistant's log that are about us: our topics, entities, templates.
OURS = re.compile(r"roomscribe|homeassistant/(sensor|event|switch|binary_sensor)/|"
                  r"template|value_json|mqtt|automation|Kitchen lights", re.IGNORECASE)


class Failed(Exception):
    pass


def wait(cond: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.5)


class HomeAssistant:
    def __init__(self, hass: str, tmp: Path) -> None:
        self.dir = tmp / "ha-config"
        self.dir.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = ""
        self.proc = Proc([hass, "-c", str(self.dir)], tmp / "hass.out")

    def write_config(self, automation: str) -> None:
        (self.dir / "configuration.yaml").write_text(f"""
homeassistant:
  name: roomscribe bench
  latitude: 0
  longitude: 0
  elevation: 0
  unit_system: metric
  time_zone: UTC
  country: US
  currency: USD
http:
  server_host: 127.0.0.1
  server_port: {self.port}
onboarding:
config:
api:
counter:
  voice:
    initial: 0
automation: !include automations.yaml
logger:
  default: info
""")
        (self.dir / "automations.yaml").write_text(automation)

    def start(self) -> None:
        self.proc.start()
        wait_port(self.port, timeout_s=300)
        wait(lambda: self._get_raw("/api/onboarding") is not None, 120, "onboarding API")

    def _get_raw(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, OSError):
            return None

    def request(self, method: str, path: str, body: Any = None, form: bool = False) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        data = None
        if body is not None:
            if form:
                data = urllib.parse.urlencode(body).encode()
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            else:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, headers=headers,
                                     method=method)
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read()
        return json.loads(text) if text else None

    def onboard(self) -> None:
        client_id = self.url + "/"
        user = self.request("POST", "/api/onboarding/users", {
            "client_id": client_id, "name": "Bench", "username": "bench",
            "password": "bench-password-1", "language": "en"})
        token = self.request("POST", "/auth/token", {
            "grant_type": "authorization_code", "code": user["auth_code"],
            "client_id": client_id}, form=True)
        self.token = token["access_token"]

    def add_mqtt(self, broker_port: int) -> dict[str, Any]:
        flow = self.request("POST", "/api/config/config_entries/flow", {"handler": "mqtt"})
        result = self.request("POST", f"/api/config/config_entries/flow/{flow['flow_id']}",
                              {"broker": "127.0.0.1", "port": broker_port})
        if result.get("type") != "create_entry":
            raise Failed(f"MQTT config flow did not create an entry: {result}")
        return dict(result)

    def states(self) -> dict[str, dict[str, Any]]:
        return {s["entity_id"]: s for s in self.request("GET", "/api/states")}

    def state(self, entity_id: str) -> dict[str, Any]:
        """The entity's state object; {} when Home Assistant has no such entity."""
        return self.states().get(entity_id, {})

    def call(self, domain: str, service: str, entity_id: str) -> None:
        self.request("POST", f"/api/services/{domain}/{service}", {"entity_id": entity_id})

    def ws(self, command: dict[str, Any]) -> Any:
        with connect(self.url.replace("http", "ws") + "/api/websocket") as ws:
            json.loads(ws.recv(timeout=10))  # auth_required
            ws.send(json.dumps({"type": "auth", "access_token": self.token}))
            if json.loads(ws.recv(timeout=10))["type"] != "auth_ok":
                raise Failed("websocket auth failed")
            ws.send(json.dumps({"id": 1, **command}))
            reply = json.loads(ws.recv(timeout=30))
            if not reply.get("success"):
                raise Failed(f"websocket {command['type']}: {reply}")
            return reply["result"]

    def log_problems(self) -> list[str]:
        # A restart moves the log to home-assistant.log.1: read both, oldest first.
        lines: list[str] = []
        for name in ("home-assistant.log.1", "home-assistant.log"):
            log = self.dir / name
            if log.exists():
                lines += log.read_text(errors="replace").splitlines()
        return [line for line in lines if " WARNING " in line or " ERROR " in line]


# The example docs/mqtt.md had before issue 14, for --old-example: it re-ran the last
# sentence's action when the daemon restarted, and its template logged warnings.
OLD_EXAMPLE = """alias: Kitchen lights on by voice
triggers:
  - trigger: state
    entity_id: event.roomscribe_kitchen_pi_transcript
conditions:
  - condition: template
    value_template: "{{ 'lights on' in trigger.to_state.attributes.text | lower }}"
actions:
  - action: light.turn_on
    target: {entity_id: light.kitchen}
"""


def docs_automation(old: bool = False) -> str:
    """The example from docs/mqtt.md, with this bench's entity, phrase and action."""
    text = OLD_EXAMPLE if old else (ROOT / "docs" / "mqtt.md").read_text()
    block = re.search(r"(?:```yaml\n)?(alias: Kitchen lights on by voice\n.*?)(```|$)", text,
                      re.S)
    if block is None:
        raise Failed("docs/mqtt.md has no 'Kitchen lights on by voice' example")
    yaml = block.group(1).rstrip("\n") + "\n"
    yaml = yaml.replace("event.roomscribe_kitchen_pi_transcript",
                        f"event.roomscribe_{DEVICE}_transcript")
    yaml = yaml.replace("'lights on'", f"'{PHRASE}'")
    yaml = re.sub(r"actions:\n(  .*\n)+", "actions:\n  - action: counter.increment\n"
                  "    target: {entity_id: counter.voice}\n", yaml)
    if f"'{PHRASE}'" not in yaml or "counter.increment" not in yaml:
        raise Failed(f"could not adapt the docs example:\n{yaml}")
    return "- id: docs_example\n" + "".join(f"  {line}\n" for line in yaml.splitlines())


def daemon_config(tmp: Path, name: str, wav: Path, broker: int, server: int,
                  device: str = DEVICE) -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(f"""
[device]
id = "{device}"
room = "{ROOM}"
[capture]
source = "file"
file = "{wav}"
[uplink]
url = "ws://127.0.0.1:{server}/v1/realtime"
final_timeout_s = 30
[mqtt]
port = {broker}
[state]
dir = "{tmp / 'state'}"
""")
    return path


def entity_id(component: str, key: str, device: str = DEVICE) -> str:
    return f"{component}.roomscribe_{device}_{key}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hass", required=True, help="the hass executable of its own venv")
    parser.add_argument("--old-example", action="store_true",
                        help="use the example automation docs/mqtt.md had before (to see "
                             "the checks fail)")
    args = parser.parse_args()
    results: list[tuple[str, bool, str]] = []

    def check(name: str, ok: bool, detail: str = "") -> None:
        results.append((name, ok, detail))
        print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)

    with tempfile.TemporaryDirectory(prefix="ha-check-") as tmp_name:
        tmp = Path(tmp_name)
        broker = start_broker(tmp)
        server, server_port = start_server(tmp)
        ha = HomeAssistant(args.hass, tmp)
        daemon: Proc | None = None
        sub: Subscriber | None = None
        try:
            version = subprocess.run([args.hass, "--version"], capture_output=True,
                                     text=True, timeout=120).stdout.strip()
            print(f"Home Assistant {version}", flush=True)
            ha.write_config(docs_automation(args.old_example))
            ha.start()
            ha.onboard()
            ha.add_mqtt(broker.port)
            check("onboarded over the API, MQTT integration added", True)
            sub = Subscriber(broker.port)

            speech = make_room(tmp / "speech.wav", gap_s=2.0, tail_s=4.0)
            quiet = make_room(tmp / "quiet.wav", clips=[], gap_s=1.0, tail_s=600.0)
            daemon = Proc([*PYTHON, "run", "--config",
                           str(daemon_config(tmp, "speech", speech.path, broker.port,
                                             server_port))], tmp / "daemon-1.log")
            daemon.start()
            wanted = [entity_id(c, k) for c, keys in ENTITIES.items() for k in keys]
            wait(lambda: all(e in ha.states() for e in wanted), 120, "every entity")
            check("every entity discovered", True, ", ".join(wanted))
            retired = entity_id("binary_sensor", "uplink")
            check("no retired Uplink connectivity sensor", retired not in ha.states())

            voice = "counter.voice"
            wait(lambda: ha.state(voice).get("state") != "0", 180,
                 f"the example automation to fire on '{PHRASE}'")
            event = ha.state(entity_id("event", "transcript"))
            text = ha.state(entity_id("sensor", "last_transcript"))
            check("event entity fired with the text", "text" in event["attributes"],
                  repr(event["attributes"].get("text", ""))[:80])
            check("last transcript sensor <= 255 chars, text attribute",
                  len(str(text.get("state"))) <= 255 and "text" in text["attributes"],
                  repr(text.get("state"))[:80])
            assert daemon.wait(180) == 0, daemon.output()[-2000:]
            said = [t for t in sub.texts() if PHRASE in t.lower()]
            fired = ha.state(voice).get("state")
            check("example automation fired once per transcript with the phrase",
                  fired == str(len(said)), f"counter {fired}, transcripts {said}")
            total_before = len(sub.texts())
            wait(lambda: ha.state(entity_id("switch", "mute")).get("state") == "unavailable", 60,
                 "entities unavailable after the daemon stopped")
            check("entities unavailable after a clean stop", True)

            # A restart: the event entity goes unavailable -> its old state. The docs'
            # automation must not take that for a new sentence.
            daemon = Proc([*PYTHON, "run", "--config",
                           str(daemon_config(tmp, "quiet", quiet.path, broker.port,
                                             server_port))], tmp / "daemon-2.log")
            daemon.start()
            wait(lambda: ha.state(entity_id("event", "transcript")).get("state")
                 not in ("unavailable", "unknown"), 60, "the event entity back")
            wait(lambda: ha.state(entity_id("sensor", "status")).get("state") == "idle", 60,
                 "status idle")
            time.sleep(5)  # the automation would have run by now
            check("no re-fire after the daemon restarted", ha.state(voice).get("state") == fired,
                  f"counter {ha.state(voice)['state']}")
            published = ha.state(entity_id("sensor", "published"))
            check("Transcripts published kept across the restart",
                  published.get("state") == str(total_before),
                  f"{total_before} transcripts, sensor {published.get('state')}")
            problem = ha.state(entity_id("binary_sensor", "transcription"))
            check("Transcription OK (not a problem) while idle",
                  problem.get("state") == "off")
            error = ha.state(entity_id("sensor", "last_error"))
            check("Last error reads 'none', not blank",
                  error.get("state") == "none")

            mute = entity_id("switch", "mute")
            ha.call("switch", "turn_on", mute)
            wait(lambda: ha.state(entity_id("sensor", "status")).get("state") == "muted", 30,
                 "status muted")
            check("mute on: switch on, status muted, Transcription still OK",
                  ha.state(mute).get("state") == "on"
                  and ha.state(entity_id("binary_sensor", "transcription")).get("state") == "off")
            ha.call("switch", "turn_off", mute)
            wait(lambda: ha.state(entity_id("sensor", "status")).get("state") == "idle", 30,
                 "status idle after unmute")
            check("mute off round trip", ha.state(mute).get("state") == "off")

            # Home Assistant restarts: its birth message brings discovery again, and the
            # restored event state must not look like a new sentence either.
            ha.proc.stop(timeout_s=60)
            ha.start()
            wait(lambda: ha.state(entity_id("sensor", "status")).get("state") == "idle", 120,
                 "status idle after Home Assistant restarted")
            time.sleep(5)
            check("after a Home Assistant restart: entities back, no re-fire",
                  ha.state(voice).get("state") == fired
                  and ha.state(mute).get("state") == "off",
                  f"counter {ha.state(voice).get('state')}")

            devices = [d for d in ha.ws({"type": "config/device_registry/list"})
                       if ["mqtt", f"roomscribe_{DEVICE}"] in d["identifiers"]]
            areas = {a["area_id"]: a["name"]
                     for a in ha.ws({"type": "config/area_registry/list"})}
            device = devices[0] if devices else {}
            check("device: name, model, sw_version, area from device.room",
                  device.get("name") == f"roomscribe {ROOM}"
                  and device.get("model") == "roomscribe" and bool(device.get("sw_version"))
                  and areas.get(device.get("area_id") or "") == ROOM,
                  json.dumps({k: device.get(k) for k in
                              ("name", "model", "sw_version", "hw_version", "area_id")}))

            # The Pi gets a new hostname, so a new device.id: the old device must go.
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(60) == 0, daemon.output()[-2000:]
            daemon = Proc([*PYTHON, "run", "--config",
                           str(daemon_config(tmp, "renamed", quiet.path, broker.port,
                                             server_port, device=RENAMED))],
                          tmp / "daemon-renamed.log")
            daemon.start()
            renamed = [entity_id(c, k, RENAMED) for c, keys in ENTITIES.items() for k in keys]
            wait(lambda: all(e in ha.states() for e in renamed), 60, "the renamed entities")
            wait(lambda: not any(e in ha.states() for e in wanted), 60,
                 "the old device's entities removed")

            def registered(device_id: str) -> bool:
                return any(["mqtt", f"roomscribe_{device_id}"] in d["identifiers"]
                           for d in ha.ws({"type": "config/device_registry/list"}))
            wait(lambda: not registered(DEVICE), 30, "the old device out of the registry")
            check("renamed device.id: the old device and its entities removed, the new one "
                  "has every entity", registered(RENAMED))
            time.sleep(3)
            check("example automation did not fire on the rename",
                  ha.state(voice).get("state") == fired)

            daemon.signal(signal.SIGTERM)
            assert daemon.wait(60) == 0, daemon.output()[-2000:]
            wait(lambda: ha.state(entity_id("switch", "mute", RENAMED)).get("state")
                 == "unavailable", 60, "unavailable")
            forget = subprocess.run([*PYTHON, "forget", "--config",
                                     str(tmp / "renamed.toml")], capture_output=True,
                                    text=True, timeout=60)
            check("roomscribe forget exits 0", forget.returncode == 0,
                  forget.stdout.strip() or forget.stderr.strip())
            wait(lambda: not any(e in ha.states() for e in renamed), 60, "entities removed")
            check("forget removed every entity", True)
            time.sleep(3)  # anything the removal sets off is in the log by now
            check("example automation did not fire on forget",
                  ha.state(voice).get("state") == fired)
        except (Failed, AssertionError, urllib.error.HTTPError, KeyError, ValueError,
                TypeError) as exc:
            check("run", False, str(exc))
        finally:
            if sub is not None:
                sub.close()
            if daemon is not None:
                daemon.stop()
            ha.proc.stop(timeout_s=60)
            server.stop()
            broker.stop()
        problems = ha.log_problems()
        ours = [line for line in problems if OURS.search(line)]
        check("Home Assistant log: no warning or error about our payloads", not ours,
              f"{len(ours)} of {len(problems)} warning/error lines")
        for line in problems:
            print(f"     {'OURS ' if line in ours else 'other'} {line[:300]}")
    failed = [name for name, ok, _ in results if not ok]
    print(f"\n{len(results) - len(failed)}/{len(results)} checks passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

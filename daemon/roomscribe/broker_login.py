"""The broker login of the command-line tools (`forget`, `listen`, `check --connect`).

The daemon's own connection (publish.py) never gives up. These tools are run by a
person at a terminal, who wants to know at once that the broker is not there or did
not take the login: connect once, wait (bounded) for the broker's answer, and fail in
one line naming the broker.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .broker_trouble import LOGIN_TIMEOUT_S, LoginVersion, silent_hint
from .config import Settings
from .publish import PublishError
from .retry import describe


class LoginError(PublishError):
    """Why a tool could not log in, in one line; `kind` is "unreachable" (`cause` is
    the socket's error), "silent", "dropped" (closed with no answer) or "refused"
    (`reason` is the broker's, `code` its reason code)."""

    def __init__(self, message: str,
                 kind: Literal["unreachable", "silent", "dropped", "refused"],
                 reason: str = "", cause: BaseException | None = None, code: int = 0) -> None:
        super().__init__(message)
        self.kind, self.reason, self.cause, self.code = kind, reason, cause, code


def where(settings: Settings) -> str:
    return f"{settings.mqtt.host}:{settings.mqtt.port}"


def login(settings: Settings, password: str, tool: str, client_id: str,
          timeout_s: float = LOGIN_TIMEOUT_S) -> mqtt.Client:
    """A client connected and accepted, its network loop running; a LoginError (one
    line, no secret) when the broker is unreachable, silent or refuses. A broker that
    refuses MQTT 5 or leaves it unanswered is asked again with 3.1.1, as the daemon
    does (broker_trouble.LoginVersion; `client.protocol` says which was taken)."""
    version = LoginVersion(settings.mqtt.protocol, 0.0, 0.0)
    try:
        return _login(settings, password, tool, client_id, timeout_s, version.current)
    except LoginError as exc:
        if exc.kind == "refused":
            again = version.answered(exc.code)
        else:
            again = version.unanswered() if exc.kind in ("silent", "dropped") else None
        if again is None:
            raise
    return _login(settings, password, tool, client_id, timeout_s, version.current,
                  tried="neither in MQTT 5 nor in 3.1.1")


def _login(settings: Settings, password: str, tool: str, client_id: str, timeout_s: float,
           protocol: str, tried: str = "") -> mqtt.Client:
    m = settings.mqtt
    answered = threading.Event()
    refused: list[tuple[str, int]] = []
    dropped: list[str] = []

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            refused.append((str(reason), int(reason.value)))
        answered.set()

    def on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not answered.is_set():
            dropped.append(str(reason))
            answered.set()

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                         client_id=client_id,
                         protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311)
    if m.username:
        client.username_pw_set(m.username, password or None)
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    versions = f", {tried}" if tried else ""
    try:
        if m.tls:
            client.tls_set(ca_certs=m.ca_file or None, certfile=m.cert_file or None,
                           keyfile=m.key_file or None)
        client.connect(m.host, m.port, keepalive=max(5, m.keepalive_s))
    except (OSError, ValueError) as exc:
        raise LoginError(f"{tool}: cannot connect to the broker at {where(settings)}: "
                         f"{describe(exc)}", "unreachable", cause=exc) from None
    client.loop_start()
    try:
        if not answered.wait(timeout_s):
            raise LoginError(f"{tool}: {where(settings)} did not answer within "
                             f"{timeout_s:.0f} s{versions} ({silent_hint(m.tls)})",
                             "silent")
        if dropped:
            raise LoginError(f"{tool}: {where(settings)} closed the connection without "
                             f"answering the login{versions} ({silent_hint(m.tls)})",
                             "dropped")
        if refused:
            reason, code = refused[0]
            raise LoginError(f"{tool}: {where(settings)} refused the connection: "
                             f"{reason} (check mqtt.username, the password and the "
                             "broker ACL)", "refused", reason, code=code)
    except LoginError:
        client.disconnect()
        client.loop_stop()
        raise
    return client

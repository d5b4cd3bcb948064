"""`roomscribe check --connect`: try each part for real, one line each, with a fix.

The microphone must open at the configured format and hear something; the
transcription server must accept the key and start a session; the broker must accept
the login. Exit status 0 when every part works, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import paho.mqtt.client as mqtt
import websockets
from websockets.exceptions import InvalidStatus

from . import broker_login, config, credentials, protocol
from .broker_trouble import LOGIN_TIMEOUT_S, silent_hint
from .capture import CaptureError, CaptureStats, busy_fix, frames
from .config import Settings
from .level import SILENT_PEAK_DBFS, Meter
from .retry import describe, settings_refused
from .ring import Ring

MIC_LISTEN_S = 2.0


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        # asyncio words it "Connect call failed ('127.0.0.1', 8765)", which hides why
        return "connection refused (nothing listens there)"
    return describe(exc)


@dataclass(frozen=True)
class Result:
    part: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        fix = f" -> {self.fix}" if self.fix and not self.ok else ""
        return f"{mark} {self.part}: {self.detail}{fix}"


async def check_mic(settings: Settings) -> Result:
    cap = settings.capture
    what = cap.file if cap.source == "file" else (
        "stdin" if cap.source == "stdin" else
        f"{cap.device} at {cap.rate_hz} Hz x {cap.channels}")
    stats, meter, heard = CaptureStats(), Meter(), 0.0
    try:
        async with asyncio.timeout(MIC_LISTEN_S + 3.0):
            source = frames(cap, stats)
            async with contextlib.aclosing(source):
                async for frame in source:
                    meter.add(frame.pcm)
                    heard += frame.duration_s
                    if heard >= MIC_LISTEN_S:
                        break
    except CaptureError as exc:
        return Result("microphone", False, str(exc),
                      busy_fix(str(exc)) or "check capture.device with `roomscribe devices`")
    except TimeoutError:
        return Result("microphone", False,
                      f"{what}: no audio within {MIC_LISTEN_S + 3:.0f} s"
                      f"{' (' + stats.last_error + ')' if stats.last_error else ''}",
                      busy_fix(stats.last_error) or "is the mic plugged in and "
                      "capture.device right? (`roomscribe devices`)")
    level = meter.take()
    if level.peak_dbfs <= SILENT_PEAK_DBFS:
        return Result("microphone", False, f"{what}: opens but hears nothing "
                      f"(peak {level.peak_dbfs:.0f} dBFS)",
                      "unmute and raise the capture gain (alsamixer, F4) or pick another channel")
    return Result("microphone", True, f"{what}: {level.rms_dbfs:.0f} dBFS rms, "
                  f"peak {level.peak_dbfs:.0f} dBFS, {level.clipped} clipped samples")


async def check_server(settings: Settings) -> Result:
    up = settings.uplink
    where = up.url.split("?")[0]
    try:
        key = credentials.api_key(settings)
        async with asyncio.timeout(up.connect_timeout_s):
            async with websockets.connect(protocol.connect_url(up),
                                          additional_headers=protocol.headers(key)) as ws:
                first = await ws.recv()
    except config.ConfigError as exc:
        return Result("transcription server", False, str(exc), "set the API key")
    except InvalidStatus as exc:
        if exc.response.status_code in (401, 403):
            fix = "check the API key (TOGETHER_API_KEY or uplink.api_key_file)"
        elif up.vad.send and settings_refused(exc):
            fix = ("the server may not accept [uplink.vad]: the daemon then connects with "
                   "the server's own VAD defaults; set values it accepts, or send = false")
        else:
            fix = "check uplink.url and model"
        return Result("transcription server", False, f"{where}: {describe(exc)}", fix)
    except (OSError, TimeoutError, websockets.WebSocketException) as exc:
        return Result("transcription server", False, f"{where}: {_reason(exc)}",
                      "is the server running and uplink.url right? (`roomscribe serve`)")
    outputs = protocol.ClientCore(ring=Ring(1), model=up.model).receive(first, 0.0)
    if outputs and isinstance(outputs[0], protocol.Ready):
        return Result("transcription server", True,
                      f"{where}: session {outputs[0].session_id} started ({up.model})")
    return Result("transcription server", False, f"{where}: unexpected first event {first!r:.80}",
                  "is uplink.url a realtime transcription endpoint?")


def check_broker(settings: Settings) -> Result:
    where = broker_login.where(settings)
    try:
        client = broker_login.login(settings, credentials.mqtt_password(settings), "check",
                                    f"roomscribe-check-{uuid.uuid4().hex[:8]}")
    except broker_login.LoginError as exc:
        if exc.kind == "refused":
            return Result("broker", False, f"{where}: refused: {exc.reason}",
                          "check mqtt.username and the password")
        if exc.kind in ("silent", "dropped"):
            what = (f"no answer within {LOGIN_TIMEOUT_S:.0f} s" if exc.kind == "silent"
                    else "closed the connection without answering the login")
            return Result("broker", False, f"{where}: {what}, neither in MQTT 5 nor in 3.1.1"
                          if settings.mqtt.protocol == "5" else f"{where}: {what}",
                          silent_hint(settings.mqtt.tls))
        return Result("broker", False, f"{where}: {_reason(exc.cause or exc)}",
                      "is the broker running and mqtt.host/port/tls right?")
    older = settings.mqtt.protocol == "5" and client.protocol != mqtt.MQTTv5
    client.disconnect()
    client.loop_stop()
    user = settings.mqtt.username
    return Result("broker", True, f"{where}: login accepted{' as ' + user if user else ''}"
                  + (" with MQTT 3.1.1 (not with MQTT 5; the daemon falls back the same way)"
                     if older else ""))


def check_connect(settings: Settings, out: TextIO = sys.stdout) -> int:
    checks: list[Callable[[], Result]] = [
        lambda: asyncio.run(check_mic(settings)),
        lambda: asyncio.run(check_server(settings)),
        lambda: check_broker(settings),
    ]
    results = []
    for check in checks:
        result = check()
        results.append(result)
        print(result.line(), file=out, flush=True)
    return 0 if all(r.ok for r in results) else 1

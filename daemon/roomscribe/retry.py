"""The one place that decides retry-or-give-up for the uplink.

Everything the uplink can fail with passes through `classify`, and every `error` or
`failed` event the server sends through `server_event_error`; the reconnect loop only
asks them. A wrong key or model stays wrong, so those are retried slowly and loudly;
network trouble is retried with capped, fully jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import socket
import ssl

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus


class Verdict(enum.Enum):
    TRANSIENT = "transient"  # network, server restart, overload: back off and retry
    SLOW = "slow"  # auth or model rejected: retry after minutes, report it
    FATAL = "fatal"  # our own bug or misuse: let it propagate


class UplinkError(Exception):
    """A condition the uplink raises itself, with its verdict attached."""

    def __init__(self, message: str, verdict: Verdict = Verdict.TRANSIENT,
                 elsewhere: bool = False) -> None:
        super().__init__(message)
        self.verdict = verdict
        self.elsewhere = elsewhere  # the server said to go to another endpoint


# Together's close code for "no capacity here: retry elsewhere".
CLOSE_TRY_ELSEWHERE = 4503

# Server error codes (handshake body or `error` event) that no retry will fix soon.
SLOW_CODES = frozenset({
    "invalid_api_key", "missing_api_key", "model_not_available", "invalid_model",
    "unsupported_audio_format", "insufficient_quota", "account_deactivated",
})


# The server could not read a frame we sent. TCP and TLS never corrupt a frame, so a
# path that did (a broken proxy) lost that audio from the server's timeline, and every
# time after it would be early: a new connection replays from the last final.
UNREADABLE_FRAME_CODES = frozenset({"invalid_json", "invalid_base64"})


# Refusals that name what is wrong, and it is not the turn_detection settings.
NOT_VAD_CODES = SLOW_CODES | {"invalid_audio_format", "not_found", "no_healthy_workers"}


def server_event_error(code: str, message: str, *, fatal: bool) -> UplinkError | None:
    """What an `error` or `failed` event ends: the connection (the UplinkError to raise,
    with its verdict), or nothing (None: logged, and the session goes on). Together and
    OpenAI send `error` for things that are not always fatal (protocol.md)."""
    if code in SLOW_CODES:
        return UplinkError(f"server error {code}: {message}", Verdict.SLOW)
    if fatal:
        return UplinkError(f"server ended the session: {code}: {message}")
    if code in UNREADABLE_FRAME_CODES:
        return UplinkError(f"server could not read a frame we sent ({code}: {message})")
    if code == "no_healthy_workers":
        return UplinkError(f"server has no capacity ({code})", elsewhere=True)
    if code == "session_expired":  # OpenAI's 60-minute limit: a new session goes on
        return UplinkError("server ended the session (session_expired)")
    return None


def _status_code(exc: InvalidStatus) -> tuple[int, str]:
    response = exc.response
    code = ""
    try:
        body = json.loads(response.body or b"{}")
        err = body.get("error", body) if isinstance(body, dict) else {}
        if isinstance(err, dict):
            code = str(err.get("code") or err.get("type") or "")
    except (ValueError, AttributeError):
        pass
    return response.status_code, code


def classify(exc: BaseException) -> Verdict:
    if isinstance(exc, UplinkError):
        return exc.verdict
    if isinstance(exc, InvalidStatus):
        status, code = _status_code(exc)
        if code in SLOW_CODES or status in (400, 401, 403, 404):
            return Verdict.SLOW
        return Verdict.TRANSIENT  # 429, 5xx, proxies
    if isinstance(exc, InvalidHandshake | ConnectionClosed | OSError | EOFError |
                  asyncio.TimeoutError | TimeoutError | ssl.SSLError | socket.gaierror):
        return Verdict.TRANSIENT
    if _raised_inside(exc, "websockets"):
        # The connection library tripped on a connection that was going away (a send
        # racing a close, seen as AttributeError from transport.abort): a new
        # connection fixes it.
        return Verdict.TRANSIENT
    return Verdict.FATAL


def _raised_inside(exc: BaseException, package: str) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    return f"{os.sep}{package}{os.sep}" in tb.tb_frame.f_code.co_filename


def should_retry(exc: BaseException, *, after_stop: bool) -> bool:
    """The reconnect loop's only question. After a stop was asked, one attempt to
    flush is all there is: a failure then ends the uplink instead of spinning."""
    return classify(exc) is not Verdict.FATAL and not after_stop


def describe(exc: BaseException) -> str:
    """One line for the log and the state topic; never includes request headers."""
    if isinstance(exc, InvalidStatus):
        status, code = _status_code(exc)
        return f"server refused the connection: HTTP {status}{' ' + code if code else ''}"
    if isinstance(exc, ConnectionClosed):
        rcvd = exc.rcvd
        if rcvd is not None:
            return f"connection closed by server: code {rcvd.code} {rcvd.reason}".strip()
        sent = exc.sent
        if sent is not None:  # we closed it, e.g. 1009 for an oversized server event
            return f"connection closed: code {sent.code} {sent.reason}".strip()
        return "connection lost"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def settings_refused(exc: BaseException) -> bool:
    """The handshake was refused as a bad request for a reason other than the key, the
    model or the audio format: the likeliest cause is a turn_detection value the
    server does not accept (ours sends 150 ms and 15 s where Together's defaults are
    250 ms and 5 s). Connecting again without them is the fix that keeps words
    coming."""
    if not isinstance(exc, InvalidStatus):
        return False
    status, code = _status_code(exc)
    return status == 400 and code not in NOT_VAD_CODES


def go_elsewhere(exc: BaseException) -> bool:
    """The endpoint says it has no capacity for us (Together: close code 4503 or error
    `no_healthy_workers`): another endpoint, at once, is the fix."""
    if isinstance(exc, ConnectionClosed) and exc.rcvd is not None:
        return exc.rcvd.code == CLOSE_TRY_ELSEWHERE
    if isinstance(exc, UplinkError):
        return exc.elsewhere
    if isinstance(exc, InvalidStatus):
        return _status_code(exc)[1] == "no_healthy_workers"
    return False


class Endpoints:
    """Which of uplink.urls to use, with no I/O: the first that works, in order.

    After a failure on the current endpoint the next one is due when the endpoint said
    to go elsewhere, refused the handshake, or has been without a session for
    `failover_after_s`. A full round with no session in between stops the switching,
    so a key that every endpoint refuses is retried at the classifier's pace."""

    def __init__(self, count: int, failover_after_s: float) -> None:
        self.count = count
        self.failover_after_s = failover_after_s
        self.current = 0
        self._failing_since: float | None = None
        self._switches = 0  # since the last session that came up

    def failed(self, exc: BaseException, now: float) -> float | None:
        """Note a failed attempt or session. Returns 0.0 when it switched endpoints (go
        now), else the longest wait before this endpoint's failover time is up (None
        for no bound)."""
        if self.count == 1 or self._switches >= self.count:
            return None
        if self._failing_since is None:
            self._failing_since = now
        refused = isinstance(exc, InvalidStatus)
        if go_elsewhere(exc) or refused or \
                now - self._failing_since >= self.failover_after_s:
            self.current = (self.current + 1) % self.count
            self._failing_since = now
            self._switches += 1
            return 0.0
        return max(0.0, self._failing_since + self.failover_after_s - now)

    def session_up(self) -> None:
        self._failing_since = None
        self._switches = 0

    def back_to_first(self) -> None:
        self.current = 0
        self._failing_since = None

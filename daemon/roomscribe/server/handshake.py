"""The opening handshake's checks, with no I/O: URL and headers in, params or an error out.

Order of checks (as a client sees them): path (404), auth (401), model (400),
input_audio_format (400), VAD query parameters (400).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from .vad import VadParams

PATHS = ("/v1/realtime", "/realtime")
AUDIO_FORMAT = "pcm_s16le_16000"
KEY_SUBPROTOCOL = "openai-insecure-api-key."
VAD_QUERY = ("threshold", "min_silence_duration_ms", "min_speech_duration_ms",
             "max_speech_duration_s", "speech_pad_ms")


@dataclass(frozen=True)
class ConnectParams:
    model: str
    input_audio_format: str
    intent: str
    vad: VadParams | None  # None: turn_detection off, the client commits


@dataclass(frozen=True)
class HandshakeError:
    status: int
    code: str
    message: str
    type: str = "invalid_request_error"

    def body(self) -> str:
        return json.dumps({"error": {"message": self.message, "type": self.type,
                                     "code": self.code, "param": None}})


def accepts_model(name: str) -> bool:
    """Any Whisper name (openai/whisper-large-v3, whisper-1, ...): we serve our own."""
    return "whisper" in name.lower()


def offered_key(authorization: str | None, subprotocols: Sequence[str]) -> str | None:
    if authorization:
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and key.strip():
            return key.strip()
    for proto in subprotocols:
        if proto.startswith(KEY_SUBPROTOCOL) and len(proto) > len(KEY_SUBPROTOCOL):
            return proto[len(KEY_SUBPROTOCOL):]
    return None


def select_subprotocol(offered: Sequence[str]) -> str | None:
    """`realtime` when offered; never echo the key-carrying one back."""
    if "realtime" in offered:
        return "realtime"
    others = [p for p in offered if not p.startswith(KEY_SUBPROTOCOL)]
    return others[0] if others else None


def check(path: str, authorization: str | None, subprotocols: Sequence[str],
          tokens: Sequence[str]) -> ConnectParams | HandshakeError:
    url = urlsplit(path)
    if url.path.rstrip("/") not in PATHS:
        return HandshakeError(404, "not_found", f"no such endpoint {url.path!r}; "
                              "use /v1/realtime")
    if tokens:
        key = offered_key(authorization, subprotocols)
        if key is None:
            return HandshakeError(401, "missing_api_key", "no API key: send "
                                  "'Authorization: Bearer <key>'")
        # Compare against every token so timing does not tell which one is close.
        matches = [hmac.compare_digest(key.encode(), t.encode()) for t in tokens]
        if not any(matches):
            return HandshakeError(401, "invalid_api_key", "the API key is not valid")
    query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
    model = query.get("model", "")
    if not model:
        return HandshakeError(400, "model_not_available",
                              "query parameter 'model' is required")
    if not accepts_model(model):
        return HandshakeError(400, "model_not_available",
                              f"model {model!r} is not available; use a whisper model")
    audio_format = query.get("input_audio_format", "")
    if audio_format != AUDIO_FORMAT:
        what = repr(audio_format) if audio_format else "missing"
        return HandshakeError(400, "invalid_audio_format",
                              f"input_audio_format is {what}; only {AUDIO_FORMAT} "
                              "is supported")
    turn = query.get("turn_detection", "server_vad").lower()
    if turn not in ("server_vad", "none", "null", ""):
        return HandshakeError(400, "invalid_value",
                              f"turn_detection must be server_vad or none, not {turn!r}")
    vad: VadParams | None = None
    if turn in ("server_vad", ""):
        try:
            vad = VadParams().updated({k: query[k] for k in VAD_QUERY if k in query})
        except ValueError as exc:
            return HandshakeError(400, "invalid_value", f"query parameter {exc}")
    return ConnectParams(model=model, input_audio_format=audio_format,
                         intent=query.get("intent", "transcription"), vad=vad)

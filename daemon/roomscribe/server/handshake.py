"""The opening handshake's checks, with no I/O: URL and headers in, params or an error out.

Order of checks (as a client sees them): path (404), auth (400 for two Authorization
headers, then 401), model (400), input_audio_format (400), VAD query parameters (400).

The key may come in three places, all seen in the wild: the `Authorization: Bearer`
header (Together's SDK, OpenAI's SDK, the daemon), the `openai-insecure-api-key.<key>`
subprotocol (browsers cannot set headers), and an `authorization=Bearer <key>` query
parameter (Together's documented browser-style example; its raw space is mended by
`repair_request_line` before websockets parses the request).
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
# Together's formats (its SDK's table): the bare aliases are 24 kHz on its servers.
# OpenAI's clients send no format at all and mean pcm16 at 24 kHz, OpenAI's only rate.
AUDIO_FORMATS = {"pcm_s16le_8000": 8000, "pcm_s16le_16000": 16000, "pcm_s16le_24000": 24000,
                 "pcm16": 24000, "pcm_s16": 24000, "pcm_s16le": 24000}
DEFAULT_AUDIO_FORMAT = "pcm16"
# OpenAI's realtime and transcription model families (besides any *whisper* name).
OPENAI_MODEL_PREFIXES = ("gpt-4o-transcribe", "gpt-4o-mini-transcribe", "gpt-realtime",
                         "gpt-4o-realtime", "gpt-4o-mini-realtime")
KEY_SUBPROTOCOL = "openai-insecure-api-key."
VAD_QUERY = ("threshold", "min_silence_duration_ms", "min_speech_duration_ms",
             "max_speech_duration_s", "speech_pad_ms")


@dataclass(frozen=True)
class ConnectParams:
    model: str
    input_audio_format: str
    intent: str
    vad: VadParams | None  # None: turn_detection off, the client commits
    # An OpenAI client (no input_audio_format in the URL, which Together requires):
    # it appends deltas, so it is sent increments (see increments.py).
    appends_deltas: bool = False

    @property
    def rate_hz(self) -> int:
        return AUDIO_FORMATS.get(self.input_audio_format, 16000)


@dataclass(frozen=True)
class HandshakeError:
    status: int
    code: str
    message: str
    type: str = "invalid_request_error"

    def body(self) -> str:
        return json.dumps({"error": {"message": self.message, "type": self.type,
                                     "code": self.code, "param": None}})


def accepts_model(name: str, served: Sequence[str] = ()) -> bool:
    """Any Whisper name (openai/whisper-large-v3, whisper-1, ...), OpenAI's transcription
    and realtime models, and the served model's own names: we serve our own model."""
    low = name.lower()
    return ("whisper" in low or low.startswith(OPENAI_MODEL_PREFIXES)
            or low in (s.lower() for s in served))


def served_names(model: str) -> tuple[str, ...]:
    """What a client may call the model we serve: "" is the bundled tiny.en; a path or
    a hub name also goes by its last component."""
    if not model:
        return ("tiny.en",)
    tail = model.rstrip("/").rsplit("/", 1)[-1]
    return (model, tail) if tail != model else (model,)


def format_rate(name: str) -> int | None:
    """The sample rate of a Together-style `input_audio_format`, None if unknown."""
    return AUDIO_FORMATS.get(name)


def _bearer(value: str) -> str | None:
    scheme, _, key = value.strip().partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


def offered_key(authorization: str | None, subprotocols: Sequence[str],
                query: str | None = None) -> str | None:
    if authorization:
        key = _bearer(authorization)
        if key:
            return key
    for proto in subprotocols:
        if proto.startswith(KEY_SUBPROTOCOL) and len(proto) > len(KEY_SUBPROTOCOL):
            return proto[len(KEY_SUBPROTOCOL):]
    if query:
        return _bearer(query)
    return None


def repair_request_line(line: bytes) -> bytes:
    """`GET <target> HTTP/1.1` whose target holds raw spaces (Together's documented
    `authorization=Bearer <key>`), with those spaces as %20; any other line as it is.
    websockets reads a request line as exactly three space-separated parts and drops
    the connection without a word otherwise."""
    parts = line.split(b" ")
    if len(parts) > 3 and parts[0] == b"GET" and parts[-1].startswith(b"HTTP/"):
        return b" ".join([parts[0], b"%20".join(p for p in parts[1:-1] if p), parts[-1]])
    return line


def select_subprotocol(offered: Sequence[str]) -> str | None:
    """`realtime` when offered; never echo the key-carrying one back."""
    if "realtime" in offered:
        return "realtime"
    others = [p for p in offered if not p.startswith(KEY_SUBPROTOCOL)]
    return others[0] if others else None


def check(path: str, authorization: str | Sequence[str] | None, subprotocols: Sequence[str],
          tokens: Sequence[str], served: Sequence[str] = ("tiny.en",),
          ) -> ConnectParams | HandshakeError:
    """`authorization`: the Authorization header's value, or every value sent."""
    url = urlsplit(path)
    if url.path.rstrip("/") not in PATHS:
        return HandshakeError(404, "not_found", f"no such endpoint {url.path!r}; "
                              "use /v1/realtime")
    headers = [authorization] if isinstance(authorization, str) else list(authorization or ())
    if len(headers) > 1:
        return HandshakeError(400, "invalid_request", f"{len(headers)} Authorization "
                              "headers; send exactly one")
    query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
    if tokens:
        key = offered_key(headers[0] if headers else None, subprotocols,
                          query.get("authorization"))
        if key is None:
            return HandshakeError(401, "missing_api_key", "no API key: send "
                                  "'Authorization: Bearer <key>'")
        # Compare against every token so timing does not tell which one is close.
        matches = [hmac.compare_digest(key.encode(), t.encode()) for t in tokens]
        if not any(matches):
            return HandshakeError(401, "invalid_api_key", "the API key is not valid")
    intent = query.get("intent", "transcription")
    model = query.get("model", "")
    if not model and "intent" in query:
        # OpenAI's transcription sessions connect with ?intent=transcription alone.
        model = served[0] if served else "whisper"
    if not model:
        return HandshakeError(400, "model_not_available",
                              "query parameter 'model' is required")
    if not accepts_model(model, served):
        names = ", ".join([*served, "any whisper model", "gpt-4o-transcribe"])
        return HandshakeError(400, "model_not_available",
                              f"model {model!r} is not available; use one of: {names}")
    audio_format = query.get("input_audio_format") or DEFAULT_AUDIO_FORMAT
    if audio_format not in AUDIO_FORMATS:
        return HandshakeError(400, "invalid_audio_format",
                              f"input_audio_format {audio_format!r} is not supported; use "
                              f"one of {', '.join(AUDIO_FORMATS)}")
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
    return ConnectParams(model=model, input_audio_format=audio_format, intent=intent,
                         vad=vad, appends_deltas="input_audio_format" not in query)

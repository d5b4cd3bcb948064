"""Client side of the realtime transcription protocol, with no I/O.

Text frames in, outputs and text frames out. The core knows, for each connection,
which absolute ring sample is the server's sample 0, so every `audio_start_ms` /
`audio_end_ms` the server reports maps back to captured audio: that gives each
transcript its capture times and tells the ring exactly what it may forget.

Settling rules (what the ring may release):
- a `completed` or `failed` whose range the server reported (speech_stopped /
  committed): everything up to its end;
- a `completed` from a server that reports no ranges (Together): up to the audio sent
  when it arrived, less `min_silence + pad + infer_margin_s` (conservative: it may send
  a segment's tail again, it never skips unheard speech);
- silence: audio sent more than `settle_s` ago while no segment was open, because a
  server that heard speech in it would have said so by now.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from .audio import SAMPLE_RATE_HZ
from .config import UplinkSettings, VadSettings
from .ring import Ring
from .transcript import Transcript

SAMPLES_PER_MS = SAMPLE_RATE_HZ // 1000
AUDIO_FORMAT = "pcm_s16le_16000"


@dataclass(frozen=True, slots=True)
class Ready:
    session_id: str


@dataclass(frozen=True, slots=True)
class Partial:
    text: str
    item_id: str


@dataclass(frozen=True, slots=True)
class ServerError:
    """An `error` or `failed` event, or a frame we could not make sense of."""

    code: str
    message: str
    malformed: bool = False


Output = Ready | Partial | Transcript | ServerError


def connect_url(settings: UplinkSettings) -> str:
    parts = urlsplit(settings.url)
    query = [("model", settings.model), ("input_audio_format", AUDIO_FORMAT),
             ("intent", "transcription")]
    if parts.query:
        query = [(k, v) for k, v in query if f"{k}=" not in parts.query]
    vad = settings.vad
    if vad.send:
        if vad.type == "none":
            query.append(("turn_detection", "none"))
        else:
            query += [("turn_detection", "server_vad"), ("threshold", f"{vad.threshold:g}"),
                      ("min_silence_duration_ms", str(vad.min_silence_duration_ms)),
                      ("min_speech_duration_ms", str(vad.min_speech_duration_ms)),
                      ("max_speech_duration_s", f"{vad.max_speech_duration_s:g}"),
                      ("speech_pad_ms", str(vad.speech_pad_ms))]
    joined = "&".join(p for p in (parts.query, urlencode(query)) if p)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, joined, ""))


def headers(api_key: str) -> dict[str, str]:
    result = {"OpenAI-Beta": "realtime=v1"}
    if api_key:
        result["Authorization"] = f"Bearer {api_key}"
    return result


def _event(kind: str, **fields: Any) -> str:
    return json.dumps({"event_id": f"evt_{uuid.uuid4().hex[:20]}", "type": kind, **fields})


def append_event(pcm: bytes) -> str:
    return _event("input_audio_buffer.append", audio=base64.b64encode(pcm).decode("ascii"))


def commit_event() -> str:
    return _event("input_audio_buffer.commit")


def session_update_event(vad: VadSettings) -> str:
    turn: dict[str, Any] | None = None
    if vad.type != "none":
        turn = {"type": "server_vad", "threshold": vad.threshold,
                "min_silence_duration_ms": vad.min_silence_duration_ms,
                "min_speech_duration_ms": vad.min_speech_duration_ms,
                "max_speech_duration_s": vad.max_speech_duration_s,
                "speech_pad_ms": vad.speech_pad_ms}
    return _event("transcription_session.updated", session={"turn_detection": turn})


def _error_fields(event: dict[str, Any]) -> tuple[str, str]:
    err = event.get("error")
    if isinstance(err, dict):
        code = err.get("code") or err.get("type") or "error"
        message = err.get("message") or event.get("message") or ""
        return str(code), str(message)
    if isinstance(err, str):
        return str(event.get("code") or "error"), err
    return str(event.get("code") or "error"), str(event.get("message") or "")


@dataclass(slots=True)
class _Item:
    start: int | None = None  # absolute samples
    end: int | None = None
    text: str = ""


@dataclass
class ClientCore:
    """One per daemon; survives reconnects (the ring and the outage flag carry over)."""

    ring: Ring
    model: str
    chunk_samples: int = 4096
    settle_s: float = 20.0
    min_silence_ms: int = 500
    pad_ms: int = 250
    infer_margin_s: float = 1.0
    # Per-connection state.
    session_id: str = ""
    ready: bool = False
    base: int = 0  # ring sample that is the server's sample 0
    sent: int = 0  # next ring sample to send
    live_point: int = 0  # audio before this was captured before the connection was up
    outage: bool = False  # a connection was lost earlier: later transcripts may be replays
    last_event_at: float = 0.0
    _items: dict[str, _Item] = field(default_factory=dict)
    _open_unranged: bool = False  # a delta arrived from a server that reports no ranges
    _commit_pos: int | None = None
    # The server has answered our last commit (so it has seen all audio before it).
    commit_answered: bool = False
    # (sent position, time) samples for the silence rule; one a second is plenty and
    # settle_s bounds how many are kept.
    _sent_marks: deque[tuple[int, float]] = field(default_factory=deque)

    # -- connection lifecycle -------------------------------------------------
    def connection_made(self, now: float) -> None:
        self.base = self.sent = self.ring.start
        self.live_point = self.ring.end
        self.ready = False
        self.session_id = ""
        self.last_event_at = now
        self._items.clear()
        self._open_unranged = False
        self._commit_pos = None
        self._sent_marks.clear()

    def connection_lost(self) -> None:
        self.ready = False
        self.outage = True

    # -- sending -------------------------------------------------------------
    def next_append(self, now: float, flush: bool = False) -> str | None:
        """The next append frame, or None until a whole chunk is buffered (or flush)."""
        if not self.ready:
            return None
        available = self.ring.end - max(self.sent, self.ring.start)
        if available <= 0 or (available < self.chunk_samples and not flush):
            return None
        pos, pcm = self.ring.read(self.sent, self.chunk_samples)
        if pos > self.sent:
            # The ring overflowed past what we had not sent yet: the server's timeline
            # now skips (pos - sent) samples, which we cannot express. Keep the mapping
            # honest by treating the gap as if sent (it is counted as dropped).
            self.base += pos - self.sent
        self.sent = pos + len(pcm) // 2
        if not self._sent_marks or now - self._sent_marks[-1][1] >= 1.0:
            self._sent_marks.append((self.sent, now))
        else:
            # Same second: the mark's time may be up to 1 s early for this position,
            # which _settle_silence allows for.
            self._sent_marks[-1] = (self.sent, self._sent_marks[-1][1])
        return append_event(pcm)

    def commit(self) -> str:
        self._commit_pos = self.sent
        self.commit_answered = False
        return commit_event()

    @property
    def backlog_s(self) -> float:
        return max(0, self.ring.end - self.sent) / SAMPLE_RATE_HZ

    @property
    def segment_open(self) -> bool:
        return bool(self._items) or self._open_unranged

    def stalled(self, now: float, answer_timeout_s: float) -> bool:
        """A segment is open but the server has said nothing for too long."""
        return self.segment_open and now - self.last_event_at > answer_timeout_s

    # -- receiving -----------------------------------------------------------
    def receive(self, text: str | bytes, now: float) -> list[Output]:
        try:
            event = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            return [ServerError("malformed", "server sent a frame that is not JSON", True)]
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return [ServerError("malformed", "server sent an event without a type", True)]
        self.last_event_at = now
        try:
            out = self._dispatch(event["type"], event, now)
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            return [ServerError("malformed", f"bad {event['type']} event: {exc!r}"[:200], True)]
        self._settle_silence(now)
        return out

    def _item(self, event: dict[str, Any]) -> _Item:
        item_id = str(event.get("item_id") or "")
        return self._items.setdefault(item_id, _Item())

    def _ms_to_sample(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"bad audio time {value!r}")
        return self.base + int(value) * SAMPLES_PER_MS

    def _dispatch(self, kind: str, event: dict[str, Any], now: float) -> list[Output]:
        if kind == "session.created":
            session = event.get("session")
            self.session_id = str(session.get("id", "")) if isinstance(session, dict) else ""
            self.ready = True
            return [Ready(self.session_id)]
        if kind == "input_audio_buffer.speech_started":
            self._item(event).start = self._ms_to_sample(event["audio_start_ms"])
            return []
        if kind == "input_audio_buffer.speech_stopped":
            self._item(event).end = self._ms_to_sample(event["audio_end_ms"])
            return []
        if kind == "input_audio_buffer.committed":
            self.commit_answered = True
            item = self._item(event)
            if "audio_start_ms" in event and item.start is None:
                item.start = self._ms_to_sample(event["audio_start_ms"])
            if "audio_end_ms" in event:
                item.end = self._ms_to_sample(event["audio_end_ms"])
            elif item.end is None and self._commit_pos is not None:
                item.end = self._commit_pos  # manual commit covers all audio sent
            return []
        if kind == "conversation.item.input_audio_transcription.delta":
            text = event.get("delta", event.get("transcript"))
            if not isinstance(text, str):
                raise ValueError("delta without text")
            item_id = str(event.get("item_id") or "")
            if item_id not in self._items:
                self._open_unranged = True
            return [Partial(text, item_id)]
        if kind == "conversation.item.input_audio_transcription.completed":
            text = event["transcript"]
            if not isinstance(text, str):
                raise ValueError("transcript is not text")
            if self._commit_pos is not None:
                self.commit_answered = True
            return self._finish(event, now, text)
        if kind == "conversation.item.input_audio_transcription.failed":
            code, message = _error_fields(event)
            return [*self._finish(event, now, None), ServerError(code, message)]
        if kind == "error":
            self.commit_answered = True
            code, message = _error_fields(event)
            return [ServerError(code, message)]
        return []  # unknown types are ignored, as the protocol asks

    def _finish(self, event: dict[str, Any], now: float, text: str | None) -> list[Output]:
        item_id = str(event.get("item_id") or "")
        item = self._items.pop(item_id, None) or _Item()
        self._open_unranged = False
        start = item.start if item.start is not None else max(self.base, self.ring.start)
        if item.end is not None:
            end = item.end
        else:
            guard_ms = self.min_silence_ms + self.pad_ms + self.infer_margin_s * 1000
            end = max(start, self.sent - int(guard_ms) * SAMPLES_PER_MS)
        captured_start = self.ring.time_at(start)
        captured_end = self.ring.time_at(end)
        self._release(end)
        if text is None or not text.strip():
            return []
        return [Transcript(
            text=text.strip(), item_id=item_id or f"item_{uuid.uuid4().hex[:12]}",
            session_id=self.session_id, captured_start=captured_start,
            captured_end=captured_end, received_at=now, model=self.model,
            replayed=self.outage and start < self.live_point,
        )]

    def _release(self, upto: int) -> None:
        # Never past the start of a segment still waiting for its transcript.
        for item in self._items.values():
            upto = min(upto, item.start if item.start is not None else self.ring.start)
        self.ring.release(min(upto, self.sent))

    def _settle_silence(self, now: float) -> None:
        if self._open_unranged:
            return
        horizon = None
        while self._sent_marks and now - self._sent_marks[0][1] >= self.settle_s + 1.0:
            horizon = self._sent_marks.popleft()[0]
        if horizon is not None:
            self._release(horizon)

    def tick(self, now: float) -> None:
        """Called periodically while connected so silence settles without events."""
        if self.ready:
            self._settle_silence(now)

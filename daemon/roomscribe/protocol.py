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
  server that heard speech in it would have said so by now;
- `input_audio_buffer.processed`: everything before `processed_ms`, because the server
  sends it only after the transcripts of that audio.

Flow control: a server that sends `processed` gets at most `window_samples` of audio
beyond it. A backlog then waits here, in the ring, not in the server's socket, where
it would delay pings and every other frame; the server never has to stop reading.

The answer to a commit is an event about the audio up to the commit: a `committed`
range or a `processed` watermark that reaches it, or `input_audio_buffer_commit_empty`;
from a server that reports no ranges, the next `completed`.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from bisect import bisect_left
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
    fatal: bool = False  # the session is over (Together's `failed` without event_type)


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


def is_session_created(frame: str | bytes) -> bool:
    try:
        event = json.loads(frame)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(event, dict) and event.get("type") == "session.created"


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


def _server_sample(value: Any) -> int:
    """A server time in ms as a sample on the connection's timeline."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"bad audio time {value!r}")
    return int(value) * SAMPLES_PER_MS


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


@dataclass(slots=True)
class _Span:
    """A range of ring samples the gate wants sent: [start, end), end None while open."""

    start: int
    end: int | None = None
    committed: bool = False  # this connection already sent the commit after it


@dataclass
class ClientCore:
    """One per daemon; survives reconnects (the ring, the spans and the outage flag
    carry over). The gate's Open/Close events say which audio to send; with the gate
    off, one span opens at the first sample and never closes."""

    ring: Ring
    model: str
    chunk_samples: int = 4096
    settle_s: float = 20.0
    min_silence_ms: int = 500
    pad_ms: int = 250
    infer_margin_s: float = 1.0
    # While the gate is closed, this much recent audio stays in the ring for a
    # pre-roll (Gate.lookback_samples); older unsent audio is released unsent.
    keep_samples: int = 0
    # No span and nothing unsettled for this long: the socket may close.
    idle_disconnect_s: float = float("inf")
    # Per-connection state.
    session_id: str = ""
    ready: bool = False
    sent: int = 0  # next ring sample to send
    server_pos: int = 0  # samples sent on this connection
    live_point: int = 0  # audio before this was captured before the connection was up
    outage: bool = False  # a connection was lost earlier: later transcripts may be replays
    last_event_at: float = 0.0
    commit_answered: bool = True  # the server answered our last commit (or none is owed)
    _items: dict[str, _Item] = field(default_factory=dict)
    _open_unranged: bool = False  # a delta arrived from a server that reports no ranges
    _commit_pos: int | None = None
    _spans: deque[_Span] = field(default_factory=deque)
    # (server sample, ring sample) where each contiguous run sent on this connection
    # starts: the server's timeline has no gaps, the ring's does where the gate closed.
    _runs: list[tuple[int, int]] = field(default_factory=list)
    # Flow control (see the module doc): at most this much audio beyond the server's
    # `processed` watermark is in flight (30 s = 960 kB, 1.3 MB as base64 JSON).
    window_samples: int = 30 * SAMPLE_RATE_HZ
    # Whether the server sends `processed` (learned once per endpoint: the uplink keeps
    # what each said and passes it to connection_made); one that sent none while we
    # waited pace_probe_s at a full window does not.
    server_paces: bool | None = None
    pace_probe_s: float = 5.0
    # Waiting this long at a full window with no progress, commit: the server may be
    # holding one long open segment (turn detection off, a long max_speech).
    window_stall_s: float = 15.0
    processed_pos: int = 0  # this connection's watermark, in server samples
    _blocked_since: float | None = None  # when the window filled, without progress since
    _ranged: bool = False  # this connection's server reports audio ranges
    _commit_server: int | None = None  # server sample of our last commit
    # Nothing to send until the gate first opens: a silent room needs no socket.
    _idle: bool = True
    # (sent position, time) samples for the silence rule; one a second, and settle_s
    # bounds how many are kept.
    _sent_marks: deque[tuple[int, float]] = field(default_factory=deque)

    # -- connection lifecycle -------------------------------------------------
    def connection_made(self, now: float, server_paces: bool | None = None) -> None:
        """`server_paces`: what this endpoint showed on an earlier connection (None:
        not known yet, so it is probed)."""
        self.server_paces = server_paces
        self.sent = self.ring.start
        self.server_pos = 0
        self._runs.clear()
        self.live_point = self.ring.end
        self.ready = False
        self.session_id = ""
        self.last_event_at = now
        self.commit_answered = True
        self.processed_pos = 0
        self._blocked_since = None
        self._ranged = False
        self._commit_server = None
        self._items.clear()
        self._open_unranged = False
        self._commit_pos = None
        self._sent_marks.clear()
        for span in self._spans:
            span.committed = False

    def connection_lost(self) -> None:
        self.ready = False
        self.outage = True

    # -- the gate ------------------------------------------------------------
    def gate_open(self, from_sample: int) -> None:
        self._spans.append(_Span(from_sample))
        self._idle = False

    def gate_close(self, to_sample: int) -> None:
        if self._spans and self._spans[-1].end is None:
            self._spans[-1].end = to_sample

    def gate_idle(self) -> None:
        self._idle = True

    def wants_connection(self) -> bool:
        """False once the gate has been idle long enough and everything is settled."""
        return not (self._idle and not self._spans and self.settled)

    @property
    def settled(self) -> bool:
        return not self.segment_open and self.ring.start >= self.sent and \
            self.commit_answered

    # -- sending -------------------------------------------------------------
    def _next_span(self) -> _Span | None:
        for span in self._spans:
            if span.end is None or span.end > self.sent:
                return span
        return None

    def next_append(self, now: float, flush: bool = False) -> str | None:
        """The next append frame, or None until a whole chunk is buffered (or flush)."""
        if not self.ready:
            return None
        span = self._next_span()
        if span is None:
            return None
        pos = max(self.sent, span.start, self.ring.start)
        stop = min(self.ring.end, span.end if span.end is not None else self.ring.end)
        available = stop - pos
        if available <= 0 or (available < self.chunk_samples and span.end is None
                              and not flush):
            return None
        room = self._window_room(now)
        if room <= 0:
            return None
        pos, pcm = self.ring.read(pos, min(available, self.chunk_samples, room))
        if not self._runs or self._ring_at(self.server_pos, end=False) != pos:
            # A gap the gate skipped (or a full ring dropped): the server's timeline
            # runs on without it, so note where this run starts.
            self._runs.append((self.server_pos, pos))
        count = len(pcm) // 2
        self.sent = pos + count
        self.server_pos += count
        if not self._sent_marks or now - self._sent_marks[-1][1] >= 1.0:
            self._sent_marks.append((self.sent, now))
        else:
            # Same second: the mark's time may be up to 1 s early for this position,
            # which _settle_silence allows for.
            self._sent_marks[-1] = (self.sent, self._sent_marks[-1][1])
        return append_event(pcm)

    def _window_room(self, now: float) -> int:
        """Samples we may still send before the window is full (see the module doc)."""
        if self.server_paces is False:
            return self.chunk_samples
        room = self.window_samples - (self.server_pos - self.processed_pos)
        if room > 0:
            self._blocked_since = None
            return room
        if self._blocked_since is None:
            self._blocked_since = now
        if self.server_paces is None and now - self._blocked_since >= self.pace_probe_s:
            self.server_paces = False  # it never said how far it got: do without
            self._blocked_since = None  # and its silence is no stall to commit for
            return self.chunk_samples
        return 0

    @property
    def window_full(self) -> bool:
        return self._blocked_since is not None

    def commit_due(self, now: float | None = None) -> bool:
        """A closed span has been sent whole: commit so its last words come now. Also
        when the window has been full for window_stall_s without progress."""
        if now is not None and self._blocked_since is not None and self.commit_answered \
                and self.ready and now - self._blocked_since >= self.window_stall_s:
            self._blocked_since = now  # once per stall
            return True
        for span in self._spans:
            if span.end is not None and span.end <= self.sent and not span.committed \
                    and self.ready:
                span.committed = True
                return True
        return False

    def commit(self) -> str:
        self._commit_pos = self.sent
        self._commit_server = self.server_pos
        self.commit_answered = False
        return commit_event()

    def _answers_commit(self, server_sample: int) -> None:
        """An event says the server is done with audio up to `server_sample`."""
        if self._commit_server is not None and \
                server_sample >= self._commit_server - SAMPLES_PER_MS:
            self.commit_answered = True

    @property
    def untranscribed_s(self) -> float:
        """Captured audio the gate wanted sent that no transcript has settled yet."""
        total = 0
        for span in self._spans:
            end = self.ring.end if span.end is None else min(span.end, self.ring.end)
            total += max(0, end - max(span.start, self.ring.start))
        return total / SAMPLE_RATE_HZ

    def abandon(self) -> float:
        """Stopping with audio not transcribed: count it as dropped; its seconds."""
        lost = self.untranscribed_s
        self.ring.dropped_samples += int(lost * SAMPLE_RATE_HZ)
        return lost

    def _ring_at(self, server_sample: int, end: bool) -> int:
        """Ring sample of a server sample; an `end` on a run boundary stays in the
        earlier run (ends are exclusive)."""
        if not self._runs:
            return self.sent + server_sample - self.server_pos
        index = bisect_left(self._runs, (server_sample + (0 if end else 1), -1)) - 1
        srv, ring = self._runs[max(0, index)]
        return ring + server_sample - srv

    @property
    def backlog_s(self) -> float:
        span = self._next_span()
        if span is None:
            return 0.0
        return max(0, self.ring.end - max(self.sent, span.start)) / SAMPLE_RATE_HZ

    @property
    def segment_open(self) -> bool:
        return bool(self._items) or self._open_unranged

    def stalled(self, now: float, answer_timeout_s: float) -> bool:
        """A segment is open but the server has said nothing for too long."""
        return self.segment_open and now - self.last_event_at > answer_timeout_s

    # -- receiving -----------------------------------------------------------
    def receive(self, text: str | bytes, now: float, wall: float | None = None
                ) -> list[Output]:
        """Handle one server frame; `now` is the monotonic clock the ring's capture
        times are on, `wall` the Unix time now (defaults to `now`): transcripts get
        `received_at` and capture times on the wall clock as it reads now."""
        try:
            event = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            return [ServerError("malformed", "server sent a frame that is not JSON", True)]
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return [ServerError("malformed", "server sent an event without a type", True)]
        self.last_event_at = now
        try:
            out = self._dispatch(event["type"], event, now, now if wall is None else wall)
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            return [ServerError("malformed", f"bad {event['type']} event: {exc!r}"[:200], True)]
        self._settle_silence(now)
        return out

    def _item(self, event: dict[str, Any]) -> _Item:
        item_id = str(event.get("item_id") or "")
        return self._items.setdefault(item_id, _Item())

    def _ms_to_sample(self, value: Any, end: bool = False) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"bad audio time {value!r}")
        return self._ring_at(int(value) * SAMPLES_PER_MS, end)

    def _dispatch(self, kind: str, event: dict[str, Any], now: float,
                  wall: float) -> list[Output]:
        if kind == "session.created":
            session = event.get("session")
            self.session_id = str(session.get("id", "")) if isinstance(session, dict) else ""
            self.ready = True
            return [Ready(self.session_id)]
        if kind == "input_audio_buffer.speech_started":
            self._ranged = True
            self._item(event).start = self._ms_to_sample(event["audio_start_ms"])
            return []
        if kind == "input_audio_buffer.speech_stopped":
            self._ranged = True
            self._item(event).end = self._ms_to_sample(event["audio_end_ms"], end=True)
            return []
        if kind == "input_audio_buffer.committed":
            item = self._item(event)
            if "audio_start_ms" in event and item.start is None:
                item.start = self._ms_to_sample(event["audio_start_ms"])
            if "audio_end_ms" in event:
                self._ranged = True
                item.end = self._ms_to_sample(event["audio_end_ms"], end=True)
                self._answers_commit(_server_sample(event["audio_end_ms"]))
            else:
                self.commit_answered = True  # a server without ranges: it is the answer
                if item.end is None and self._commit_pos is not None:
                    item.end = self._commit_pos  # manual commit covers all audio sent
            return []
        if kind == "input_audio_buffer.processed":
            mark = min(_server_sample(event["processed_ms"]), self.server_pos)
            self.server_paces = True
            if mark > self.processed_pos:
                self.processed_pos = mark
                self._blocked_since = None  # progress: the stall clock starts again
            self._answers_commit(mark)
            if self._runs:
                self._release(self._ring_at(self.processed_pos, end=True))
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
            if self._commit_pos is not None and not self._ranged and not self.server_paces:
                self.commit_answered = True  # all a server without ranges will say
            return self._finish(event, wall - now, wall, text)
        if kind == "conversation.item.input_audio_transcription.failed":
            code, message = _error_fields(event)
            if "event_type" not in event and not event.get("item_id"):
                # Together: no event_type = the session failed (a close follows); keep
                # the audio for the next connection instead of settling it.
                return [ServerError(code, message, fatal=True)]
            return [*self._finish(event, wall - now, wall, None), ServerError(code, message)]
        if kind == "error":
            code, message = _error_fields(event)
            if code == "input_audio_buffer_commit_empty":
                self.commit_answered = True  # nothing to transcribe: also an answer
                return []
            return [ServerError(code, message)]
        return []  # unknown types are ignored, as the protocol asks

    def _finish(self, event: dict[str, Any], to_wall_s: float, wall: float,
                text: str | None) -> list[Output]:
        """`to_wall_s`: wall clock minus the ring's (monotonic) clock, as of now."""
        item_id = str(event.get("item_id") or "")
        item = self._items.pop(item_id, None) or _Item()
        self._open_unranged = False
        start = item.start if item.start is not None else self.ring.start
        if item.end is not None:
            end = item.end
        else:
            guard_ms = self.min_silence_ms + self.pad_ms + self.infer_margin_s * 1000
            end = max(start, self.sent - int(guard_ms) * SAMPLES_PER_MS)
        captured_start = self.ring.time_at(start) + to_wall_s
        captured_end = self.ring.time_at(end) + to_wall_s
        self._release(end)
        if text is None or not text.strip():
            return []
        return [Transcript(
            text=text.strip(), item_id=item_id or f"item_{uuid.uuid4().hex[:12]}",
            session_id=self.session_id, captured_start=captured_start,
            captured_end=captured_end, received_at=wall, model=self.model,
            replayed=self.outage and start < self.live_point,
        )]

    def _release(self, upto: int) -> None:
        # Never past the start of a segment still waiting for its transcript.
        for item in self._items.values():
            upto = min(upto, item.start if item.start is not None else self.ring.start)
        self.ring.release(min(upto, self.sent))
        self._release_gap()

    def _release_gap(self) -> None:
        """Audio the gate will never send goes once everything sent is settled."""
        while self._spans and self._spans[0].end is not None \
                and self._spans[0].end <= self.ring.start:
            self._spans.popleft()
        if self.segment_open or self.ring.start < self.sent:
            return
        upto = self._spans[0].start if self._spans else self.ring.end - self.keep_samples
        if upto > self.ring.start:
            self.ring.release(upto)
            self.sent = max(self.sent, self.ring.start)

    def _settle_silence(self, now: float) -> None:
        if self._open_unranged:
            return
        horizon = None
        while self._sent_marks and now - self._sent_marks[0][1] >= self.settle_s + 1.0:
            horizon = self._sent_marks.popleft()[0]
        if horizon is not None:
            self._release(horizon)

    def tick(self, now: float) -> None:
        """Called periodically so silence settles without events."""
        if self.ready:
            self._settle_silence(now)
        self._release_gap()

"""One realtime session as a sans-I/O state machine: JSON text in, events and jobs out.

`Session.receive()` takes a client message and returns server events (dicts to send
as JSON, in order) and `DecodeJob`s (audio for the shared model). `Session.decoded()`
takes a job's result and returns the events it causes. Nothing here touches a socket,
a thread or a clock, so the whole protocol is testable by calling methods.

Timing fields. Every position is a sample number since the session's first sample
(16 per ms). A segment is the half-open range of samples [start, end) that was
transcribed; `start` and `end` include `speech_pad_ms` of padding on each side (less
where a neighbour's pad would overlap: then the gap is split at its midpoint, and
never before the previous segment's end or a commit).

- `speech_started.audio_start_ms` = floor(start / 16).
- `speech_stopped.audio_end_ms` = ceil(end / 16): every sample the segment's
  transcript covers lies before it, trailing pad included. Audio before it that
  belongs to no segment was silence (or speech shorter than min_speech) and is
  discarded. It is safe for a client to drop audio before the `audio_end_ms` of a
  segment once that segment's `completed` (or `failed`) has arrived.
- `committed` and `completed` carry the same `audio_start_ms` / `audio_end_ms`.

Speculative finals. Once 64 ms of silence follows the open segment (two Silero
windows; `vad.GUESS_AFTER`), a job with `spec` > 0 decodes its final early: the
segment's audio received so far, all its speech and the start of its trailing pad
(the rest of the pad is silence if the guess holds). The scheduler runs it after real
finals, before partials. If the segment then closes with the guessed range, that
decode is its final (`Settle(keep=True)`, or `completed` at once if already
answered); if speech resumes first or the close differs, it is dropped
(`Settle(keep=False)`). Its text is also the open item's newest hypothesis: when it
arrives before the item closes it goes out as a delta (numbered with the partials,
so an older one never replaces a newer one; the same text as the last delta is not
sent again), whether the guess still stands or speech has resumed (then it is the
turn so far, and no decode was wasted).
  With turn detection off, a commit's segment is everything since the previous
  commit (or clear), up to the last sample received. A commit with nothing to
  transcribe (no speech since the last segment; with turn detection off, under 100 ms
  of audio) is answered with OpenAI's `input_audio_buffer_commit_empty` error.

Rates. A client may send 8, 16 or 24 kHz (`input_audio_format`); everything else here
is 16 kHz: audio is resampled on arrival, one soxr stream per session, so a sample
number is the same instant on the client's timeline and the *_ms fields need no
conversion. `start`/`duration` (seconds, Together's fields) are the same range as
audio_start_ms/audio_end_ms: positions on the appended audio, silence included.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..audio import BYTES_PER_SAMPLE, SAMPLE_RATE_HZ
from ..convert import Converter
from .handshake import ConnectParams, format_rate
from .increments import Increments
from .vad import Closed, Started, StreamingVad, VadEvent, VadParams

SAMPLES_PER_MS = SAMPLE_RATE_HZ // 1000
UPDATE_TYPES = ("transcription_session.updated", "transcription_session.update",
                "session.update")
# OpenAI's floor for a manual commit (its input_audio_buffer_commit_empty).
MIN_COMMIT_SAMPLES = 100 * SAMPLES_PER_MS
COMMIT_EMPTY = "input_audio_buffer_commit_empty"
Event = dict[str, Any]


@dataclass(frozen=True)
class DecodeJob:
    session_id: str
    item_id: str
    final: bool
    pcm: npt.NDArray[np.int16]
    seq: int = 0  # partials and speculative finals of a session, in order
    spec: int = 0  # > 0: a speculative final, numbered within the session
    # The segment this one continues (cut by max_speech mid-turn): its text, once
    # decoded, is this decode's context. The scheduler decodes a session's jobs in
    # order, so it is known by the time this job runs.
    context_of: str | None = None


@dataclass(frozen=True)
class Settle:
    """What became of speculative job `spec`: `keep` = its segment closed with exactly
    its audio, so it now stands for that segment's final (due like one); otherwise it
    is stale (drop it if it has not run)."""

    session_id: str
    spec: int
    keep: bool


Output = Event | DecodeJob | Settle

# `input_audio_buffer.processed` goes out when the watermark has moved this far (or a
# final, commit or clear moved it at all): twice a second of streamed audio at most.
PROCESSED_STEP_SAMPLES = SAMPLE_RATE_HZ // 2


@dataclass
class _Spec:
    job: DecodeJob
    start: int
    end: int
    adopted: bool = False  # the segment closed with [start, end): this is its final
    answer: tuple[str | None, str | None] | None = None  # (text, error) once decoded


@dataclass(frozen=True)
class Limits:
    # Most audio held for one segment (session_buffer_s x 16 000 samples).
    buffer_samples: int = 120 * SAMPLE_RATE_HZ
    first_partial_samples: int = 400 * SAMPLES_PER_MS
    partial_interval_samples: int = 700 * SAMPLES_PER_MS


class BadRequest(Exception):
    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def _floor_ms(sample: int) -> int:
    return sample // SAMPLES_PER_MS


def _ceil_ms(sample: int) -> int:
    return -(-sample // SAMPLES_PER_MS)


class Session:
    def __init__(self, params: ConnectParams, limits: Limits | None = None,
                 session_id: str | None = None, clock: Callable[[], float] = time.time):
        self.id = session_id or f"sess_{uuid.uuid4().hex[:20]}"
        self.params = params
        self.limits = limits or Limits()
        # Only for echo.response's server_received_at; nothing here depends on it.
        self._clock = clock
        self.audio_format = params.input_audio_format
        self._asr_model = params.model
        # soxr's filter state (a few hundred samples) plus its output for one message.
        self._resampler: Converter | None = None
        self._set_rate(params.rate_hz)
        self.total = 0  # samples received
        # Audio that may still be transcribed, from sample _buf_start on. Bounded by
        # the segment cap: at most ~buffer_samples + pads + min_silence, x 2 bytes
        # (120 s default = 3.84 MB), plus one message while it is being processed.
        self._buf = bytearray()
        self._buf_start = 0
        self._vad: StreamingVad | None = None
        if params.vad is not None:
            self._vad = self._new_vad(params.vad, origin=0)
        self._started: deque[tuple[str, int]] = deque()  # (item, start) without a Closed
        self._ranges: dict[str, tuple[int, int]] = {}  # item -> (start, end), until done
        self._awaiting: deque[str] = deque()  # finals sent to the model, in order
        self._previous_item: str | None = None
        self._split_from: str | None = None  # the last segment, if it was cut mid-turn
        self._turn_of: dict[str, str] = {}  # item -> the item it continues, until done
        self._next_partial_at = 0
        # Partials and guesses, numbered as sent: a delta older than one shown is not.
        self._hypothesis_seq = 0
        self._hypothesis_shown = 0
        self._shown: tuple[str, str] | None = None  # (item, text) of the last delta
        self._increments = Increments() if params.appends_deltas else None
        # The speculative final in flight or answered, at most one (see _speculate).
        self._spec: _Spec | None = None
        self._spec_seq = 0
        self._events = 0
        self._processed_sent = 0  # the last watermark announced (samples)
        self._processed_due = False  # a final, commit or clear: announce any move
        self._processed_announced = False

    # -- public ------------------------------------------------------------------
    @property
    def turn_detection(self) -> dict[str, Any] | None:
        return None if self._vad is None else self._vad.segmenter.params.as_json()

    @property
    def buffered_samples(self) -> int:
        return len(self._buf) // BYTES_PER_SAMPLE

    @property
    def watermark(self) -> int:
        """Every sample before this is done: no decode will read it again, and every
        transcript that covers it has been handed out (Together's `processed_ms`)."""
        if self._vad is not None:
            mark = min(self._vad.segmenter.keep_from, self.total)
        else:
            mark = self._buf_start  # a commit will read everything since
        for item in self._awaiting:
            mark = min(mark, self._ranges.get(item, (mark, mark))[0])
        for _, start in self._started:
            mark = min(mark, start)
        return max(mark, 0)

    @property
    def awaiting_samples(self) -> int:
        """Audio of closed segments waiting for (or in) their final decode."""
        return sum(end - start for start, end in
                   (self._ranges.get(item, (0, 0)) for item in self._awaiting))

    def progress(self) -> list[Event]:
        """`input_audio_buffer.processed` if the watermark moved enough since the last
        one. Call it after `receive()`/`decoded()`: it must follow the `completed`
        events of what it covers, which those calls return."""
        mark = self.watermark
        moved = mark - self._processed_sent
        step = 1 if self._processed_due else PROCESSED_STEP_SAMPLES
        self._processed_due = False
        if self._processed_announced and moved < step:
            return []
        # The first one (0 ms, with session.created) tells the client we send them.
        self._processed_announced = True
        self._processed_sent = mark
        return [self._event("input_audio_buffer.processed", processed_ms=_floor_ms(mark))]

    def start(self) -> list[Event]:
        return [self._event("session.created", session=self._describe())]

    def receive(self, message: str | bytes) -> list[Output]:
        if isinstance(message, bytes):
            return [self._error("binary_not_supported", "binary frames are not "
                                "supported; send JSON text events", None, None)]
        client_event_id: str | None = None
        try:
            try:
                msg = json.loads(message)
            except (json.JSONDecodeError, RecursionError) as exc:
                raise BadRequest("invalid_json", f"message is not valid JSON: {exc}") from None
            if not isinstance(msg, dict):
                raise BadRequest("invalid_json", "message must be a JSON object")
            if isinstance(msg.get("event_id"), str):
                client_event_id = msg["event_id"]
            kind = msg.get("type")
            if not isinstance(kind, str):
                raise BadRequest("missing_field", "message has no string 'type'", "type")
            if kind == "input_audio_buffer.append":
                return self._append(msg)
            if kind == "input_audio_buffer.commit":
                # The resampler's tail first, so the commit covers every sample sent.
                return [*self._flush_resampler(), *self._commit(client_event_id)]
            if kind == "echo":
                return self._echo(msg)
            if kind == "input_audio_buffer.clear":
                return self._clear()
            if kind in UPDATE_TYPES:
                return self._update(msg)
            raise BadRequest("unknown_event_type", f"unknown event type {kind!r}", "type")
        except BadRequest as exc:
            return [self._error(exc.code, exc.message, exc.param, client_event_id)]

    def decoded(self, job: DecodeJob, transcript: str | None,
                error: str | None = None) -> list[Output]:
        """The model's answer to `job`: text, or `error` when decoding failed."""
        if job.spec:
            spec = self._spec
            if spec is None or spec.job.spec != job.spec:
                # Dropped: speech resumed (its item is still open) or it closed otherwise.
                return self._delta(job, transcript, error)
            if not spec.adopted:
                # Kept for the close; a failed guess is dropped (the final will retry).
                spec.answer = (transcript, error)
                if error is not None:
                    self._spec = None
                return self._delta(job, transcript, error)
            self._spec = None
        if not job.final:
            return self._delta(job, transcript, error)
        return self._finish(job.item_id, transcript, error)

    def _delta(self, job: DecodeJob, transcript: str | None,
               error: str | None) -> list[Output]:
        """A hypothesis of the open item, if it is newer than the last one shown."""
        text = (transcript or "").strip()
        open_item = self._started[-1][0] if self._started else None
        if (error is not None or not text or job.item_id != open_item or self._awaiting
                or job.seq <= self._hypothesis_shown):
            return []
        self._hypothesis_shown = job.seq
        if self._shown == (job.item_id, text):
            return []  # a guess often reads what the last partial did: say it once
        self._shown = (job.item_id, text)
        start = self._started[-1][1]
        timing = {"start": _seconds(start), "duration": _seconds(len(job.pcm))}
        if self._increments is not None:
            more = self._increments.next(job.item_id, text)
            return [self._event("conversation.item.input_audio_transcription.delta",
                                item_id=job.item_id, content_index=0, delta=more,
                                **timing)] if more else []
        return [self._event("conversation.item.input_audio_transcription.delta",
                            item_id=job.item_id, content_index=0, delta=text,
                            transcript=text, **timing)]

    def _finish(self, item: str, transcript: str | None, error: str | None) -> list[Output]:
        self._processed_due = True
        if item in self._awaiting:
            self._awaiting.remove(item)
        start, end = self._ranges.pop(item, (0, 0))
        self._turn_of.pop(item, None)
        times = {"audio_start_ms": _floor_ms(start), "audio_end_ms": _ceil_ms(end),
                 "start": _seconds(start), "duration": _seconds(end - start)}
        if error is not None:
            # event_type marks a failure of one turn: the session goes on.
            return [self._event("conversation.item.input_audio_transcription.failed",
                                item_id=item, content_index=0, event_type="completed",
                                error={"message": error, "type": "server_error",
                                       "param": None, "code": "transcription_failed"},
                                **times)]
        return [self._event("conversation.item.input_audio_transcription.completed",
                            item_id=item, content_index=0,
                            transcript=(transcript or "").strip(), **times)]

    # -- client events -------------------------------------------------------------
    def _append(self, msg: dict[str, Any]) -> list[Output]:
        audio = msg.get("audio")
        if not isinstance(audio, str):
            raise BadRequest("missing_field", "input_audio_buffer.append needs 'audio', "
                             "a base64 string", "audio")
        try:
            pcm_bytes = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("invalid_base64", "'audio' is not valid base64",
                             "audio") from None
        if len(pcm_bytes) % BYTES_PER_SAMPLE:
            raise BadRequest("invalid_audio", f"'audio' has {len(pcm_bytes)} bytes; "
                             "pcm_s16le needs an even number", "audio")
        if self._resampler is not None:
            pcm_bytes = self._resampler.feed_pcm(pcm_bytes)
        return self._ingest(pcm_bytes)

    def _ingest(self, pcm_bytes: bytes) -> list[Output]:
        """16 kHz audio into the buffer and the VAD."""
        if not pcm_bytes:
            return []
        self._buf += pcm_bytes
        pcm = np.frombuffer(pcm_bytes, dtype="<i2").astype(np.int16)
        self.total += len(pcm)
        out: list[Output] = []
        if self._vad is None:
            if self.total - self._buf_start >= self.limits.buffer_samples:
                out += self._commit()  # the cap forces a commit, not more memory
            return out
        out += self._on_vad(self._vad.feed(pcm))
        out += self._speculate()
        out += self._maybe_partial()
        self._trim()
        return out

    def _commit(self, client_event_id: str | None = None) -> list[Output]:
        self._processed_due = True
        out: list[Output] = []
        if self._vad is not None:
            out += self._on_vad(self._vad.segmenter.flush(self.total))
            self._vad.reset()  # what follows a commit is a new stream
            self._split_from = None
            if not any(isinstance(o, dict) and o["type"] == "input_audio_buffer.committed"
                       for o in out):
                # Not an empty transcript: a client could not tell it from speech
                # that came out as nothing. The code says which case this is; the
                # `processed` watermark says that the audio before it is settled.
                out.append(self._error(COMMIT_EMPTY, "nothing to commit: no speech since "
                                       f"the last segment (audio to {_ceil_ms(self.total)} "
                                       "ms is done)", None, client_event_id))
            self._trim()
            return out
        held = self.total - self._buf_start
        if held < MIN_COMMIT_SAMPLES:
            # Kept for the next commit, as OpenAI does.
            return [*out, self._error(COMMIT_EMPTY, "buffer too small: a commit needs at "
                                      f"least 100 ms of audio, it has {held / SAMPLES_PER_MS:.0f}"
                                      " ms", None, client_event_id)]
        out += self._close_item(self._new_item(), self._buf_start, self.total, stopped=False)
        self._drop_until(self.total)
        return out

    def _echo(self, msg: dict[str, Any]) -> list[Output]:
        """Together's liveness probe: its SDK reconnects if this is 2 s late."""
        now = self._clock()
        return [self._event("echo.response", echo_id=msg.get("echo_id"),
                            client_sent_at=msg.get("client_sent_at"),
                            server_received_at=now, server_sent_at=now,
                            payload=msg.get("payload"))]

    def _set_rate(self, rate_hz: int) -> None:
        self._resampler = None if rate_hz == SAMPLE_RATE_HZ else Converter(rate_hz, 1)

    def _flush_resampler(self) -> list[Output]:
        """The resampler's held tail (its filter delay), on the timeline now."""
        return [] if self._resampler is None else self._ingest(self._resampler.flush())

    def _clear(self) -> list[Output]:
        self._processed_due = True
        out = self._flush_resampler()  # on the timeline, then dropped with the rest
        out += self._drop_spec()
        if self._vad is not None:
            self._vad.segmenter.drop(self.total)
            for item, _ in self._started:
                self._ranges.pop(item, None)
                self._turn_of.pop(item, None)
            self._started.clear()
            self._split_from = None
        self._drop_until(self.total)
        return [*out, self._event("input_audio_buffer.cleared")]

    def _update(self, msg: dict[str, Any]) -> list[Output]:
        session = msg.get("session")
        if not isinstance(session, dict):
            raise BadRequest("missing_field", f"{msg['type']} needs a 'session' object",
                             "session")
        kind = session.get("type")
        if kind not in (None, "transcription"):
            raise BadRequest("invalid_value", f"session.type {kind!r} is not served; this "
                             "server only transcribes (session.type 'transcription')",
                             "session.type")
        found, turn = _find_turn_detection(session)
        new_format = _find_format(session)  # checked before anything changes
        model = _find_model(session)
        out: list[Output] = []
        if new_format is not None and new_format != self.audio_format:
            out += self._flush_resampler()  # the old rate's tail, on the timeline
            self.audio_format = new_format
            self._set_rate(format_rate(new_format) or SAMPLE_RATE_HZ)
        if model is not None:
            self._asr_model = model
        if found:
            new = self._parse_turn(turn)
            if new is None and self._vad is not None:
                out += self._on_vad(self._vad.segmenter.flush(self.total))
                out += self._drop_spec()  # a guess the close did not use
                self._vad = None
                self._drop_until(self.total)
            elif new is not None and self._vad is None:
                self._vad = self._new_vad(new, origin=self._buf_start)
                pending = np.frombuffer(bytes(self._buf), dtype="<i2").astype(np.int16)
                out += self._on_vad(self._vad.feed(pending))
                self._trim()
            elif new is not None and self._vad is not None:
                self._vad.segmenter.params = new
        if msg["type"] == "session.update":  # OpenAI GA: its reply, in its shape
            out.append(self._event("session.updated", session=self._describe_ga()))
        else:
            out.append(self._event("transcription_session.updated",
                                   session=self._describe()))
        return out

    def _parse_turn(self, turn: Any) -> VadParams | None:
        if turn is None:
            return None
        if not isinstance(turn, dict):
            raise BadRequest("invalid_value", "turn_detection must be an object or null",
                             "session.turn_detection")
        kind = turn.get("type", "server_vad")
        if kind in (None, "none"):
            return None
        # OpenAI's semantic_vad has no counterpart here; Silero with the same silence
        # rules is the nearest, and refusing it would refuse OpenAI's GA default.
        if kind not in ("server_vad", "semantic_vad"):
            raise BadRequest("invalid_value", f"turn_detection.type {kind!r} is not "
                             "supported; use server_vad or null",
                             "session.turn_detection.type")
        base = self._vad.segmenter.params if self._vad is not None else VadParams()
        try:
            return base.updated(turn)
        except ValueError as exc:
            raise BadRequest("invalid_value", f"turn_detection.{exc}",
                             "session.turn_detection") from None

    # -- segments --------------------------------------------------------------------
    def _new_vad(self, params: VadParams, origin: int) -> StreamingVad:
        return StreamingVad(params, origin, cap_samples=self.limits.buffer_samples)

    def _on_vad(self, events: list[VadEvent]) -> list[Output]:
        out: list[Output] = []
        for ev in events:
            if isinstance(ev, Started):
                item = self._new_item()
                self._started.append((item, ev.start))
                if self._split_from is not None:
                    self._turn_of[item] = self._split_from
                    self._split_from = None
                # The onset is one pad after the padded start.
                onset = ev.start + (self._vad.segmenter.params.speech_pad_ms * SAMPLES_PER_MS
                                    if self._vad is not None else 0)
                self._next_partial_at = onset + self.limits.first_partial_samples
                out.append(self._event("input_audio_buffer.speech_started", item_id=item,
                                       audio_start_ms=_floor_ms(ev.start)))
            elif isinstance(ev, Closed):
                item = self._started.popleft()[0] if self._started else self._new_item()
                out += self._close_item(item, ev.start, ev.end, stopped=True)
                self._split_from = item if ev.split else None
        return out

    def _close_item(self, item: str, start: int, end: int, stopped: bool) -> list[Output]:
        out: list[Output] = []
        if stopped:
            out.append(self._event("input_audio_buffer.speech_stopped", item_id=item,
                                   audio_end_ms=_ceil_ms(end)))
        out.append(self._event("input_audio_buffer.committed", item_id=item,
                               previous_item_id=self._previous_item,
                               audio_start_ms=_floor_ms(start), audio_end_ms=_ceil_ms(end)))
        self._previous_item = item
        self._ranges[item] = (start, end)
        self._awaiting.append(item)
        spec = self._spec
        if spec is not None and not spec.adopted:
            if (spec.job.item_id, spec.start, spec.end) == (item, start, end):
                # The guess was right: its decode is this segment's final.
                spec.adopted = True
                if spec.answer is None:
                    return [*out, Settle(self.id, spec.job.spec, keep=True)]
                self._spec = None
                return out + self._finish(item, *spec.answer)
            out += self._drop_spec()
        out.append(DecodeJob(self.id, item, final=True, pcm=self._audio(start, end),
                             context_of=self._turn_of.get(item)))
        return out

    def _speculate(self) -> list[Output]:
        """Decode the open segment's final early, once GUESS_AFTER of silence follows
        it: if min_silence then passes with no speech, the segment closes with the
        guessed range and its `completed` needs no decode of its own (the decode lacks
        only the end of the trailing pad, which was silence). If speech resumes first
        (or the close differs), the guess is dropped."""
        vad = self._vad
        guess = (vad.segmenter.likely_close() if vad is not None and len(self._started) == 1
                 else None)
        out: list[Output] = []
        spec = self._spec
        if spec is not None and not spec.adopted:
            if guess is not None and (spec.job.item_id, spec.start, spec.end) == (
                    self._started[0][0], *guess):
                return []  # still the same guess
            out += self._drop_spec()
        if guess is None or self._spec is not None:  # one at a time
            return out
        start, end = guess
        self._spec_seq += 1
        self._hypothesis_seq += 1  # its text may be shown as a delta
        item = self._started[0][0]
        job = DecodeJob(self.id, item, final=True, pcm=self._audio(start, min(end, self.total)),
                        seq=self._hypothesis_seq, spec=self._spec_seq,
                        context_of=self._turn_of.get(item))
        self._spec = _Spec(job, start, end)
        return [*out, job]

    def _drop_spec(self) -> list[Output]:
        spec = self._spec
        if spec is None or spec.adopted:
            return []
        self._spec = None
        return [] if spec.answer is not None else [Settle(self.id, spec.job.spec, keep=False)]

    def _maybe_partial(self) -> list[Output]:
        vad = self._vad
        if (vad is None or not vad.segmenter.in_speech or not self._started
                or self.total < self._next_partial_at):
            return []
        self._next_partial_at = self.total + self.limits.partial_interval_samples
        self._hypothesis_seq += 1
        start = vad.segmenter.open_start()
        item = self._started[-1][0]
        return [DecodeJob(self.id, item, final=False, pcm=self._audio(start, self.total),
                          seq=self._hypothesis_seq, context_of=self._turn_of.get(item))]

    def _audio(self, start: int, end: int) -> npt.NDArray[np.int16]:
        lo = max(start, self._buf_start) - self._buf_start
        hi = max(end, self._buf_start) - self._buf_start
        raw = bytes(self._buf[lo * BYTES_PER_SAMPLE:hi * BYTES_PER_SAMPLE])
        return np.frombuffer(raw, dtype="<i2").astype(np.int16)

    def _trim(self) -> None:
        if self._vad is not None:
            self._drop_until(min(self._vad.segmenter.keep_from, self.total))

    def _drop_until(self, sample: int) -> None:
        if sample <= self._buf_start:
            return
        del self._buf[:(sample - self._buf_start) * BYTES_PER_SAMPLE]
        self._buf_start = sample

    # -- events --------------------------------------------------------------------
    def _new_item(self) -> str:
        return f"item_{uuid.uuid4().hex[:20]}"

    def _event(self, kind: str, **fields: Any) -> Event:
        self._events += 1
        return {"type": kind, "event_id": f"event_{self.id[5:13]}{self._events:07d}",
                **fields}

    def _error(self, code: str, message: str, param: str | None,
               client_event_id: str | None) -> Event:
        # The top-level message is what Together's documented example prints.
        return self._event("error", message=message,
                           error={"type": "invalid_request_error", "code": code,
                                  "message": message, "param": param,
                                  "event_id": client_event_id})

    def _describe(self) -> dict[str, Any]:
        """Together's and OpenAI beta's session object, with OpenAI GA's `type` and
        `audio` too: session.created is parsed by all three clients."""
        return {"id": self.id, "object": "realtime.session", "modalities": ["audio"],
                "model": self.params.model, "turn_detection": self.turn_detection,
                "input_audio_format": self.audio_format,
                "input_audio_transcription": {"model": self._asr_model},
                "type": "transcription", "audio": self._audio_ga()}

    def _describe_ga(self) -> dict[str, Any]:
        return {"type": "transcription", "id": self.id,
                "object": "realtime.transcription_session", "audio": self._audio_ga(),
                "include": None}

    def _audio_ga(self) -> dict[str, Any]:
        rate = format_rate(self.audio_format) or SAMPLE_RATE_HZ
        return {"input": {"format": {"type": "audio/pcm", "rate": rate},
                          "transcription": {"model": self._asr_model},
                          "noise_reduction": None,
                          "turn_detection": self.turn_detection}}


def _seconds(samples: int) -> float:
    return round(samples / SAMPLE_RATE_HZ, 3)


def _ga_input(session: dict[str, Any]) -> dict[str, Any]:
    audio = session.get("audio")
    inp = audio.get("input") if isinstance(audio, dict) else None
    return inp if isinstance(inp, dict) else {}


def _find_format(session: dict[str, Any]) -> str | None:
    """The audio format a session update asks for, as one of our format names: Together
    and OpenAI beta name it (`input_audio_format`), OpenAI GA describes it."""
    if "input_audio_format" in session:
        name = session["input_audio_format"]
        if isinstance(name, str) and format_rate(name):
            return name
        raise BadRequest("invalid_audio_format", f"input_audio_format {name!r} is not "
                         "supported; use pcm16 (24 kHz) or pcm_s16le_8000/16000/24000",
                         "session.input_audio_format")
    fmt = _ga_input(session).get("format")
    if fmt is None:
        return None
    rate = fmt.get("rate", 24000) if isinstance(fmt, dict) else None
    if (not isinstance(fmt, dict) or fmt.get("type", "audio/pcm") != "audio/pcm"
            or isinstance(rate, bool) or rate not in (8000, 16000, 24000)):
        raise BadRequest("invalid_audio_format", f"audio.input.format {fmt!r} is not "
                         "supported; use {'type': 'audio/pcm', 'rate': 24000}",
                         "session.audio.input.format")
    return "pcm16" if rate == 24000 else f"pcm_s16le_{int(rate)}"


def _find_model(session: dict[str, Any]) -> str | None:
    for where in (session.get("input_audio_transcription"),
                  _ga_input(session).get("transcription")):
        if isinstance(where, dict) and isinstance(where.get("model"), str):
            return str(where["model"])
    return None


def _find_turn_detection(session: dict[str, Any]) -> tuple[bool, Any]:
    """Together/OpenAI beta put it at session.turn_detection, OpenAI GA deeper."""
    if "turn_detection" in session:
        return True, session["turn_detection"]
    audio = session.get("audio")
    if isinstance(audio, dict) and isinstance(audio.get("input"), dict):
        inp = audio["input"]
        if "turn_detection" in inp:
            return True, inp["turn_detection"]
    return False, None

"""The handshake (sans-I/O) and a few end-to-end runs through a real socket to a server
started in-process on a free port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from conftest import NO_SERVER_EXTRA
from server_support import append, coverage, server, silence, speech
from timing import scaled

pytest.importorskip("faster_whisper", reason=NO_SERVER_EXTRA)

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from conftest import REPO, free_port, reference_texts, wait_port
from roomscribe.config import ServerSettings
from roomscribe.server import handshake
from roomscribe.server.__main__ import main

pytestmark = pytest.mark.server
KEY = "secret-key"
QUERY = "model=openai/whisper-large-v3&input_audio_format=pcm_s16le_16000"
COMPLETED = "conversation.item.input_audio_transcription.completed"


# -- handshake, no socket --------------------------------------------------------------------
def check(query: str = QUERY, auth: str | None = f"Bearer {KEY}",
          protos: tuple[str, ...] = (), path: str = "/v1/realtime",
          tokens: tuple[str, ...] = (KEY,)) -> Any:
    return handshake.check(f"{path}?{query}", auth, protos, tokens)


def test_handshake_accepts_required_params_and_intent() -> None:
    p = check(QUERY + "&intent=transcription")
    assert isinstance(p, handshake.ConnectParams)
    assert p.model == "openai/whisper-large-v3" and p.intent == "transcription"
    assert p.vad is not None and p.vad.threshold == 0.3


def test_handshake_accepts_realtime_without_v1() -> None:
    assert isinstance(check(path="/realtime"), handshake.ConnectParams)
    assert check(path="/v2/other").status == 404


def test_handshake_vad_query_parameters() -> None:
    p = check(QUERY + "&turn_detection=server_vad&threshold=0.5&min_silence_duration_ms=800"
              "&min_speech_duration_ms=100&max_speech_duration_s=10&speech_pad_ms=50")
    assert p.vad.as_json() == {"type": "server_vad", "threshold": 0.5,
                               "min_silence_duration_ms": 800, "min_speech_duration_ms": 100,
                               "max_speech_duration_s": 10.0, "speech_pad_ms": 50}
    assert check(QUERY + "&turn_detection=none").vad is None
    bad = check(QUERY + "&threshold=high")
    assert bad.status == 400 and "threshold" in bad.message


def test_handshake_auth_by_header_or_subprotocol() -> None:
    offered = ("realtime", f"openai-insecure-api-key.{KEY}", "openai-beta.realtime-v1")
    assert isinstance(check(auth=None, protos=offered), handshake.ConnectParams)
    assert handshake.select_subprotocol(offered) == "realtime"
    assert check(auth=None).code == "missing_api_key"
    assert check(auth="Bearer nope").code == "invalid_api_key"
    assert check(auth=None, tokens=()).model  # no tokens configured: anyone


@pytest.mark.parametrize("value", [f"Bearer%20{KEY}", f"Bearer+{KEY}", f"bearer%20{KEY}"])
def test_handshake_auth_by_query(value: str) -> None:
    assert isinstance(check(f"{QUERY}&authorization={value}", auth=None),
                      handshake.ConnectParams)
    assert check(f"{QUERY}&authorization=Bearer%20nope", auth=None).code == "invalid_api_key"


def test_handshake_two_authorization_headers_is_400() -> None:
    err = check(auth=[f"Bearer {KEY}", f"Bearer {KEY}"])
    assert (err.status, err.code) == (400, "invalid_request") and KEY not in err.message


def test_raw_spaces_in_the_request_target_are_mended() -> None:
    line = f"GET /v1/realtime?{QUERY}&authorization=Bearer {KEY} HTTP/1.1".encode()
    mended = handshake.repair_request_line(line)
    assert mended == f"GET /v1/realtime?{QUERY}&authorization=Bearer%20{KEY} HTTP/1.1".encode()
    well_formed = b"GET /v1/realtime?model=x HTTP/1.1"
    assert handshake.repair_request_line(well_formed) == well_formed


@pytest.mark.parametrize("model", ["whisper-1", "openai/whisper-large-v3", "gpt-4o-transcribe",
                                   "gpt-4o-mini-transcribe", "gpt-realtime", "tiny.en",
                                   "TINY.EN"])
def test_handshake_accepts_openai_models_and_the_served_name(model: str) -> None:
    assert check(f"model={model}&input_audio_format=pcm_s16le_16000").model == model


def test_handshake_served_names_follow_the_configured_model() -> None:
    assert handshake.served_names("") == ("tiny.en",)
    assert handshake.served_names("/models/base.en/") == ("/models/base.en/", "base.en")
    p = handshake.check(f"/v1/realtime?model=base.en&{QUERY[QUERY.index('&') + 1:]}",
                        None, (), (), served=handshake.served_names("/m/base.en"))
    assert isinstance(p, handshake.ConnectParams)


@pytest.mark.parametrize(("audio_format", "rate"), [
    ("pcm_s16le_8000", 8000), ("pcm_s16le_16000", 16000), ("pcm_s16le_24000", 24000),
    ("pcm16", 24000), ("pcm_s16", 24000), ("pcm_s16le", 24000)])
def test_handshake_formats_and_their_rates(audio_format: str, rate: int) -> None:
    assert check(f"model=whisper-1&input_audio_format={audio_format}").rate_hz == rate


def test_handshake_openai_defaults_no_format_and_intent_alone() -> None:
    p = check("model=gpt-4o-transcribe")  # OpenAI's SDKs send no format: pcm16, 24 kHz
    assert (p.input_audio_format, p.rate_hz) == ("pcm16", 24000)
    assert p.appends_deltas  # and add each delta to the last: they get increments
    p = check("intent=transcription")  # OpenAI's transcription URL names no model
    assert p.model == "tiny.en" and p.appends_deltas
    # Together's clients name the format (it is required there), even its bare alias.
    assert not check(QUERY).appends_deltas
    assert not check("model=whisper-1&input_audio_format=pcm16").appends_deltas


@pytest.mark.parametrize(("query", "code"), [
    ("input_audio_format=pcm_s16le_16000", "model_not_available"),
    ("model=gpt-4o&input_audio_format=pcm_s16le_16000", "model_not_available"),
    ("model=whisper-1&input_audio_format=pcm_s16le_44100", "invalid_audio_format"),
    ("model=whisper-1&input_audio_format=g711_ulaw", "invalid_audio_format"),
])
def test_handshake_400s(query: str, code: str) -> None:
    err = check(query)
    assert (err.status, err.code) == (400, code)


# -- through a socket -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with server(ServerSettings(tokens=(KEY,), max_message_bytes=64 * 1024)) as p:
        yield p


def url(port: int, query: str = QUERY, path: str = "/v1/realtime") -> str:
    return f"ws://127.0.0.1:{port}{path}?{query}"


def receive_until(ws: ClientConnection, kind: str, timeout_s: float = 60) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    while True:
        event = json.loads(ws.recv(timeout=scaled(timeout_s)))
        seen.append(event)
        if event["type"] == kind:
            return seen


def transcribe(port: int, name: str, query: str = QUERY) -> tuple[list[dict[str, Any]], str]:
    headers = {"Authorization": f"Bearer {KEY}", "OpenAI-Beta": "realtime=v1"}
    with connect(url(port, query), additional_headers=headers, open_timeout=scaled(10)) as ws:
        events = receive_until(ws, "session.created")
        pcm = np.concatenate([silence(0.3), speech(name), silence(0.3)])
        for i in range(0, len(pcm), 4096):
            ws.send(append(pcm[i:i + 4096]))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        events += receive_until(ws, COMPLETED)
    return events, events[-1]["transcript"]


def test_socket_bearer_header_full_round_trip(port: int) -> None:
    events, text = transcribe(port, "lj002-0035-22k05.wav")
    assert events[0]["type"] == "session.created"
    assert "input_audio_buffer.committed" in [e["type"] for e in events]
    assert coverage(reference_texts()["lj002-0035-22k05.wav"], text) >= 0.8


def test_socket_subprotocol_auth_selects_realtime(port: int) -> None:
    offered = ["realtime", f"openai-insecure-api-key.{KEY}", "openai-beta.realtime-v1"]
    with connect(url(port, path="/realtime"), subprotocols=offered,  # type: ignore[arg-type]
                 open_timeout=scaled(10)) as ws:
        assert ws.subprotocol == "realtime"
        assert json.loads(ws.recv(timeout=scaled(10)))["type"] == "session.created"


@pytest.mark.parametrize(("query", "headers", "status", "code"), [
    (QUERY, {}, 401, "missing_api_key"),
    (QUERY, {"Authorization": "Bearer wrong"}, 401, "invalid_api_key"),
    ("model=llama&input_audio_format=pcm_s16le_16000", {"Authorization": f"Bearer {KEY}"},
     400, "model_not_available"),
    ("model=whisper-1&input_audio_format=opus", {"Authorization": f"Bearer {KEY}"},
     400, "invalid_audio_format"),
])
def test_socket_handshake_errors_are_http_json(port: int, query: str, headers: dict[str, str],
                                               status: int, code: str) -> None:
    with pytest.raises(InvalidStatus) as info:
        connect(url(port, query), additional_headers=headers, open_timeout=scaled(10))
    response = info.value.response
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    error = json.loads(response.body)["error"]
    assert error["code"] == code and error["message"] and error["type"]


def test_socket_two_authorization_headers_is_400_not_500(port: int) -> None:
    from websockets.datastructures import Headers

    headers = Headers([("Authorization", f"Bearer {KEY}"), ("Authorization", "Bearer x")])
    with pytest.raises(InvalidStatus) as info:
        connect(url(port), additional_headers=headers, open_timeout=10)
    response = info.value.response
    assert response.status_code == 400
    assert json.loads(response.body)["error"]["code"] == "invalid_request"


def test_socket_bad_input_then_the_session_goes_on(port: int) -> None:
    with connect(url(port), additional_headers={"Authorization": f"Bearer {KEY}"},
                 open_timeout=scaled(10)) as ws:
        receive_until(ws, "session.created")
        ws.send("{not json")
        assert receive_until(ws, "error")[-1]["error"]["code"] == "invalid_json"
        ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        assert receive_until(ws, "input_audio_buffer.cleared")


def test_socket_oversized_message_closes_1009(port: int) -> None:
    with connect(url(port), additional_headers={"Authorization": f"Bearer {KEY}"},
                 open_timeout=scaled(10)) as ws:
        receive_until(ws, "session.created")
        ws.send(append(silence(3.0)))  # 128 kB of base64 > 64 kB limit
        with pytest.raises(ConnectionClosed) as info:
            receive_until(ws, "never", timeout_s=10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009


def test_two_concurrent_sessions_get_their_own_transcripts(port: int) -> None:
    names = ["lj002-0020-22k05.wav", "ami-es2011a-16k.wav"]
    texts: dict[str, str] = {}

    def run(name: str) -> None:
        texts[name] = transcribe(port, name)[1]

    threads = [threading.Thread(target=run, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    refs = reference_texts()
    for name in names:
        assert coverage(refs[name], texts[name]) >= 0.8, texts
    assert coverage(refs[names[0]], texts[names[1]]) < 0.5


def test_over_max_sessions_says_retry_elsewhere() -> None:
    """Together's SDK reads close code 4503 / no_healthy_workers as "go to another
    endpoint now"; an HTTP 503 would only make it back off here."""
    with server(ServerSettings(max_sessions=1)) as p, \
            connect(url(p), open_timeout=scaled(10)) as ws:
        receive_until(ws, "session.created")
        with connect(url(p), open_timeout=scaled(10)) as refused:
            event = json.loads(refused.recv(timeout=scaled(10)))
            assert event["type"] == "error"
            assert event["error"]["code"] == "no_healthy_workers"
            with pytest.raises(ConnectionClosed) as info:
                refused.recv(timeout=scaled(10))
        assert info.value.rcvd is not None and info.value.rcvd.code == 4503
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))  # the first still works
        answer = receive_until(ws, "error")[-1]  # it has sent nothing to transcribe
        assert answer["error"]["code"] == "input_audio_buffer_commit_empty"


def test_silent_sockets_are_closed_so_they_cannot_lock_rooms_out() -> None:
    """Sockets that send no audio hold no session past idle_timeout_s: a room that
    was refused while they held every session gets in afterwards."""
    with server(ServerSettings(max_sessions=2, idle_timeout_s=scaled(3.0))) as p, \
            connect(url(p), open_timeout=scaled(10)) as a, \
            connect(url(p), open_timeout=scaled(10)) as b:
        for ws in (a, b):
            receive_until(ws, "session.created")
        with connect(url(p), open_timeout=scaled(10)) as refused:
            assert json.loads(refused.recv(timeout=scaled(10)))["error"]["code"] == \
                "no_healthy_workers"
        for ws in (a, b):  # each is closed by the server, normally, with a reason
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    ws.recv(timeout=scaled(30))
            assert info.value.rcvd is not None and info.value.rcvd.code == 1000
            assert info.value.rcvd.reason == "idle timeout"
        with connect(url(p), open_timeout=scaled(10)) as late:
            receive_until(late, "session.created")
            late.send(append(speech("jfk-44k1-stereo.wav")))
            late.send(json.dumps({"type": "input_audio_buffer.commit"}))
            receive_until(late, "conversation.item.input_audio_transcription.completed")


def test_a_client_sending_audio_is_never_idle() -> None:
    with server(ServerSettings(idle_timeout_s=1.0)) as p, connect(url(p)) as ws:
        receive_until(ws, "session.created")
        for _ in range(15):  # 3 s of audio, 200 ms at a time, at real time
            ws.send(append(silence(0.2)))
            time.sleep(0.2)
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))  # still open: answered
        assert receive_until(ws, "error")[-1]["error"]["code"] == \
            "input_audio_buffer_commit_empty"


def test_open_server_on_non_loopback_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tokens" in err


def test_serve_runs_until_sigterm_and_exits_0() -> None:
    p = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
    proc = subprocess.Popen([sys.executable, "-m", "roomscribe.server", "--port", str(p)],
                            env=env, stderr=subprocess.PIPE)
    try:
        wait_port(p, 60)
        with connect(url(p), open_timeout=scaled(10)) as ws:
            assert json.loads(ws.recv(timeout=scaled(10)))["type"] == "session.created"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(scaled(20)) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(scaled(5))

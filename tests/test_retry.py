"""The one retry-or-give-up decision, with no sockets."""

from __future__ import annotations

import json

from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.http11 import Response

from roomscribe.retry import (
    UplinkError,
    Verdict,
    classify,
    describe,
    server_event_error,
    settings_refused,
    should_retry,
)


def refused(status: int, code: str) -> InvalidStatus:
    body = json.dumps({"error": {"code": code, "message": "no"}}).encode()
    return InvalidStatus(Response(status, "x", Headers(), body))


def test_wrong_key_or_model_is_slow_network_trouble_is_transient() -> None:
    assert classify(refused(401, "invalid_api_key")) is Verdict.SLOW
    assert classify(refused(400, "model_not_available")) is Verdict.SLOW
    assert classify(refused(503, "overloaded")) is Verdict.TRANSIENT
    assert classify(ConnectionRefusedError()) is Verdict.TRANSIENT
    assert classify(TimeoutError()) is Verdict.TRANSIENT
    assert classify(UplinkError("auth", Verdict.SLOW)) is Verdict.SLOW
    assert classify(KeyError("bug")) is Verdict.FATAL


def test_server_events_end_the_connection_only_when_going_on_cannot_help() -> None:
    def ends(code: str, fatal: bool = False) -> UplinkError | None:
        return server_event_error(code, "why", fatal=fatal)

    slow = ends("insufficient_quota")
    assert slow is not None and classify(slow) is Verdict.SLOW
    for code, fatal in (("session_expired", False), ("internal", True),
                        ("invalid_base64", False), ("invalid_json", False)):
        again = ends(code, fatal)
        assert again is not None and classify(again) is Verdict.TRANSIENT
        assert not again.elsewhere
    busy = ends("no_healthy_workers")
    assert busy is not None and busy.elsewhere and classify(busy) is Verdict.TRANSIENT
    # One turn failed, or a notice: the session goes on, and so does the audio.
    assert ends("transcription_failed") is None
    assert ends("input_audio_buffer_too_small") is None


def test_a_bad_request_that_names_no_key_model_or_format_is_taken_for_the_settings() -> None:
    assert settings_refused(refused(400, "invalid_value"))
    assert settings_refused(refused(400, ""))
    for status, code in [(400, "model_not_available"), (400, "invalid_audio_format"),
                         (400, "unsupported_audio_format"), (401, "invalid_api_key"),
                         (404, "not_found"), (503, "")]:
        assert not settings_refused(refused(status, code)), (status, code)
    assert not settings_refused(ConnectionRefusedError())


def test_after_stop_nothing_is_retried_and_bugs_never_are() -> None:
    assert should_retry(ConnectionRefusedError(), after_stop=False)
    assert not should_retry(ConnectionRefusedError(), after_stop=True)
    assert not should_retry(KeyError("bug"), after_stop=False)


def test_descriptions_are_one_line_without_secrets() -> None:
    text = describe(refused(401, "invalid_api_key"))
    assert text == "server refused the connection: HTTP 401 invalid_api_key"


def test_a_fault_inside_the_connection_library_is_transient() -> None:
    """websockets tripping on a transport that a close already took away (seen as
    AttributeError: 'NoneType' object has no attribute 'call_soon' from a send): a new
    connection fixes it, so it must not end the daemon."""
    import asyncio

    from websockets.asyncio.client import ClientConnection
    from websockets.client import ClientProtocol
    from websockets.uri import parse_uri

    async def race() -> BaseException:
        # A connection whose transport is gone: send_context() aborts it and trips.
        conn = ClientConnection(ClientProtocol(parse_uri("ws://127.0.0.1/")),
                                close_timeout=0.1)
        try:
            await conn.send("x")
        except Exception as exc:
            return exc
        raise AssertionError("sending on a connection without a transport worked")

    exc = asyncio.run(race())
    assert isinstance(exc, AttributeError)
    assert classify(exc) is Verdict.TRANSIENT
    assert classify(AttributeError("ours")) is Verdict.FATAL  # our own bugs are not


def closed(code: int) -> ConnectionClosedError:
    from websockets.frames import Close

    return ConnectionClosedError(Close(code, "x"), None)


def test_endpoints_move_on_at_once_when_told_to_go_elsewhere_or_refused() -> None:
    from roomscribe.retry import Endpoints

    ends = Endpoints(2, failover_after_s=5.0)
    assert ends.failed(closed(4503), now=0.0) == 0.0 and ends.current == 1
    ends.session_up()
    assert ends.failed(refused(401, "invalid_api_key"), now=1.0) == 0.0
    assert ends.current == 0


def test_endpoints_move_on_when_one_has_been_failing_for_failover_after_s() -> None:
    from roomscribe.retry import Endpoints

    ends = Endpoints(2, failover_after_s=5.0)
    assert ends.failed(ConnectionRefusedError(), now=10.0) == 5.0  # sleep no longer
    assert ends.failed(ConnectionRefusedError(), now=13.0) == 2.0
    assert ends.current == 0
    assert ends.failed(ConnectionRefusedError(), now=15.0) == 0.0
    assert ends.current == 1


def test_endpoints_stop_switching_after_a_round_without_a_session() -> None:
    """Every endpoint refusing the key must not become a hot loop between them."""
    from roomscribe.retry import Endpoints

    ends = Endpoints(2, failover_after_s=5.0)
    assert ends.failed(refused(401, "invalid_api_key"), now=0.0) == 0.0
    assert ends.failed(refused(401, "invalid_api_key"), now=0.1) == 0.0
    assert ends.failed(refused(401, "invalid_api_key"), now=0.2) is None  # classify decides
    ends.session_up()
    assert ends.failed(closed(4503), now=1.0) == 0.0


def test_one_endpoint_is_never_switched() -> None:
    from roomscribe.retry import Endpoints

    ends = Endpoints(1, failover_after_s=5.0)
    assert ends.failed(closed(4503), now=0.0) is None and ends.current == 0

"""The one retry-or-give-up decision, with no sockets."""

from __future__ import annotations

import json

from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from roomscribe.retry import UplinkError, Verdict, classify, describe, should_retry


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


def test_after_stop_nothing_is_retried_and_bugs_never_are() -> None:
    assert should_retry(ConnectionRefusedError(), after_stop=False)
    assert not should_retry(ConnectionRefusedError(), after_stop=True)
    assert not should_retry(KeyError("bug"), after_stop=False)


def test_descriptions_are_one_line_without_secrets() -> None:
    text = describe(refused(401, "invalid_api_key"))
    assert text == "server refused the connection: HTTP 401 invalid_api_key"

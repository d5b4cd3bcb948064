"""The identity record behind removing a renamed device (no broker: see
test_homeassistant for the real one)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import stat
from pathlib import Path

import pytest

from roomscribe import identity
from roomscribe.config import DeviceSettings, MqttSettings, Settings


def settings(device: str = "kitchen", **mqtt: object) -> Settings:
    return Settings(device=DeviceSettings(id=device), mqtt=MqttSettings(**mqtt))  # type: ignore[arg-type]


def test_saved_privately_and_read_back(tmp_path: Path) -> None:
    assert identity.load(tmp_path) is None
    now = identity.current(settings())
    identity.save(tmp_path, now)
    assert identity.load(tmp_path) == now
    assert stat.S_IMODE((tmp_path / identity.FILE_NAME).stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [identity.FILE_NAME]  # no temp file left


@pytest.mark.parametrize("text", ["", "{", "[]", '{"device_id": "x"}', "\xff"])
def test_a_damaged_record_removes_nothing(tmp_path: Path, text: str,
                                          caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / identity.FILE_NAME).write_text(text, encoding="latin-1")
    with caplog.at_level(logging.WARNING):
        assert identity.load(tmp_path) is None
    assert len(caplog.records) == 1 and "no earlier device to remove" in caplog.text


def test_only_another_identity_on_the_same_broker_is_superseded() -> None:
    now = settings("kitchen")
    assert identity.superseded(now, None) is None  # first start
    assert identity.superseded(now, identity.current(now)) is None  # unchanged
    elsewhere = identity.current(settings("raspberrypi", host="10.0.0.9"))
    assert identity.superseded(now, elsewhere) is None  # that broker cannot be reached
    for old in (settings("raspberrypi"), settings("kitchen", topic_prefix="home/mics"),
                settings("kitchen", ha_discovery_prefix="ha")):
        gone = identity.superseded(now, identity.current(old))
        assert gone is not None and identity.current(gone) == identity.current(old)
        # everything else as configured now: the broker, its login, TLS
        assert dataclasses.replace(gone, device=now.device, mqtt=now.mqtt) == now


def test_first_start_and_another_broker_record_without_touching_any_broker(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Port 9 on loopback: nothing listens, so any attempt to connect would be logged.
    now = settings("kitchen", port=9)
    asyncio.run(identity.retire_previous(now, tmp_path, ""))
    assert identity.load(tmp_path) == identity.current(now)
    identity.save(tmp_path, identity.current(settings("raspberrypi", host="10.0.0.9")))
    with caplog.at_level(logging.INFO):
        asyncio.run(identity.retire_previous(now, tmp_path, ""))
    assert identity.load(tmp_path) == identity.current(now)
    assert [r.getMessage() for r in caplog.records] == [
        "the device announced before ('raspberrypi') is on another broker, 10.0.0.9:1883: "
        "not removed from there (`roomscribe forget` with that config does it)"]

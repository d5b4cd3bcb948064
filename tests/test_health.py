"""The status word and availability: pure logic, clock passed in."""

from __future__ import annotations

from pathlib import Path

from roomscribe.health import FAILING_AFTER_S, Health, available
from roomscribe.integrations import hardware_model


def test_closed_socket_by_design_is_not_a_fault() -> None:
    h = Health()
    idle = h.status(0.0, muted=False, connected=False, wants_connection=False,
                    capture_open=True)
    assert idle == "idle" and available(idle)
    assert h.status(1.0, muted=False, connected=True, wants_connection=True,
                    capture_open=True) == "streaming"
    muted = h.status(2.0, muted=True, connected=False, wants_connection=True,
                     capture_open=True)
    assert muted == "muted" and available(muted)
    # Hours of idle and mute never turn into "failing".
    assert h.status(99_999.0, muted=False, connected=False, wants_connection=False,
                    capture_open=True) == "idle"


def test_audio_waiting_without_a_connection_fails_after_30_s() -> None:
    h = Health()
    waiting = {"muted": False, "connected": False, "wants_connection": True,
               "capture_open": True}
    assert h.status(100.0, **waiting) == "reconnecting"
    assert h.status(100.0 + FAILING_AFTER_S - 0.1, **waiting) == "reconnecting"
    failing = h.status(100.0 + FAILING_AFTER_S, **waiting)
    assert failing == "failing" and not available(failing)
    assert h.status(200.0, muted=False, connected=True, wants_connection=True,
                    capture_open=True) == "streaming"
    # A fresh outage starts its own 30 s.
    assert h.status(300.0, **waiting) == "reconnecting"


def test_a_missing_microphone_fails_too() -> None:
    h = Health()
    away = {"muted": False, "connected": False, "wants_connection": False,
            "capture_open": False}
    assert h.status(0.0, **away) == "reconnecting"
    assert h.status(FAILING_AFTER_S, **away) == "failing"
    assert h.status(FAILING_AFTER_S + 1, muted=True, connected=False,
                    wants_connection=False, capture_open=False) == "muted"


def test_hardware_model_from_the_device_tree(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\0")
    assert hardware_model(model) == "Raspberry Pi 4 Model B Rev 1.4"
    assert hardware_model(tmp_path / "absent") == ""

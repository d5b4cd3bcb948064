"""Privacy mute: command parsing, persistence across restarts, the retained state."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from roomscribe import mute
from roomscribe.mute import MuteState, parse_mute_command


@pytest.mark.parametrize(("body", "expected"), [
    (b"ON", True), (b"on", True), (b"true", True), (b"1", True), (b" On\n", True),
    (b"OFF", False), (b"off", False), (b"False", False), (b"0", False),
])
def test_commands(body: bytes, expected: bool) -> None:
    assert parse_mute_command(body) is expected


@pytest.mark.parametrize("body", [b"", b"yes", b"2", b"ONN", b"\xff\xfe", b"x" * 10_000])
def test_garbage_is_ignored_with_one_log_line(body: bytes,
                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="roomscribe.mute"):
        assert parse_mute_command(body) is None
    assert len(caplog.records) == 1
    line = caplog.records[0].getMessage()
    assert "\n" not in line and len(line) < 120


def test_mute_survives_a_restart(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    first = MuteState(state_dir)
    assert first.muted is False
    assert first.set(True) is True
    assert first.set(True) is False
    assert MuteState(state_dir).muted is True
    assert (state_dir / "mute").read_text() == "ON\n"
    assert first.set(False) is True
    assert MuteState(state_dir).muted is False
    assert sorted(p.name for p in state_dir.iterdir()) == ["mute"]


@pytest.mark.parametrize("content", [b"maybe\n", b"", b"\xff\xfe\x00", b"on"])
def test_garbled_file_means_unmuted_with_a_warning(
        tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "mute").write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="roomscribe.mute"):
        assert MuteState(tmp_path).muted is False
    assert len(caplog.records) == 1 and "starting unmuted" in caplog.records[0].getMessage()


def test_unwritable_state_dir_still_mutes(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with caplog.at_level(logging.WARNING, logger="roomscribe.mute"):
        state = MuteState(blocker / "state")
        assert state.set(True) is True
    assert state.muted is True
    assert [r.getMessage().split(" ")[:2] for r in caplog.records] == [["cannot", "read"],
                                                                       ["cannot", "save"]]
    assert all("\n" not in r.getMessage() for r in caplog.records)


def test_topics_and_retained_state_message() -> None:
    assert mute.mute_topics("home/mics/", "kitchen") == ("home/mics/kitchen/mute",
                                                         "home/mics/kitchen/mute/set")
    on = mute.state_message("home/mics", "kitchen", True)
    assert (on.topic, on.encode(), on.retain, on.qos) == ("home/mics/kitchen/mute", b"ON",
                                                          True, 1)
    assert mute.state_message("home/mics", "kitchen", False).encode() == b"OFF"

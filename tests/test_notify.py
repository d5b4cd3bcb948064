"""sd_notify: the watchdog core with an injected clock, then the real datagram socket."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from roomscribe.notify import Notifier, Watchdog, status_line
from timing import scaled

# -- the no-I/O core -----------------------------------------------------------------


def run_core(wd: Watchdog, until: float, frames_until: float,
             frame_every: float = 0.064) -> list[float]:
    """Drive the core as run_watchdog would, with frames arriving until `frames_until`.

    Returns the times at which WATCHDOG=1 would be sent.
    """
    pings: list[float] = []
    now, next_frame, next_poll = 0.0, 0.0, 0.0
    while now < until:
        now = min(next_frame, next_poll)
        if now == next_frame:
            if now <= frames_until:
                wd.frame_arrived(now)
            next_frame += frame_every
        if now == next_poll:
            send, wait = wd.poll(now)
            assert wait > 0
            if send:
                pings.append(now)
            next_poll = now + wait
    return pings


def test_pings_at_half_the_interval_while_frames_arrive() -> None:
    wd = Watchdog(interval_s=30.0, stall_after_s=10.0)
    pings = run_core(wd, until=120.0, frames_until=120.0)
    # The first frame pings at once; then exactly every WatchdogSec / 2.
    assert pings == [15.0 * i for i in range(9)]


def test_pings_stop_after_the_stall_bound_and_resume_with_audio() -> None:
    wd = Watchdog(interval_s=30.0, stall_after_s=10.0)
    pings = run_core(wd, until=200.0, frames_until=60.0)
    assert pings and max(pings) <= 60.0 + 10.0
    # systemd restarts us: nothing for longer than WatchdogSec after the last ping.
    assert 200.0 - max(pings) > 30.0

    wd.frame_arrived(200.0)
    send, _ = wd.poll(200.5)
    assert send


def test_no_pings_before_the_first_frame() -> None:
    wd = Watchdog(interval_s=2.0)
    assert run_core(wd, until=10.0, frames_until=-1.0) == []


def test_stall_bound_never_exceeds_the_interval() -> None:
    wd = Watchdog(interval_s=4.0, stall_after_s=10.0)
    assert wd.stall_after_s == 4.0
    pings = run_core(wd, until=30.0, frames_until=5.0)
    # The last ping comes at most one interval after the last frame, and then
    # systemd's WatchdogSec passes with none.
    assert max(pings) <= 5.0 + 4.0
    assert 30.0 - max(pings) > 4.0


def test_stop_ends_pings_even_with_audio() -> None:
    wd = Watchdog(interval_s=2.0)
    wd.frame_arrived(0.0)
    assert wd.poll(0.0)[0]
    wd.stop()
    wd.frame_arrived(1.5)
    assert not wd.poll(1.5)[0]


def test_a_stall_is_said_once_and_so_is_the_audio_coming_back() -> None:
    wd = Watchdog(interval_s=30.0, stall_after_s=10.0)
    assert wd.stall_change(0.0) is None  # no audio yet: not a stall of audio that flowed
    assert wd.quiet_s(0.0) is None
    wd.frame_arrived(1.0)
    assert [wd.stall_change(t) for t in (5.0, 11.0)] == [None, None]
    assert wd.stall_change(11.5) == "stalled"
    assert wd.quiet_s(11.5) == 10.5
    assert [wd.stall_change(t) for t in (19.0, 40.0)] == [None, None]
    wd.frame_arrived(41.0)
    assert wd.stall_change(41.0) == "resumed"
    assert wd.stall_change(42.0) is None
    wd.stop()  # shutting down on purpose: silence after it is no stall
    assert wd.stall_change(60.0) is None


def test_a_stall_is_noticed_when_the_bound_passes_not_a_period_later() -> None:
    wd = Watchdog(interval_s=30.0, stall_after_s=10.0)
    wd.frame_arrived(0.0)
    now, polls = 0.0, []
    while now < 40.0:
        send, wait = wd.poll(now)
        polls.append((now, send, wd.stall_change(now)))
        now += wait
    said = [(t, change) for t, _, change in polls if change]
    assert len(said) == 1 and said[0][1] == "stalled" and 10.0 < said[0][0] <= 10.1
    assert [t for t, send, _ in polls if send] == [0.0]  # pings: only while healthy


@pytest.mark.parametrize(
    ("env", "expected_s"),
    [
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 30.0),
        ({"WATCHDOG_USEC": "400000"}, 0.4),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # someone else's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_from_env(env: dict[str, str], expected_s: float | None) -> None:
    wd = Watchdog.from_env(env, pid=4242)
    assert (wd.interval_s if wd else None) == expected_s


def test_status_lines_read_well() -> None:
    assert status_line("streaming", 0.2, "") == "streaming, 0 s buffered"
    assert status_line("failing", 42.0, "connection refused") == (
        "failing, 42 s buffered (last error: connection refused)")
    assert status_line("idle", 0.0, "timed out") == "idle, 0 s buffered"  # a past error
    long = status_line("reconnecting", 1.0, "x" * 500 + "\nsecond line")
    assert "\n" not in long and len(long) < 200


# -- the real socket -----------------------------------------------------------------


class Listener:
    """What systemd does with NOTIFY_SOCKET: bind a datagram socket and read messages."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def drain(self) -> list[str]:
        messages = []
        while True:
            try:
                messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return messages


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify")
        sock.bind(address)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
    else:
        name = f"roomscribe-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    sock.setblocking(False)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    yield Listener(sock)
    sock.close()


def test_ready_status_stopping_arrive(listener: Listener) -> None:
    notifier = Notifier.from_env()
    notifier.ready()
    notifier.status("streaming, 0 s buffered")
    notifier.status("streaming, 0 s buffered")
    notifier.status("server unreachable, 42 s buffered")
    notifier.stopping()
    notifier.close()
    assert listener.drain() == [
        "READY=1",
        "STATUS=streaming, 0 s buffered",
        "STATUS=server unreachable, 42 s buffered",
        "STOPPING=1",
    ]


def test_watchdog_pings_while_frames_arrive_and_stop_when_they_stop(
        listener: Listener, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="roomscribe.notify")
    asyncio.run(asyncio.wait_for(watchdog_scenario(listener), scaled(30.0)))
    # the journal says why the restart that follows comes
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith("capture stalled: no audio for ")
    assert "systemd restarts the service within 0.4 s" in said[0]


async def watchdog_scenario(listener: Listener) -> None:
    notifier = Notifier.from_env()
    assert notifier.watchdog is not None and notifier.watchdog.stall_after_s == 0.4
    pinger = asyncio.create_task(notifier.run_watchdog(), name="watchdog")
    loop = asyncio.get_running_loop()
    got: list[str] = []
    deadline = loop.time() + scaled(10.0)
    while got.count("WATCHDOG=1") < 3 and loop.time() < deadline:
        notifier.frame_arrived(loop.time())
        await asyncio.sleep(0.05)
        got += listener.drain()
    assert got.count("WATCHDOG=1") >= 3

    # Frames stop. After the stall bound plus a poll, no ping may follow.
    await asyncio.sleep(scaled(0.4 + 0.4))
    listener.drain()
    await asyncio.sleep(0.8)
    assert listener.drain() == []
    pinger.cancel()
    notifier.close()


def test_nothing_happens_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier.from_env()
    assert not notifier.enabled
    notifier.ready()
    notifier.status("streaming")
    notifier.frame_arrived(0.0)
    asyncio.run(asyncio.wait_for(notifier.run_watchdog(), 1.0))  # returns at once


def test_a_vanished_socket_does_not_raise(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    notifier = Notifier.from_env()
    notifier.ready()
    notifier.status("still fine")
    notifier.close()

"""The outage buffer: bounded, sample-indexed, exact times."""

from __future__ import annotations

from roomscribe.audio import Frame
from roomscribe.ring import Ring


def pcm(samples: int, value: int = 1) -> bytes:
    return value.to_bytes(2, "little", signed=True) * samples


def test_append_read_release_keeps_sample_numbers() -> None:
    ring = Ring(capacity_s=10)
    ring.append(Frame(pcm(16000, 1), captured_at=100.0))
    ring.append(Frame(pcm(16000, 2), captured_at=101.0))
    assert (ring.start, ring.end) == (0, 32000)
    pos, data = ring.read(15990, 20)
    assert pos == 15990 and data == pcm(10, 1) + pcm(10, 2)
    ring.release(20000)
    assert ring.start == 20000 and ring.held_s == 0.75
    pos, data = ring.read(0, 5)  # released audio is gone: reading starts at start
    assert pos == 20000 and data == pcm(5, 2)


def test_time_at_maps_samples_to_capture_time() -> None:
    ring = Ring(capacity_s=10)
    ring.append(Frame(pcm(8000), captured_at=50.0))
    ring.append(Frame(pcm(8000), captured_at=60.0))  # a gap: capture resumed later
    assert ring.time_at(4000) == 50.25
    assert ring.time_at(8000 + 1600) == 60.1
    ring.release(12000)
    assert ring.time_at(12000) == 60.25
    assert ring.time_at(16000) == 60.5


def test_full_buffer_drops_oldest_and_counts() -> None:
    ring = Ring(capacity_s=1)
    for i in range(3):
        ring.append(Frame(pcm(16000, i), captured_at=float(i)))
    assert ring.held_s == 1.0
    assert ring.dropped_samples == 32000
    assert ring.start == 32000
    assert ring.read(0, 3)[1] == pcm(3, 2)

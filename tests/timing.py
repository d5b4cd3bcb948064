"""One factor for every fixed wait in the tests, so they hold on a slower CPU.

Every timeout a test waits for (a port to listen, a transcript to arrive, a process
to exit, pytest-timeout's limit) is written for this project's 2-core x86 machine
and multiplied by SLOWDOWN. A Pi 3 class core is about 5-10x slower, and an ARM
system emulated by qemu-user slower still. The factor is:

- ROOMSCRIBE_TEST_SLOWDOWN from the environment when it is set (a number >= 1), else
- measured once at start: the best of five runs of a small pure-Python workload
  against the time it takes on the reference machine, never below 1.

Only upper bounds are scaled. Durations that are part of a scenario (a broker down
for 60 s of speech, a file played at real time) stay as they are: the audio is paced
by the wall clock, not by the CPU.
"""

from __future__ import annotations

import os
import sys
import time

ENV = "ROOMSCRIBE_TEST_SLOWDOWN"
# best of five runs of _workload() on the reference machine (2-core x86, CPython 3.11)
REFERENCE_S = 0.034


def _workload() -> float:
    start = time.perf_counter()
    table: dict[int, int] = {}
    for i in range(400_000):
        table[i % 997] = table.get(i % 997, 0) + i * 3
    sorted(str(v) for v in table.values())
    return time.perf_counter() - start


def measure() -> float:
    """How many times slower than the reference machine this one runs Python."""
    best = min(_workload() for _ in range(5))
    return max(1.0, round(best / REFERENCE_S, 1))


def _from_env() -> tuple[float, str]:
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return measure(), "measured"
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value >= 1.0 or value == float("inf"):
        sys.exit(f"{ENV}={raw!r}: must be a number >= 1 (how many times slower than x86)")
    return value, f"from {ENV}"


SLOWDOWN, SOURCE = _from_env()
# processes the tests start (helpers, children) inherit the factor, not measure again
os.environ[ENV] = f"{SLOWDOWN:g}"


def scaled(seconds: float) -> float:
    """A timeout written for the reference machine, for this one."""
    return seconds * SLOWDOWN


def scaled_s(seconds: float) -> int:
    """scaled() rounded up to whole seconds, for config files that take integers."""
    return int(-(-seconds * SLOWDOWN // 1))

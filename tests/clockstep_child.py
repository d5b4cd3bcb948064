"""`python -m roomscribe ...` on a wall clock that can be stepped while it runs.

The fault: a Raspberry Pi has no real-time clock, so it boots on the time it last
saved and NTP steps the wall clock (by hours after a power cut) once the network is
up, while the daemon is already capturing. `time.time()` here reads a step in seconds
from the file named by $CLOCK_STEP_FILE (missing or empty: 0); the monotonic clock is
untouched, as NTP leaves it. Only the fault is faked: the daemon is the real one.
"""

from __future__ import annotations

import os
import runpy
import sys
import time

_unstepped = time.time
_step_file = os.environ["CLOCK_STEP_FILE"]


def _stepped() -> float:
    try:
        with open(_step_file) as fh:
            return _unstepped() + float(fh.read() or 0)
    except (OSError, ValueError):
        return _unstepped()


time.time = _stepped
sys.argv = ["roomscribe", *sys.argv[1:]]
runpy.run_module("roomscribe", run_name="__main__", alter_sys=True)

#!/usr/bin/env bash
# The test suite, set-up included. Extra arguments go to pytest.
# On 32-bit ARM the server's tests are skipped (its extra is 64-bit only).
#
# Two pytest-xdist workers, a test file each at a time (--dist loadfile, so a file's
# servers and model are started once): most of the suite's time is real-time audio
# and waits on real peers, not CPU, so two files at once take about half the time on
# two cores. ROOMSCRIBE_TEST_WORKERS=0 runs it in one process.
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
workers=${ROOMSCRIBE_TEST_WORKERS:-2}
if [ "$workers" = 0 ]; then
  exec "${RUN[@]}" pytest "$@"
fi
exec "${RUN[@]}" pytest -n "$workers" --dist loadfile "$@"

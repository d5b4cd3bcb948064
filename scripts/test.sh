#!/usr/bin/env bash
# The test suite, set-up included. Extra arguments go to pytest.
# On 32-bit ARM the server's tests are skipped (its extra is 64-bit only).
#
# Two pytest-xdist workers, a test file each at a time (--dist loadfile, so a file's
# servers and model are started once): most of the suite's time is real-time audio
# and waits on real peers, not CPU, so two files at once take about half the time on
# two cores. One process on a single core or under 2 GiB of memory (a Pi Zero 2 W has
# 512 MB: two workers would each start servers and the model). ROOMSCRIBE_TEST_WORKERS
# sets the number; 0 runs it in one process.
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
mem_kib=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo 2>/dev/null || echo 0)
if [ "$(nproc 2>/dev/null || echo 1)" -ge 2 ] && [ "${mem_kib:-0}" -ge 2000000 ]; then
  default_workers=2
else
  default_workers=0
fi
workers=${ROOMSCRIBE_TEST_WORKERS:-$default_workers}
if [ "$workers" = 0 ]; then
  exec "${RUN[@]}" pytest "$@"
fi
exec "${RUN[@]}" pytest -n "$workers" --dist loadfile "$@"

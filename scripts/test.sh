#!/usr/bin/env bash
# The test suite, set-up included. Extra arguments go to pytest.
# On 32-bit ARM the server's tests are skipped (its extra is 64-bit only).
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
exec "${RUN[@]}" pytest "$@"

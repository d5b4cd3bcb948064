#!/usr/bin/env bash
# The test suite, set-up included. Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
exec uv run --locked --extra server pytest "$@"

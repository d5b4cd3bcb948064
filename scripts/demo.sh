#!/usr/bin/env bash
# The main job, end to end and offline: real speech → capture → the self-hosted
# server → a local Mosquitto → transcripts printed as they arrive over MQTT.
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
exec uv run --locked --extra server python scripts/demo.py "$@"

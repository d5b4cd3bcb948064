#!/usr/bin/env bash
# The main job, end to end and offline: real speech → capture → the self-hosted
# server → a local Mosquitto → transcripts printed as they arrive over MQTT.
# On 32-bit ARM there is no self-hosted server (its extra is 64-bit only): give one
# that runs elsewhere with --server ws://HOST:8765/v1/realtime.
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
exec "${RUN[@]}" python scripts/demo.py "$@"

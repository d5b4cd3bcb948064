# Sourced by demo.sh and test.sh: installs what a fresh Debian/Raspberry Pi OS machine
# lacks (apt packages, uv), then the locked Python environment. Idempotent.
# Sets RUN: the command prefix that runs a program in that environment.
#
# 64-bit (amd64, arm64): `uv sync --locked --extra server`, every package a wheel from
# PyPI but pyalsaaudio (a small C build against alsa-lib).
# 32-bit ARM (armhf: Pi OS 32-bit, Pi Zero 2 W / 3B+ images): PyPI has no armv7l
# wheels for numpy, soxr, onnxruntime or ruff. numpy comes from Debian (python3-numpy,
# in a venv that sees the system's packages) instead of an hour-long compile; soxr
# builds with g++ and cmake in a minute or two; the server extra (onnxruntime) is
# left out: the daemon talks to a server on a 64-bit machine. Everything else is
# installed at the versions uv.lock pins.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$HOME/.local/bin:$PATH"
# uv must use the machine's Python: these machines reach package registries only.
export UV_PYTHON_DOWNLOADS=never
export UV_PYTHON_PREFERENCE=only-system

ARCH=$(dpkg --print-architecture 2>/dev/null || uname -m)
case $ARCH in
  armhf|armel|arm|armv6l|armv7l) export ROOMSCRIBE_32BIT=1 ;;
  *) export ROOMSCRIBE_32BIT=0 ;;
esac
# Packages the 32-bit install leaves out: numpy is Debian's; ruff and mypy (lint, no
# armv7l wheels, run them on a 64-bit machine); jiwer/rapidfuzz (server benchmarks).
NOT_ON_32BIT='numpy|ruff|mypy|librt|jiwer|rapidfuzz'

need_apt=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
[ -e /usr/include/alsa/asoundlib.h ] || need_apt+=(libasound2-dev)
command -v gcc >/dev/null || need_apt+=(gcc)
python3 -c 'import sysconfig,os,sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"],"Python.h")) else 1)' \
  || need_apt+=(python3-dev)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
# uv comes from PyPI. Pi OS Lite and Debian have no pip by default: without it, uv is
# installed into a venv of its own (python3-venv brings ensurepip).
if ! command -v uv >/dev/null && ! python3 -m pip --version >/dev/null 2>&1; then
  python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
fi
if [ "$ROOMSCRIBE_32BIT" = 1 ]; then
  python3 -c 'import numpy' 2>/dev/null || need_apt+=(python3-numpy)
  command -v g++ >/dev/null || need_apt+=(g++)
  command -v cmake >/dev/null || need_apt+=(cmake)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need_apt[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin"

if ! command -v uv >/dev/null; then
  echo "bootstrap: installing uv" >&2
  if python3 -m pip --version >/dev/null 2>&1; then
    python3 -m pip install --quiet --user uv 2>/dev/null \
      || python3 -m pip install --quiet --user --break-system-packages uv 2>/dev/null \
      || python3 -m pip install --quiet uv
  else
    UV_VENV="$HOME/.local/share/roomscribe/uv"
    python3 -m venv "$UV_VENV"
    "$UV_VENV/bin/pip" install --quiet --disable-pip-version-check uv
    mkdir -p "$HOME/.local/bin"
    ln -sf "$UV_VENV/bin/uv" "$HOME/.local/bin/uv"
  fi
  command -v uv >/dev/null || { echo "bootstrap: uv did not install (see above)" >&2; exit 1; }
fi
cd "$ROOT"

# The test recordings (shared/audio): beside this clone, or beside the repository it
# was cloned from (a clone made elsewhere, e.g. in /tmp). ROOMSCRIBE_SHARED wins.
if [ -z "${ROOMSCRIBE_SHARED:-}" ]; then
  origin=$(git -C "$ROOT" config --get remote.origin.url 2>/dev/null || true)
  for dir in "$ROOT/../shared" "${origin:+$origin/../shared}"; do
    if [ -n "$dir" ] && [ -d "$dir/audio" ]; then
      ROOMSCRIBE_SHARED=$(cd "$dir" && pwd)
      break
    fi
  done
fi
[ -n "${ROOMSCRIBE_SHARED:-}" ] && export ROOMSCRIBE_SHARED

if [ "$ROOMSCRIBE_32BIT" = 0 ]; then
  uv sync --quiet --locked --extra server
  RUN=(uv run --locked --extra server)
else
  # Reinstalled when uv.lock or pyproject.toml change.
  stamp=".venv/.roomscribe-32bit-$(cat uv.lock pyproject.toml | sha256sum | cut -c1-16)"
  if [ ! -e "$stamp" ]; then
    echo "bootstrap: 32-bit ARM ($ARCH): Debian's numpy, no server extra (64-bit only)" >&2
    if ! grep -qs 'include-system-site-packages = true' .venv/pyvenv.cfg; then
      rm -rf .venv
      uv venv --quiet --system-site-packages --python /usr/bin/python3 .venv
    fi
    uv export --quiet --locked --no-hashes --no-annotate --no-emit-project \
        --format requirements-txt | grep -Ev "^($NOT_ON_32BIT)==" > .venv/requirements-32bit.txt
    uv pip install --quiet --python .venv/bin/python --no-deps -r .venv/requirements-32bit.txt
    uv pip install --quiet --python .venv/bin/python --no-deps -e .
    rm -f .venv/.roomscribe-32bit-*
    touch "$stamp"
  fi
  RUN=(uv run --no-sync)
fi

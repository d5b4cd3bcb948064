# Sourced by demo.sh and test.sh: installs what a fresh Debian/Raspberry Pi OS machine
# lacks (apt packages, uv), then the locked Python environment. Idempotent.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$HOME/.local/bin:$PATH"
# uv must use the machine's Python: these machines reach package registries only.
export UV_PYTHON_DOWNLOADS=never
export UV_PYTHON_PREFERENCE=only-system

need_apt=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
[ -e /usr/include/alsa/asoundlib.h ] || need_apt+=(libasound2-dev)
command -v gcc >/dev/null || need_apt+=(gcc)
python3 -c 'import sysconfig,os,sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"],"Python.h")) else 1)' \
  || need_apt+=(python3-dev)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need_apt[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin"

if ! command -v uv >/dev/null; then
  echo "bootstrap: installing uv" >&2
  python3 -m pip install --quiet --user uv 2>/dev/null \
    || python3 -m pip install --quiet --user --break-system-packages uv 2>/dev/null \
    || python3 -m pip install --quiet uv
fi
cd "$ROOT"
uv sync --quiet --locked --extra server

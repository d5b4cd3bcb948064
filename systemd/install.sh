#!/usr/bin/env bash
# Install roomscribe as a systemd service on Raspberry Pi OS (Bookworm) or Debian.
#
#   sudo systemd/install.sh [--with-server] [--api-key-file F] [--mqtt-password-file F]
#                           [--server-token-file F] [--server-tokens-file F]
#   sudo systemd/install.sh --uninstall
#
# Idempotent: run it again to upgrade. /etc/roomscribe/config.toml is created once and
# never overwritten; secrets are copied with mode 0600 and never printed.
# --root DIR installs into a scratch tree instead of / (no systemctl, no apt-get);
# with --skip-venv it also skips creating the venv, which is how the tests run it.
# In a chroot that builds an image (systemd not running: no /run/systemd/system, or
# --offline) the units are enabled without daemon-reload or a start: they run at boot.
# On 32-bit ARM (armhf) numpy comes from Debian (python3-numpy, the venv sees system
# packages) and there is no --with-server: the server extra is 64-bit only.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$SCRIPT_DIR")

ROOT=/
UNINSTALL=0
WITH_SERVER=0
START=1
OFFLINE=0
SKIP_VENV=0
SOURCE=$REPO
PYTHON=python3
API_KEY_FILE=
MQTT_PASSWORD_FILE=
SERVER_TOKEN_FILE=
SERVER_TOKENS_FILE=
CONFIG_TEMPLATE=$REPO/config.toml

say() { printf 'roomscribe-install: %s\n' "$*"; }
die() { printf 'roomscribe-install: error: %s\n' "$*" >&2; exit 1; }

usage() {
    cat <<'EOF'
usage: install.sh [options]
  --root DIR                install under DIR instead of / (no systemctl, no apt-get)
  --with-server             also install the self-hosted server (roomscribe-server.service)
  --api-key-file F          copy F to /etc/roomscribe/together_api_key (mode 0600)
  --mqtt-password-file F    copy F to /etc/roomscribe/mqtt_password (mode 0600)
  --server-token-file F     copy F to /etc/roomscribe/server_token (mode 0600): the token
                            of a LAN roomscribe serve when Together is one of uplink.urls
  --server-tokens-file F    copy F to /etc/roomscribe/server_tokens (mode 0600): the tokens
                            this machine's roomscribe serve accepts, one a line
  --no-start                install but do not enable or (re)start the services
  --offline                 systemd is not running (an image built in a chroot): enable
                            the units for the next boot, no daemon-reload, no start
                            (automatic when /run/systemd/system is missing)
  --source PATH             project directory or wheel to pip-install (default: this repo)
  --python PY               interpreter for the venv (default: python3, needs 3.11+)
  --config-template F       initial config.toml (default: the repo's config.toml)
  --skip-venv               do not create the venv (only with --root DIR, for tests)
  --uninstall               remove the services and /opt/roomscribe; keep /etc/roomscribe
EOF
}

need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --root) need_value "$@"; ROOT=$2; shift 2 ;;
        --with-server) WITH_SERVER=1; shift ;;
        --api-key-file) need_value "$@"; API_KEY_FILE=$2; shift 2 ;;
        --mqtt-password-file) need_value "$@"; MQTT_PASSWORD_FILE=$2; shift 2 ;;
        --server-token-file) need_value "$@"; SERVER_TOKEN_FILE=$2; shift 2 ;;
        --server-tokens-file) need_value "$@"; SERVER_TOKENS_FILE=$2; shift 2 ;;
        --no-start) START=0; shift ;;
        --offline) OFFLINE=1; shift ;;
        --source) need_value "$@"; SOURCE=$2; shift 2 ;;
        --python) need_value "$@"; PYTHON=$2; shift 2 ;;
        --config-template) need_value "$@"; CONFIG_TEMPLATE=$2; shift 2 ;;
        --skip-venv) SKIP_VENV=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

# P is prefixed to every absolute path: "" for a real install, the scratch tree otherwise.
mkdir -p "$ROOT" || die "--root $ROOT: cannot create it"
P=$(cd "$ROOT" && pwd -P)
LIVE=0
if [[ $P == / ]]; then
    P=
    LIVE=1
fi
if [[ $SKIP_VENV == 1 && $LIVE == 1 ]]; then
    die "--skip-venv is only for --root DIR installs: the service needs its venv"
fi
if [[ $LIVE == 1 && $EUID -ne 0 ]]; then
    die "installing into / needs root: run it with sudo (or use --root DIR)"
fi

ARCH=$(dpkg --print-architecture 2>/dev/null || uname -m)
case $ARCH in
    armhf|armel|arm|armv6l|armv7l) BITS32=1 ;;
    *) BITS32=0 ;;
esac
if [[ $LIVE == 1 && ! -d /run/systemd/system ]]; then
    OFFLINE=1
fi

OPT=$P/opt/roomscribe
VENV=$OPT/venv
ETC=$P/etc/roomscribe
UNITS=$P/etc/systemd/system
# The commands a user runs by hand (level, listen, check --connect) on the PATH, sudo's
# included; without --config they read $ETC/config.toml, as the service does.
BIN=$P/usr/local/bin
COMMAND=/opt/roomscribe/venv/bin/roomscribe  # the link's target, as seen from the root

# ---------------------------------------------------------------------------------
if [[ $UNINSTALL == 1 ]]; then
    if [[ $LIVE == 1 ]]; then
        for unit in roomscribe.service roomscribe-server.service; do
            if [[ -e $UNITS/$unit ]]; then
                say "stopping and disabling $unit"
                if [[ $OFFLINE == 1 ]]; then
                    systemctl --root=/ disable --quiet "$unit" || true
                else
                    systemctl disable --now "$unit" || true
                fi
            fi
        done
    fi
    rm -f "$UNITS/roomscribe.service" "$UNITS/roomscribe-server.service"
    if [[ $LIVE == 1 && $OFFLINE == 0 ]]; then
        systemctl daemon-reload
    fi
    # OPT is never "/opt" or "": it always ends in /opt/roomscribe.
    rm -rf -- "$OPT"
    if [[ -L $BIN/roomscribe && $(readlink "$BIN/roomscribe") == "$COMMAND" ]]; then
        rm -f -- "$BIN/roomscribe"
    fi
    say "removed the services and $OPT"
    say "kept $ETC (config and credentials) and /var/lib/private/roomscribe (state);"
    say "remove them by hand if you no longer need them"
    exit 0
fi

# ---------------------------------------------------------------------------------
for f in "$API_KEY_FILE" "$MQTT_PASSWORD_FILE" "$SERVER_TOKEN_FILE" "$SERVER_TOKENS_FILE"; do
    [[ -z $f || (-f $f && -r $f) ]] || die "cannot read secret file $f"
    [[ -z $f || -s $f ]] || die "secret file $f is empty"
done
[[ -f $SCRIPT_DIR/roomscribe.service ]] || die "missing $SCRIPT_DIR/roomscribe.service"
if [[ ! -e $ETC/config.toml && ! -f $CONFIG_TEMPLATE ]]; then
    die "no config template at $CONFIG_TEMPLATE (use --config-template)"
fi

install_os_packages() {
    # pyalsaaudio has no wheels for the Pi: it compiles against alsa-lib.
    local missing=() pkg
    local pkgs=(python3-venv python3-dev libasound2-dev gcc)
    if [[ $BITS32 == 1 ]]; then
        # no armv7l wheels on PyPI: Debian's numpy; soxr compiles (C++, CMake)
        pkgs+=(python3-numpy g++ cmake)
    fi
    for pkg in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' \
            || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        say "installing OS packages: ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    fi
}

make_venv() {
    if [[ $BITS32 == 1 && $WITH_SERVER == 1 ]]; then
        die "--with-server: the server extra is 64-bit only (onnxruntime has no 32-bit ARM wheel); run the server on a 64-bit machine and set [uplink] url in $ETC/config.toml"
    fi
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
        || die "$PYTHON is missing or older than 3.11 (use --python)"
    local venv_args=()
    if [[ $BITS32 == 1 ]]; then
        venv_args=(--system-site-packages)  # Debian's python3-numpy
        if [[ -x $VENV/bin/python ]] \
                && ! grep -qs 'include-system-site-packages = true' "$VENV/pyvenv.cfg"; then
            say "recreating $VENV so that it sees Debian's numpy"
            rm -rf -- "$VENV"
        fi
    fi
    if [[ ! -x $VENV/bin/python ]]; then
        say "creating the venv in $VENV"
        mkdir -p "$OPT"
        "$PYTHON" -m venv "${venv_args[@]}" "$VENV" \
            || die "could not create $VENV (is python3-venv installed?)"
    fi
    local target=$SOURCE
    [[ -e $target ]] || die "--source $target: no such file or directory"
    if [[ $WITH_SERVER == 1 ]]; then
        target="${target}[server]"
    fi
    if [[ $BITS32 == 1 ]]; then
        "$VENV/bin/python" -c 'import numpy' 2>/dev/null \
            || die "numpy is missing: apt-get install python3-numpy (PyPI has no 32-bit ARM wheel)"
    fi
    say "installing $target into the venv (this takes a while on a Pi)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade "$target" \
        || die "pip install failed; the output above says why"
}

if [[ $SKIP_VENV == 1 ]]; then
    say "skipping the venv (--skip-venv)"
else
    if [[ $LIVE == 1 ]] && command -v apt-get >/dev/null; then
        install_os_packages
    fi
    make_venv
fi

mkdir -p "$OPT/doc" "$ETC" "$UNITS"
chmod 0755 "$ETC"
if [[ -f $REPO/docs/systemd.md ]]; then
    install -m 0644 "$REPO/docs/systemd.md" "$OPT/doc/systemd.md"
fi

if [[ -e $ETC/config.toml ]]; then
    say "kept the existing $ETC/config.toml"
else
    # World-readable: the service runs as a dynamic user. Secrets never go in here.
    install -m 0644 "$CONFIG_TEMPLATE" "$ETC/config.toml"
    say "created $ETC/config.toml: edit it, then restart the service"
fi

install_secret() {  # $1 = source file, $2 = credential name
    # umask first, so the copy is never readable by others, not even for a moment.
    (umask 077 && cp -- "$1" "$ETC/$2.tmp" && chmod 0600 "$ETC/$2.tmp" \
        && mv -f -- "$ETC/$2.tmp" "$ETC/$2")
    say "installed $ETC/$2 (mode 0600)"
}
if [[ -n $API_KEY_FILE ]]; then
    install_secret "$API_KEY_FILE" together_api_key
fi
if [[ -n $MQTT_PASSWORD_FILE ]]; then
    install_secret "$MQTT_PASSWORD_FILE" mqtt_password
fi
if [[ -n $SERVER_TOKEN_FILE ]]; then
    install_secret "$SERVER_TOKEN_FILE" server_token
fi
if [[ -n $SERVER_TOKENS_FILE ]]; then
    install_secret "$SERVER_TOKENS_FILE" server_tokens
fi

units=(roomscribe.service)
if [[ $WITH_SERVER == 1 ]]; then
    units=(roomscribe-server.service "${units[@]}")
fi
for unit in "${units[@]}"; do
    install -m 0644 "$SCRIPT_DIR/$unit" "$UNITS/$unit"
    say "installed $UNITS/$unit"
done

mkdir -p "$BIN"
if [[ -L $BIN/roomscribe || ! -e $BIN/roomscribe ]]; then
    ln -sfn "$COMMAND" "$BIN/roomscribe"
    say "linked $BIN/roomscribe: roomscribe level, listen and check use $ETC/config.toml"
else
    say "kept $BIN/roomscribe (not ours); the program is $COMMAND"
fi

if [[ $LIVE == 0 ]]; then
    say "installed into $P (no systemctl outside /)"
    exit 0
fi
getent group audio >/dev/null || say "warning: no 'audio' group; the service cannot open /dev/snd"
if [[ $OFFLINE == 1 ]]; then
    # An image being built: systemd is not running, so no daemon-reload and no start.
    if [[ $START == 1 ]]; then
        # --root=/: on the unit files directly, no bus (a chroot has no running systemd)
        systemctl --root=/ enable --quiet "${units[@]}" || die "systemctl enable failed"
        say "enabled ${units[*]} for the next boot (systemd is not running here)"
    else
        say "not enabled (--no-start): systemctl enable ${units[*]}"
    fi
    exit 0
fi
systemctl daemon-reload
if [[ $START == 0 ]]; then
    say "not started (--no-start): systemctl enable --now ${units[*]}"
    exit 0
fi
for unit in "${units[@]}"; do
    systemctl enable --quiet "$unit"
    # restart, not start: an upgrade must run the new code.
    systemctl restart "$unit"
    say "enabled and (re)started $unit"
done
say "done: systemctl status roomscribe; journalctl -u roomscribe -f"

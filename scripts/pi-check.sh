#!/usr/bin/env bash
# Does roomscribe install and run on a Raspberry Pi OS-like system? A repeatable check
# without a Pi: Debian bookworm root file systems for arm64 and armhf (debootstrap),
# run through qemu-user-static, with the project installed there by the README's
# commands; the daemon's tests run inside, and the daemon runs end to end (the demo)
# against a server running natively on this host (the chroot shares its loopback).
#
#   sudo bash scripts/pi-check.sh [--arch arm64|armhf|both] [--work DIR] [--reuse]
#                                 [--install-sh] [--keep-going]
#
# --work DIR    where the root file systems and logs go (default /var/tmp/roomscribe-pi);
#               the debootstrapped base of each is kept there and copied for each run
# --reuse       run in the previous run's system (already installed) instead of a fresh copy
# --install-sh  also run `systemd/install.sh` inside (the service install, chroot mode)
# Writes DIR/summary-ARCH.md. Emulated timings are NOT performance figures: qemu-user
# runs Python some 5-20x and whisper ~100x slower than the real CPU would.
# Needs root, and binfmt_misc (mounted here if it is not). Run it under `nice`.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=/var/tmp/roomscribe-pi
ARCHES=(arm64 armhf)
REUSE=0
INSTALL_SH=0
MIRROR=${PI_CHECK_MIRROR:-http://deb.debian.org/debian}

die() { printf 'pi-check: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'pi-check: %s\n' "$*" >&2; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --arch) [[ ${2:-} =~ ^(arm64|armhf|both)$ ]] || die "--arch takes arm64, armhf or both"
                [[ $2 == both ]] && ARCHES=(arm64 armhf) || ARCHES=("$2"); shift 2 ;;
        --work) [[ -n ${2:-} ]] || die "--work needs a directory"; WORK=$2; shift 2 ;;
        --reuse) REUSE=1; shift ;;
        --install-sh) INSTALL_SH=1; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
[[ $EUID -eq 0 ]] || die "needs root (debootstrap, chroot, mounts): run it with sudo"
[[ -d $REPO/../shared/audio ]] || die "no $REPO/../shared/audio (the test recordings)"
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

# -- the host's tools --------------------------------------------------------------
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
[[ -e /usr/bin/qemu-aarch64-static ]] || missing+=(qemu-user-static binfmt-support)
if [[ ${#missing[@]} -gt 0 ]]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
        || die "cannot mount binfmt_misc (qemu-user needs it)"
fi
update-binfmts --enable >/dev/null 2>&1 || true

qemu_name() { [[ $1 == arm64 ]] && echo aarch64 || echo arm; }

# qemu-user 7.2 shows the host's x86 /proc/cpuinfo, on which onnxruntime crashes at
# import; an ARM one is bind-mounted over it (a Pi 4's, a Pi 3B+'s in 32-bit mode).
cpuinfo() {
    local i
    for i in 0 1 2 3; do
        if [[ $1 == arm64 ]]; then
            printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$i"
        else
            printf 'processor\t: %s\nmodel name\t: ARMv7 Processor rev 4 (v7l)\nBogoMIPS\t: 38.40\nFeatures\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32\nCPU implementer\t: 0x41\nCPU architecture: 7\nCPU variant\t: 0x0\nCPU part\t: 0xd03\nCPU revision\t: 4\n\n' "$i"
        fi
    done
    printf 'Hardware\t: BCM2835\nRevision\t: a020d3\nModel\t\t: Raspberry Pi (emulated by qemu-user)\n'
}

MOUNTED=()
SERVER_PID=
cleanup() {
    local m
    if [[ -n $SERVER_PID ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    for ((m = ${#MOUNTED[@]} - 1; m >= 0; m--)); do
        umount "${MOUNTED[m]}" 2>/dev/null || umount -l "${MOUNTED[m]}" 2>/dev/null || true
    done
    MOUNTED=()
}
trap cleanup EXIT

mount_into() {  # $1 = root file system
    local r=$1
    mount -t proc proc "$r/proc"; MOUNTED+=("$r/proc")
    mount --bind "$WORK/cpuinfo-$arch" "$r/proc/cpuinfo"; MOUNTED+=("$r/proc/cpuinfo")
    mount -t sysfs sysfs "$r/sys"; MOUNTED+=("$r/sys")
    mount --bind /dev "$r/dev"; MOUNTED+=("$r/dev")
    mount --bind /dev/pts "$r/dev/pts"; MOUNTED+=("$r/dev/pts")
    mount -t tmpfs tmpfs "$r/dev/shm"; MOUNTED+=("$r/dev/shm")
}

in_root() {  # $1 = root, rest = command; a clean environment, as a login would give
    local r=$1; shift
    # SSL_CERT_FILE/PIP_CERT: this workplace's registries are reached through a proxy
    # whose CA the host trusts (copied in below); a real Pi needs neither.
    chroot "$r" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
        PATH=/root/.local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
        PIP_CERT=/etc/ssl/certs/ca-certificates.crt "$@"
}

# A native server for the daemon in the chroot, as a 32-bit Pi would use one on another
# machine: the host's own environment (bootstrap.sh) and a free port.
start_host_server() {
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    printf '[server]\nport = %s\n' "$port" > "$WORK/host-server-$$.toml"
    (
        source "$REPO/scripts/bootstrap.sh"
        exec "${RUN[@]}" python -m roomscribe serve --config "$WORK/host-server-$$.toml"
    ) > "$WORK/host-server-$$.log" 2>&1 &
    SERVER_PID=$!
    local i
    for i in $(seq 600); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null \
            && { SERVER_PORT=$port; return 0; }
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.5
    done
    die "the host's server did not start: $(tail -5 "$WORK/host-server-$$.log")"
}

SERVER_PORT=
start_host_server
say "native server on 127.0.0.1:$SERVER_PORT (log $WORK/host-server-$$.log)"

now() { date +%s; }

check_arch() {
    arch=$1
    local base=$WORK/$arch.base r=$WORK/$arch logs=$WORK/logs-$arch t0 status
    mkdir -p "$logs"
    local summary=$WORK/summary-$arch.md
    cpuinfo "$arch" > "$WORK/cpuinfo-$arch"
    [[ -e /proc/sys/fs/binfmt_misc/qemu-$(qemu_name "$arch") ]] \
        || die "binfmt_misc has no qemu-$(qemu_name "$arch") entry (is qemu-user-static installed?)"

    # 1. the base system: what a Pi OS Lite image has that matters here (python3,
    #    CA certificates); no pip, no compiler, no venv module.
    if [[ ! -d $base ]]; then
        say "$arch: debootstrap bookworm (emulated second stage: slow)"
        t0=$(now)
        rm -rf "$base.tmp"
        debootstrap --arch="$arch" --variant=minbase --include=python3,ca-certificates \
            bookworm "$base.tmp" "$MIRROR" > "$logs/debootstrap.log" 2>&1 \
            || die "$arch: debootstrap failed, see $logs/debootstrap.log"
        mv "$base.tmp" "$base"
        echo "$(( $(now) - t0 ))" > "$base.seconds"
    fi
    # never rm -rf a tree with /dev or /proc still bound into it
    if awk -v r="$r/" 'index($2 "/", r) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
        die "$arch: something is still mounted under $r (an earlier run?): umount it first"
    fi
    if [[ $REUSE == 0 || ! -d $r ]]; then
        rm -rf "$r"
        cp -a "$base" "$r"
    fi
    # The registries are reached through a proxy whose CA the host trusts.
    cp /usr/local/share/ca-certificates/*.crt "$r/usr/local/share/ca-certificates/" 2>/dev/null || true
    cp /etc/resolv.conf "$r/etc/resolv.conf"
    mount_into "$r"
    in_root "$r" update-ca-certificates > "$logs/ca.log" 2>&1

    # 2. the project, as a clone next to shared/ (tracked files, as they are now)
    rm -rf "$r/root/roomscribe" "$r/root/shared"
    mkdir -p "$r/root/roomscribe"
    (cd "$REPO" && git ls-files -z | tar --null -T - -cf -) | tar -C "$r/root/roomscribe" -xf -
    cp -a "$REPO/../shared" "$r/root/shared"

    # 3. the README's commands: install (bootstrap.sh, which both source), the tests,
    #    the demo (against the host's server: the emulated one would take ~100x as long)
    local install_s tests_s demo_s tests_line demo_rc tests_rc rss transcripts
    t0=$(now)
    set +e
    in_root "$r" bash -c 'cd /root/roomscribe && source scripts/bootstrap.sh && "${RUN[@]}" python -c "import roomscribe, numpy, soxr, alsaaudio; print(\"installed roomscribe\", roomscribe.__version__, \"numpy\", numpy.__version__, numpy.__file__)"' \
        > "$logs/install.log" 2>&1
    status=$?
    install_s=$(( $(now) - t0 ))
    say "$arch: install exit $status in ${install_s} s (log $logs/install.log)"

    local marker=()
    [[ $arch == arm64 ]] && marker=(-m "not server")
    t0=$(now)
    in_root "$r" bash -c 'cd /root/roomscribe && bash scripts/test.sh -p no:cacheprovider -rs "$@"' \
        _ "${marker[@]}" > "$logs/tests.log" 2>&1
    tests_rc=$?
    tests_s=$(( $(now) - t0 ))
    tests_line=$(grep -E '(passed|failed|error).* in [0-9.]+s' "$logs/tests.log" | tail -1 | tr -d '=')
    say "$arch: tests exit $tests_rc in ${tests_s} s: $tests_line"

    t0=$(now)
    in_root "$r" bash -c "cd /root/roomscribe && bash scripts/demo.sh --fast --server ws://127.0.0.1:$SERVER_PORT/v1/realtime" \
        > "$logs/demo.log" 2>&1
    demo_rc=$?
    demo_s=$(( $(now) - t0 ))
    transcripts=$(grep -c '^\[[0-9:]*\] demo:' "$logs/demo.log")
    rss=$(grep -o "daemon's peak RSS: [0-9.]* MB" "$logs/demo.log" | grep -o '[0-9.]* MB' || echo "?")
    say "$arch: demo exit $demo_rc, $transcripts transcripts, daemon peak RSS $rss"

    local install_sh="not run (--install-sh)"
    if [[ $INSTALL_SH == 1 ]]; then
        in_root "$r" bash /root/roomscribe/systemd/install.sh > "$logs/install-sh.log" 2>&1
        install_sh="exit $?: $(tail -1 "$logs/install-sh.log")"
        say "$arch: systemd/install.sh $install_sh"
    fi
    set -e
    cleanup_mounts_only

    {
        echo "### $arch ($(date -u +%Y-%m-%d), qemu-user $(qemu-aarch64-static --version | head -1 | sed 's/.*version \([0-9.]*\).*/\1/'))"
        echo
        echo "| step | result | emulated wall time |"
        echo "|---|---|---|"
        echo "| debootstrap bookworm minbase + python3 | done | $(cat "$base.seconds" 2>/dev/null | sed 's/$/ s/' || true)$([[ -e $base.seconds ]] || echo 'built by an earlier run') |"
        echo "| install (bootstrap.sh: apt, uv, locked env) | exit $status; $(grep -o 'installed roomscribe.*' "$logs/install.log" | sed 's/ numpy \([0-9.]*\) .*/, numpy \1/' || echo 'failed') | ${install_s} s |"
        echo "| \`bash scripts/test.sh${marker:+ -m 'not server'}\` | exit $tests_rc: $tests_line | ${tests_s} s |"
        echo "| \`bash scripts/demo.sh --fast --server\` (host server) | exit $demo_rc, $transcripts transcripts | ${demo_s} s |"
        echo "| daemon peak RSS in the demo | $rss | |"
        echo "| \`systemd/install.sh\` in the chroot | $install_sh | |"
        echo
        grep -E '^(roomscribe:|SKIPPED)' "$logs/tests.log" | sort | uniq -c | sed 's/^ */    /' | head -20
        echo
    } > "$summary"
    cat "$summary"
}

cleanup_mounts_only() {
    local m
    for ((m = ${#MOUNTED[@]} - 1; m >= 0; m--)); do
        umount "${MOUNTED[m]}" 2>/dev/null || umount -l "${MOUNTED[m]}" 2>/dev/null || true
    done
    MOUNTED=()
}

for a in "${ARCHES[@]}"; do
    check_arch "$a"
done
say "summaries: $(printf "$WORK/summary-%s.md " "${ARCHES[@]}")"

#!/usr/bin/env bash
# The appliance on aarch64: boots a whole arm64 Debian system under qemu-system-aarch64
# (TCG, 1 CPU, 512 MB like a Pi Zero 2 W) with roomscribe installed by
# systemd/install.sh, and reports what systemd makes of roomscribe.service: started
# (Type=notify), status line, restarts (the watchdog), memory, the sandbox.
#
#   sudo nice -n 19 bash scripts/pi-vm.sh [--work DIR]
#
# Uses DIR/arm64 as left by `scripts/pi-check.sh --arch arm64 --install-sh` (the project
# and the service installed, offline). Adds a kernel (linux-image-arm64, installed in
# the chroot: its initramfs takes ~20 min emulated; cached in DIR/arm64-vm), a 15-minute
# WAV as the microphone (the VM has no sound card) and a report unit; no network: the
# uplink has no server to reach, so the daemon buffers and retries, as it would while
# its server is down. Writes DIR/vm/report.txt.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=/var/tmp/roomscribe-pi
die() { printf 'pi-vm: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'pi-vm: %s\n' "$*" >&2; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --work) [[ -n ${2:-} ]] || die "--work needs a directory"; WORK=$2; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
[[ $EUID -eq 0 ]] || die "needs root (chroot, loop mounts): run it with sudo"
SRC=$WORK/arm64
R=$WORK/arm64-vm
VM=$WORK/vm
[[ -x $SRC/opt/roomscribe/venv/bin/roomscribe ]] \
    || die "no installed arm64 system in $SRC: run scripts/pi-check.sh --arch arm64 --install-sh first"
command -v qemu-system-aarch64 >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-arm >/dev/null
}
mounted() { awk -v r="$1/" 'index($2 "/", r) == 1 { f = 1 } END { exit !f }' /proc/mounts; }
mounted "$R" && die "something is mounted under $R: umount it first"

MOUNTS=()
cleanup() {
    local m
    for ((m = ${#MOUNTS[@]} - 1; m >= 0; m--)); do umount "${MOUNTS[m]}" 2>/dev/null || umount -l "${MOUNTS[m]}" || true; done
    MOUNTS=()
}
trap cleanup EXIT

if [[ ! -e $R/vmlinuz ]]; then
    say "copying $SRC and installing a kernel in it (emulated; slow)"
    rm -rf "$R"
    cp -a "$SRC" "$R"
    mount -t proc proc "$R/proc"; MOUNTS+=("$R/proc")
    mount --bind "$WORK/cpuinfo-arm64" "$R/proc/cpuinfo"; MOUNTS+=("$R/proc/cpuinfo")
    mount --bind /dev "$R/dev"; MOUNTS+=("$R/dev")
    chroot "$R" /usr/bin/env -i HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
        PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        apt-get install -y -q --no-install-recommends linux-image-arm64 systemd-sysv udev kmod \
        > "$WORK/logs-arm64/vm-kernel.log" 2>&1 || die "kernel install failed: $WORK/logs-arm64/vm-kernel.log"
    cleanup
fi

say "preparing the system: fstab, config, microphone WAV, report unit"
echo "/dev/vda / ext4 defaults 0 1" > "$R/etc/fstab"
echo pi-vm > "$R/etc/hostname"
mkdir -p "$R/opt/roomscribe-vm"
"$REPO/.venv/bin/python" - "$REPO/../shared/audio/jfk-44k1-stereo.wav" "$R/opt/roomscribe-vm/room.wav" <<'PY'
import sys, wave
import numpy as np
with wave.open(sys.argv[1]) as src:
    rate, channels = src.getframerate(), src.getnchannels()
    speech = np.frombuffer(src.readframes(src.getnframes()), np.int16)
one = np.concatenate([speech, np.zeros(rate * channels * 4, np.int16)])  # + 4 s quiet
with wave.open(sys.argv[2], "wb") as w:
    w.setnchannels(channels); w.setsampwidth(2); w.setframerate(rate)
    w.writeframes(np.tile(one, int(900 * rate * channels / len(one)) + 1).tobytes())
PY
chmod 0644 "$R/opt/roomscribe-vm/room.wav"
cat > "$R/etc/roomscribe/config.toml" <<'TOML'
[device]
id = "pi-vm"
room = "VM"
[capture]
source = "file"
file = "/opt/roomscribe-vm/room.wav"
file_realtime = true
[uplink]
url = "ws://127.0.0.1:8765/v1/realtime"
TOML
cat > "$R/opt/roomscribe-vm/report.sh" <<'SH'
#!/bin/bash
sleep 240
exec > /var/log/pi-vm-report.txt 2>&1
echo "=== pi-vm report: $(uname -m), $(nproc) CPU, up $(cut -d' ' -f1 /proc/uptime) s ==="
grep -E "MemTotal|MemAvailable" /proc/meminfo
systemctl show roomscribe -p ActiveState -p SubState -p StatusText -p NRestarts -p WatchdogUSec -p MemoryCurrent -p MemoryPeak
pid=$(systemctl show roomscribe -p MainPID --value)
[ "$pid" != 0 ] && grep -E "VmRSS|VmHWM" "/proc/$pid/status"
echo "mosquitto: $(systemctl is-active mosquitto)"
journalctl -u roomscribe --no-pager -n 20
systemd-analyze security roomscribe --no-pager 2>/dev/null | tail -1
echo "=== end ==="
sync
systemctl poweroff
SH
chmod 0755 "$R/opt/roomscribe-vm/report.sh"
cat > "$R/etc/systemd/system/pi-vm-report.service" <<'UNIT'
[Unit]
Description=roomscribe VM check report
After=roomscribe.service mosquitto.service
[Service]
Type=oneshot
ExecStart=/opt/roomscribe-vm/report.sh
[Install]
WantedBy=multi-user.target
UNIT
chroot "$R" systemctl --root=/ enable --quiet pi-vm-report.service
rm -f "$R/var/log/pi-vm-report.txt"

say "building the disk image"
mkdir -p "$VM"
rm -f "$VM/vm.img"
truncate -s 4G "$VM/vm.img"
mkfs.ext4 -q -F -d "$R" "$VM/vm.img"
cp -L "$R/vmlinuz" "$R/initrd.img" "$VM/"

say "booting (TCG, 1 CPU, 512 MB); the report comes after 240 s of uptime"
timeout 2400 qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 1 -m 512 \
    -kernel "$VM/vmlinuz" -initrd "$VM/initrd.img" -append "root=/dev/vda rw console=ttyAMA0" \
    -drive "file=$VM/vm.img,format=raw,if=virtio" -nic none -display none \
    -serial "file:$VM/console.log" -monitor none || die "qemu failed or timed out; see $VM/console.log"

mkdir -p "$VM/mnt"
mount -o loop,ro "$VM/vm.img" "$VM/mnt"; MOUNTS+=("$VM/mnt")
[[ -s $VM/mnt/var/log/pi-vm-report.txt ]] || die "no report from the VM; see $VM/console.log"
cp "$VM/mnt/var/log/pi-vm-report.txt" "$VM/report.txt"
cleanup
cat "$VM/report.txt"

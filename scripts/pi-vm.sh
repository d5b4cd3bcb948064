#!/usr/bin/env bash
# The appliance on aarch64, end to end: boots a whole arm64 Debian system under
# qemu-system-aarch64 (TCG, 1 CPU, 512 MB like a Pi Zero 2 W) with roomscribe installed
# by systemd/install.sh and running as roomscribe.service (its DynamicUser, DeviceAllow,
# SystemCallFilter and watchdog), capturing from an ALSA loopback card (snd-aloop,
# hw:Loopback,1,0); real speech is played into the loopback and the transcripts must
# reach a Mosquitto on this host; then the sound card's clock is stopped and systemd
# must restart the service (its watchdog) and the daemon come back and transcribe.
#
#   sudo nice -n 19 bash scripts/pi-vm.sh [--work DIR] [--timeout-s N]
#
# Uses DIR/arm64 as left by `scripts/pi-check.sh --arch arm64 --install-sh` (default
# DIR /var/tmp/roomscribe-pi). Once, in a copy (DIR/arm64-vm): a kernel (the initramfs
# takes ~20 min emulated) and alsa-utils. Every run: systemd/install.sh of this tree
# in that copy (an upgrade, as on a Pi), then on this host a Mosquitto and
# `roomscribe serve` (natively: decoding emulated is ~100x slower) on free ports on
# 127.0.0.1, which the guest reaches as 10.0.2.2 (QEMU user networking), and a
# listener (scripts/pi_vm_listen.py). In the guest, pi-vm-driver.service plays
# ../shared/audio into plughw:Loopback,0,0 (aplay converts the rate), stops the clock,
# waits for the restart, plays again, writes a report and powers off. The loopback card
# takes its clock from a playback on a second loopback card, "Clock" (snd-aloop's
# timer_source; Debian's arm64 kernel has no snd-dummy), so stopping that playback
# (SIGSTOP) stalls the capture as a sound card with a dead clock would: no periods
# come, and the kernel fails each read with EIO after 1.1 buffer times.
# Writes DIR/vm/report.txt (the guest's) and DIR/vm/result.md (the verdict); exit 0
# only if the verdict is PASS. Not part of scripts/test.sh or CI.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=/var/tmp/roomscribe-pi
TIMEOUT_S=2400
die() { printf 'pi-vm: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'pi-vm: %s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --work) [[ -n ${2:-} ]] || die "--work needs a directory"; WORK=$2; shift 2 ;;
        --timeout-s) [[ ${2:-} =~ ^[0-9]+$ ]] || die "--timeout-s needs seconds"; TIMEOUT_S=$2; shift 2 ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
[[ $EUID -eq 0 ]] || die "needs root (chroot, loop mounts): run it with sudo"
SHARED=$REPO/../shared/audio
[[ -s $SHARED/transcripts.tsv ]] || die "no $SHARED/transcripts.tsv (the recordings)"
SRC=$WORK/arm64
R=$WORK/arm64-vm
VM=$WORK/vm
[[ -x $SRC/opt/roomscribe/venv/bin/roomscribe || -x $R/opt/roomscribe/venv/bin/roomscribe ]] \
    || die "no installed arm64 system in $SRC: run scripts/pi-check.sh --arch arm64 --install-sh first"
command -v qemu-system-aarch64 >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-arm >/dev/null
}
command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || die "no mosquitto on this host (apt-get install mosquitto)"
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
mounted() { awk -v r="$1/" 'index($2 "/", r) == 1 { f = 1 } END { exit !f }' /proc/mounts; }
mounted "$R" && die "something is mounted under $R: umount it first"
mkdir -p "$VM"

MOUNTS=()
PIDS=()
umount_all() {
    local m
    for ((m = ${#MOUNTS[@]} - 1; m >= 0; m--)); do umount "${MOUNTS[m]}" 2>/dev/null || umount -l "${MOUNTS[m]}" || true; done
    MOUNTS=()
}
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
    umount_all
}
trap cleanup EXIT
in_root() {  # a clean environment, as pi-check.sh's chroot (the CA of this workplace's proxy)
    chroot "$R" /usr/bin/env -i HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
        PIP_CERT=/etc/ssl/certs/ca-certificates.crt "$@"
}
mount_root() {
    mount -t proc proc "$R/proc"; MOUNTS+=("$R/proc")
    mount --bind "$WORK/cpuinfo-arm64" "$R/proc/cpuinfo"; MOUNTS+=("$R/proc/cpuinfo")
    mount --bind /dev "$R/dev"; MOUNTS+=("$R/dev")
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {  # port, pid, what, seconds
    local i
    for ((i = 0; i < $4 * 2; i++)); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || die "$3 exited early (see $VM)"
        sleep 0.5
    done
    die "$3 did not listen on port $1 within $4 s"
}

# -- 1. the system: a kernel and aplay, once --------------------------------------
if [[ ! -e $R/vmlinuz ]]; then
    say "copying $SRC and installing a kernel in it (emulated; ~20 min)"
    rm -rf "$R"
    cp -a "$SRC" "$R"
    mount_root
    in_root apt-get install -y -q --no-install-recommends linux-image-arm64 systemd-sysv udev kmod \
        > "$WORK/logs-arm64/vm-kernel.log" 2>&1 || die "kernel install failed: $WORK/logs-arm64/vm-kernel.log"
    umount_all
fi
if [[ ! -x $R/usr/bin/aplay ]]; then
    say "installing alsa-utils (aplay) in the system"
    mount_root
    in_root apt-get install -y -q --no-install-recommends alsa-utils \
        > "$WORK/logs-arm64/vm-alsa-utils.log" 2>&1 || die "alsa-utils install failed: $WORK/logs-arm64/vm-alsa-utils.log"
    umount_all
fi

# -- 2. this tree, installed by systemd/install.sh (an upgrade; offline: enabled for boot)
stamp=$(cd "$REPO" && git ls-files -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
if [[ $(cat "$R/opt/roomscribe-vm.installed" 2>/dev/null) != "$stamp" ]]; then
    say "installing this tree with systemd/install.sh in the system (emulated pip; a few minutes)"
    rm -rf "$R/root/roomscribe"
    mkdir -p "$R/root/roomscribe"
    (cd "$REPO" && git ls-files -z | tar --null -T - -cf -) | tar -C "$R/root/roomscribe" -xf -
    mount_root
    in_root bash /root/roomscribe/systemd/install.sh > "$VM/install-sh.log" 2>&1 \
        || die "systemd/install.sh failed: $VM/install-sh.log"
    umount_all
    echo "$stamp" > "$R/opt/roomscribe-vm.installed"
    say "install.sh: $(tail -1 "$VM/install-sh.log")"
fi

# -- 3. this host: broker, server, listener ---------------------------------------
MQTT_PORT=$(free_port)
SERVER_PORT=$(free_port)
MARKER_PORT=$(free_port)
rm -f "$VM"/events.jsonl "$VM"/result.md "$VM"/report.txt "$VM"/driver.log "$VM"/journal.txt
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$MQTT_PORT" > "$VM/mosquitto.conf"
"$MOSQUITTO" -c "$VM/mosquitto.conf" > "$VM/mosquitto.log" 2>&1 &
PIDS+=($!)
wait_port "$MQTT_PORT" "$!" mosquitto 30
printf '[server]\nport = %s\n' "$SERVER_PORT" > "$VM/server.toml"
(
    source "$REPO/scripts/bootstrap.sh"
    exec "${RUN[@]}" python -m roomscribe serve --config "$VM/server.toml"
) > "$VM/server.log" 2>&1 &
PIDS+=($!)
wait_port "$SERVER_PORT" "$!" "roomscribe serve" 300
"$REPO/.venv/bin/python" "$REPO/scripts/pi_vm_listen.py" listen --mqtt-port "$MQTT_PORT" \
    --marker-port "$MARKER_PORT" --deadline-s "$((TIMEOUT_S + 60))" --out "$VM" \
    > "$VM/listen.log" 2>&1 &
LISTENER=$!
PIDS+=("$LISTENER")
wait_port "$MARKER_PORT" "$LISTENER" listener 60
say "host: mosquitto 127.0.0.1:$MQTT_PORT, roomscribe serve 127.0.0.1:$SERVER_PORT, markers 127.0.0.1:$MARKER_PORT"

# -- 4. the guest's configuration --------------------------------------------------
say "preparing the system: network, sound modules, the clock, config, speech, driver"
echo "/dev/vda / ext4 defaults 0 1" > "$R/etc/fstab"
echo pi-vm > "$R/etc/hostname"
# the earlier version of this script: a report unit and a WAV as the microphone
rm -f "$R/etc/systemd/system/pi-vm-report.service" \
    "$R/etc/systemd/system/multi-user.target.wants/pi-vm-report.service" \
    "$R/opt/roomscribe-vm/room.wav" "$R/opt/roomscribe-vm/report.sh"
mkdir -p "$R/etc/systemd/network" "$R/opt/roomscribe-vm/audio"
cat > "$R/etc/systemd/network/10-pi-vm.network" <<'NET'
# QEMU user networking: the host is 10.0.2.2 (its 127.0.0.1), 10.0.2.3 the DNS.
[Match]
Name=en* eth*
[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
DNS=10.0.2.3
NET
chroot "$R" systemctl --root=/ enable --quiet systemd-networkd.service
cp "$SHARED"/*.wav "$SHARED/transcripts.tsv" "$R/opt/roomscribe-vm/audio/"
chmod 0644 "$R"/opt/roomscribe-vm/audio/*
cat > "$R/etc/roomscribe/config.toml" <<TOML
# pi-vm.sh: the loopback's capture side as the microphone (48 kHz stereo, as many USB
# mics give it), the server and the broker on the host.
[device]
id = "pi-vm"
room = "VM"
[capture]
source = "alsa"
device = "hw:Loopback,1,0"
rate_hz = 48000
channels = 2
[uplink]
url = "ws://10.0.2.2:$SERVER_PORT/v1/realtime"
[mqtt]
host = "10.0.2.2"
port = $MQTT_PORT
TOML
# The sound card's clock: two snd-aloop cards; "Loopback" (the microphone) takes its
# periods from the playback on "Clock" (timer_source), which is clocked by the kernel
# timer and fed silence by aplay, in 100 ms periods like the daemon's reads (snd-aloop
# wants them equal). Stopping that aplay stops Loopback's clock.
cat > "$R/etc/systemd/system/pi-vm-clock.service" <<'UNIT'
[Unit]
Description=pi-vm: the loopback card's clock (a playback on a second snd-aloop card)
Before=roomscribe.service
[Service]
ExecStartPre=/usr/sbin/modprobe snd-aloop enable=1,1 id=Loopback,Clock timer_source=Clock.0.0
ExecStart=/usr/bin/aplay -q -D hw:Clock,0,0 -t raw -f S16_LE -r 48000 -c 2 --period-size=4800 --buffer-size=14400 /dev/zero
[Install]
WantedBy=multi-user.target
UNIT
sed "s/@MARKER_PORT@/$MARKER_PORT/" > "$R/opt/roomscribe-vm/driver.sh" <<'SH'
#!/bin/bash
# pi-vm.sh's driver, run once at boot: speech into the loopback, a stalled clock, a
# report, power off. Every wait has a bound; markers go to the host's listener.
set -u
exec > /var/log/pi-vm-driver.log 2>&1
trap '' PIPE
AUDIO=/opt/roomscribe-vm/audio
FILES=(jfk-44k1-stereo.wav lj002-0020-22k05.wav lj002-0035-22k05.wav ami-es2011a-16k.wav)
GAP_S=12
say() { echo "$(date -u +%H:%M:%S.%3N) $*"; }
mark() { printf '%s t=%s\n' "$*" "$(date +%s.%N)" >&3; say "mark: $*"; }
until_true() {  # seconds, command...: 0 once the command succeeds, 1 after the bound
    local end=$((SECONDS + $1)); shift
    until "$@"; do ((SECONDS < end)) || return 1; sleep 2; done
}
prop() { systemctl show roomscribe -p "$1" --value; }
capturing() {  # this run of the service opened the device 3 s ago or more and no read failed
    local id line
    id=$(prop InvocationID)
    [[ -n $id && $(prop ActiveState) == active ]] || return 1
    line=$(journalctl -b -o short-unix "_SYSTEMD_INVOCATION_ID=$id" \
        | grep -E "capture: (hw:Loopback,1,0 open|capture.device)" | tail -1)
    [[ $line == *"hw:Loopback,1,0 open"* ]] && (($(date +%s) - ${line%%.*} >= 3))
}
idle() { [[ $(prop StatusText) == idle,* ]]; }  # nothing left to send: all transcribed
memory() {  # the daemon's peak and current RSS (the guest kernel's figures), its cgroup's
    local pid; pid=$(prop MainPID)
    echo "pid=$pid $(awk '/^Vm(HWM|RSS):/ { printf "%s=%skB ", $1, $2 }' "/proc/$pid/status" 2>/dev/null | tr -d :)memory_current=$(prop MemoryCurrent)"
}
play() {  # phase, file
    mark play "file=$2" "phase=$1"
    aplay -q -D plughw:Loopback,0,0 "$AUDIO/$2" || say "aplay $2 failed"
    mark played "file=$2" "phase=$1"
}
report() {
    {
        echo "=== pi-vm report: $(uname -m) $(uname -r), $(nproc) CPU, up $(cut -d' ' -f1 /proc/uptime) s ==="
        grep -E "MemTotal|MemAvailable" /proc/meminfo
        systemctl show roomscribe -p ActiveState -p SubState -p StatusText -p NRestarts \
            -p WatchdogUSec -p MemoryCurrent -p ExecMainStartTimestamp -p Result
        pid=$(prop MainPID)
        [[ $pid != 0 ]] && grep -E "VmRSS|VmHWM" "/proc/$pid/status"
        echo "before the stall: $MEMORY_BEFORE"
        echo "--- sound cards, the loopback's timer source ---"
        cat /proc/asound/cards
        echo "timer_source: $(cat /proc/asound/Loopback/timer_source 2>/dev/null)"
        echo "--- journal: roomscribe.service (this boot) ---"
        journalctl -u roomscribe -b -o short-precise --no-pager
        echo "--- journal: pi-vm-clock.service ---"
        journalctl -u pi-vm-clock -b -o short-precise --no-pager | tail -20
        echo "--- kernel: sound ---"
        journalctl -k -b -o short-precise --no-pager | grep -iE "snd|aloop|loopback|dummy|pcm" | tail -20
        systemd-analyze security roomscribe --no-pager 2>/dev/null | tail -1
        echo "=== end ==="
    } > /var/log/pi-vm-report.txt 2>&1
    journalctl -b -o short-precise --no-pager > /var/log/pi-vm-journal.txt 2>&1
}
finish() { report; sync; systemctl poweroff; exit 0; }
MEMORY_BEFORE=

exec 3>/dev/null
for _ in $(seq 30); do
    exec 3>/dev/tcp/10.0.2.2/@MARKER_PORT@ && break
    sleep 2
done
mark boot "uptime=$(cut -d' ' -f1 /proc/uptime)"

# 1. speech into the loopback, each recording once, with silence between
clock_failed() { systemctl is-failed -q pi-vm-clock.service; }
capturing_or_no_clock() { clock_failed || capturing; }
if ! until_true 300 capturing_or_no_clock || clock_failed; then
    mark error what=not-capturing "clock=$(systemctl is-active pi-vm-clock)"
    finish
fi
mark capturing phase=1 "uptime=$(cut -d' ' -f1 /proc/uptime)"
sleep 5  # the gate learns the noise floor
for f in "${FILES[@]}"; do
    play 1 "$f"
    sleep "$GAP_S"
done
until_true 240 idle || say "not idle: $(prop StatusText)"
MEMORY_BEFORE=$(memory)
mark settled phase=1 $MEMORY_BEFORE

# 2. the clock stops: the loopback delivers no more periods, the daemon's reads block
n0=$(prop NRestarts)
mark stall "nrestarts=$n0"
systemctl kill --kill-whom=main -s SIGSTOP pi-vm-clock.service
restarted() { (($(prop NRestarts) > n0)); }
if until_true 300 restarted; then
    mark restarted "nrestarts=$(prop NRestarts)"
else
    mark no-restart "nrestarts=$(prop NRestarts)" "state=$(prop ActiveState)"
fi
systemctl kill --kill-whom=main -s SIGCONT pi-vm-clock.service
mark resume

# 3. back: a new process captures and transcribes (the speech must not start before the
# capture side has set the loopback's format: alone, aplay would set the file's own)
until_true 300 capturing || { mark error what=not-capturing-after-restart; finish; }
mark capturing phase=2 "nrestarts=$(prop NRestarts)"
sleep 5
play 2 "${FILES[0]}"
until_true 240 idle || say "not idle: $(prop StatusText)"
mark settled phase=2 $(memory)
mark done
finish
SH
chmod 0755 "$R/opt/roomscribe-vm/driver.sh"
cat > "$R/etc/systemd/system/pi-vm-driver.service" <<'UNIT'
[Unit]
Description=pi-vm: speech into the loopback, a stalled clock, a report
After=roomscribe.service pi-vm-clock.service network-online.target
Wants=network-online.target
[Service]
Type=oneshot
ExecStart=/opt/roomscribe-vm/driver.sh
TimeoutStartSec=0
[Install]
WantedBy=multi-user.target
UNIT
chroot "$R" systemctl --root=/ enable --quiet pi-vm-clock.service pi-vm-driver.service
rm -f "$R"/var/log/pi-vm-*.txt "$R/var/log/pi-vm-driver.log"

# -- 5. boot ----------------------------------------------------------------------
say "building the disk image"
rm -f "$VM/vm.img"
truncate -s 4G "$VM/vm.img"
mkfs.ext4 -q -F -d "$R" "$VM/vm.img"
cp -L "$R/vmlinuz" "$R/initrd.img" "$VM/"

say "booting (TCG, 1 CPU, 512 MB; at most $TIMEOUT_S s); the guest powers off when done"
t0=$(date +%s)
timeout "$TIMEOUT_S" qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 1 -m 512 \
    -kernel "$VM/vmlinuz" -initrd "$VM/initrd.img" -append "root=/dev/vda rw console=ttyAMA0" \
    -drive "file=$VM/vm.img,format=raw,if=virtio" \
    -netdev user,id=net0 -device virtio-net-device,netdev=net0 -display none \
    -serial "file:$VM/console.log" -monitor none || say "qemu failed or timed out after $(( $(date +%s) - t0 )) s; see $VM/console.log"
say "the VM ran $(( $(date +%s) - t0 )) s"
kill "$LISTENER" 2>/dev/null || true
wait "$LISTENER" 2>/dev/null || true

mkdir -p "$VM/mnt"
mount -o loop,ro "$VM/vm.img" "$VM/mnt"; MOUNTS+=("$VM/mnt")
cp "$VM/mnt/var/log/pi-vm-report.txt" "$VM/report.txt" 2>/dev/null || say "no report from the VM"
cp "$VM/mnt/var/log/pi-vm-driver.log" "$VM/driver.log" 2>/dev/null || true
cp "$VM/mnt/var/log/pi-vm-journal.txt" "$VM/journal.txt" 2>/dev/null || true
umount_all
[[ -s $VM/report.txt ]] && cat "$VM/report.txt"
echo
if [[ -s $VM/journal.txt ]]; then
    echo "--- the stall in the guest's journal (guest clock) ---"
    grep -E "mark: stall|capture stalled|Watchdog timeout|Killing process [0-9]+ \(roomscribe\)|restart counter|SIGCONT" \
        "$VM/journal.txt" "$VM/driver.log" | head -12 || true
    echo
fi
"$REPO/.venv/bin/python" "$REPO/scripts/pi_vm_listen.py" judge --out "$VM" \
    --references "$SHARED/transcripts.tsv"

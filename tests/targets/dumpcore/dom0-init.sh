#!/bin/sh
# /init of dom0: bring up the Xen toolstack, create a PV domU, xl dump-core it (running, then
# paused), and write everything as a tar onto the second virtio disk for the host.
# /etc/xenpte.conf (written by tests/targets/xl_dumpcore.py) sets DOMU_NAME, XEN_BIN, DISK.
/bin/busybox --install -s /bin
. /etc/xenpte.conf
export PATH=$XEN_BIN:/usr/bin:/bin:/sbin LD_LIBRARY_PATH=/lib/x86_64-linux-gnu

# Each step with dom0 uptime in seconds: where the generator's time goes.
say() { read -r up _ < /proc/uptime; echo "XENPTE-STEP $up $*" >&2; }
fail() {
    exec >/dev/console 2>&1   # even when called inside a redirected command
    echo "XENPTE-DUMPCORE-FAILED: $*"
    for f in /var/log/xen/xl-*.log /var/log/xen/console/*.log; do
        [ -f "$f" ] && { echo "--- $f"; tail -n 120 "$f"; }
    done
    dmesg | tail -n 30
    while true; do sleep 60; done
}
# Run a step; fail the run if it fails. A SIGSEGV (exit 139) is retried: busybox applets now and
# then die of one in PV guests under QEMU TCG (seen in dom0 and domU, never in the same place).
run() {
    say "$*"
    for try in 1 2 3; do
        "$@" && return 0
        rc=$?; [ $rc -eq 139 ] || break
    done
    fail "$* (exit $rc)"
}
# Print the first value sed expression $1 extracts from the domU's console log (retried likewise).
console_value() {
    for try in 1 2 3 4 5; do
        value=$(tr -d '\r' < "$CONSOLE" | sed -n "$1" | head -n 1) && [ -n "$value" ] && break
    done
    [ -n "$value" ] || fail "nothing matches $1 in $CONSOLE"
    echo "$value"
}
# Poll until "$@" succeeds, for at most $1 seconds (each try forks: slow under TCG, so time it).
# (Shell builtins only for the clock: no applet to crash.)
wait_for() {
    read -r up _ < /proc/uptime; end=$((${up%.*} + $1)); shift
    while ! "$@" >/dev/null 2>&1; do
        read -r up _ < /proc/uptime
        [ "${up%.*}" -lt $end ] || fail "timed out waiting for: $*"
        sleep 0.2
    done
}
# Succeeds once the domU printed its marker; fails the run at once if the domU died first.
domu_marker() {
    grep -q -e 'Kernel panic' -e 'Attempted to kill init' "$CONSOLE" 2>/dev/null &&
        fail "the domU died before printing its marker"
    # xl's monitor logs a crash or shutdown (on_crash=preserve keeps the domain for the logs).
    grep -q 'has shut down' "/var/log/xen/xl-$DOMU.log" 2>/dev/null &&
        fail "$DOMU shut down or crashed before printing its marker"
    grep -q XENPTE-MARKER "$CONSOLE"
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# xenconsoled opens a pty per guest console: without devpts, xl create fails "Failed to create tty".
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
for d in /run /var/lib /var/log /tmp; do mkdir -p $d && mount -t tmpfs tmpfs $d; done
# The dumps (each a bit over a domU's memory) wait here for the tar: above tmpfs's 50% default.
mkdir -p /out && mount -t tmpfs -o size=90% tmpfs /out
mkdir -p /run/lock /run/xen /run/xenstored /var/lib/xen /var/lib/xenstored /var/log/xen/console
ln -sf /run /var/run
ln -sf /run/lock /var/lock

while read -r ko; do run insmod "$ko"; done < /etc/xenpte-modules.txt
run mount -t xenfs xenfs /proc/xen

run oxenstored --pid-file /run/xen/xenstored.pid
wait_for 30 xenstore-read /
run xen-init-dom0
run xenconsoled --log=guest --log-dir=/var/log/xen/console --pid-file=/run/xen/xenconsoled.pid
# Create domU $1 from config $2; wait for its marker; set CONSOLE and DOMID.
start_domu() {
    DOMU=$1 CONSOLE=/var/log/xen/console/guest-$1.log
    run xl create "$2"
    say "waiting for the marker of $1"
    wait_for 180 domu_marker
    DOMID=$(xl domid "$1") || fail "xl domid $1"
    say "$1 is domain $DOMID"
    cat "$CONSOLE"; echo  # the log's last line may still lack its line end
}

# With the domain paused, write ${1}xenctx-paused.txt (xenctx -a: the vCPU context the next dump
# stores), ${1}xenctx-marker.txt and ${1}xenctx-text.txt (xenctx -m VA: 16 lines of 32 bytes
# through libxc's own page walk, xc_translate_foreign_address; -d would be clipped to the page
# above the stack pointer), then dump-core to ${1}paused.core.
paused_dump() {
    xenctx -a "$DOMID" 0 > "/out/${1}xenctx-paused.txt" 2>&1 || say "xenctx failed (exit $?)"
    # xenconsoled's log keeps the guest's CR LF line ends (console_value drops the CRs).
    MARKER_VA=$(console_value 's/^XENPTE-MARKER va=\(0x[0-9a-f]*\) .*/\1/p')
    TEXT_VA=$(console_value 's/^XENPTE-KALLSYMS \([0-9a-f]*\) T _text$/0x\1/p')
    xenctx -m "$MARKER_VA" -l 16 "$DOMID" 0 > "/out/${1}xenctx-marker.txt" 2>&1
    xenctx -m "$TEXT_VA" -l 16 "$DOMID" 0 > "/out/${1}xenctx-text.txt" 2>&1
    run xl dump-core "$DOMID" "/out/${1}paused.core"
    xenctx -a "$DOMID" 0 > "/out/${1}xenctx-paused-after.txt" 2>&1
    echo "$DOMID" > "/out/${1}domid"
    cp "$CONSOLE" "/out/${1}domu-console.log"
}

start_domu "$DOMU_NAME" /etc/xen/domu.cfg
xl info > /out/xl-info.txt 2>&1
xenctx --help > /out/xenctx-help.txt 2>&1
run xl list -l > /out/xl-list-l.json
# One pCPU, and the domU spins: give dom0 nearly all of it while both want it (the running dump
# took 24 s instead of 11 at equal weights); the domU still runs between dom0's bursts.
run xl sched-credit2 -d Domain-0 -w 65535
run xl dump-core "$DOMID" /out/running.core
run xl pause "$DOMID"
paused_dump ""
xl list > /out/xl-list.txt 2>&1
run xl destroy "$DOMID"

if [ -n "$PVH_NAME" ]; then
    # The same kernel and initramfs as a PVH guest: an HVM container (Xen uses SVM+NPT, which
    # QEMU TCG offers), so xl dump-core writes the HVM format (.xen_pfn, guest-physical CR3).
    # Slow: that dump takes ~200 s here (the PV ones ~10 s), so only on request.
    start_domu "$PVH_NAME" /etc/xen/pvh.cfg
    run xl list -l > /out/pvh-xl-list-l.json
    run xl pause "$DOMID"
    paused_dump pvh-
    run xl destroy "$DOMID"
fi
xl dmesg > /out/xl-dmesg.txt 2>&1

wait_for 30 test -b "$DISK"
say "writing results to $DISK"
(cd /out && tar -cf "$DISK" .) || fail "tar to $DISK"
sync
ls -l /out
say "results written"
echo "XENPTE-DUMPCORE-DONE"
while true; do sleep 60; done

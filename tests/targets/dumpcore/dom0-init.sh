#!/bin/sh
# /init of dom0: bring up the Xen toolstack, create a PV domU, xl dump-core it (running, then
# paused), and write everything as a tar onto the second virtio disk for the host.
# /etc/xenpte.conf (written by tests/targets/xl_dumpcore.py) sets DOMU_NAME, XEN_BIN, DISK.
/bin/busybox --install -s /bin
. /etc/xenpte.conf
export PATH=$XEN_BIN:/usr/bin:/bin:/sbin LD_LIBRARY_PATH=/lib/x86_64-linux-gnu

# Each step with dom0 uptime in seconds: where the generator's time goes.
say() { echo "XENPTE-STEP $(cut -d" " -f1 /proc/uptime) $*" >&2; }
fail() {
    exec >/dev/console 2>&1   # even when called inside a redirected command
    echo "XENPTE-DUMPCORE-FAILED: $*"
    for f in /var/log/xen/xl-*.log /var/log/xen/console/*.log; do
        [ -f "$f" ] && { echo "--- $f"; tail -n 40 "$f"; }
    done
    dmesg | tail -n 30
    while true; do sleep 60; done
}
run() { say "$*"; "$@" || fail "$* (exit $?)"; }
# Poll until "$@" succeeds, for at most $1 seconds (each try forks: slow under TCG, so time it).
wait_for() {
    end=$(($(date +%s) + $1)); shift
    while ! "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt $end ] || fail "timed out waiting for: $*"
        sleep 0.2
    done
}
# Succeeds once the domU printed its marker; fails the run at once if the domU died first.
domu_marker() {
    grep -q -e 'Kernel panic' -e 'Attempted to kill init' "$CONSOLE" 2>/dev/null &&
        fail "the domU died before printing its marker"
    grep -q XENPTE-MARKER "$CONSOLE"
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# xenconsoled opens a pty per guest console: without devpts, xl create fails "Failed to create tty".
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
for d in /run /var/lib /var/log /tmp; do mkdir -p $d && mount -t tmpfs tmpfs $d; done
# Both dumps (each a bit over the domU's memory) wait here for the tar: above tmpfs's 50% default.
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
run xl create /etc/xen/domu.cfg
CONSOLE=/var/log/xen/console/guest-$DOMU_NAME.log
say "waiting for the domU marker"
wait_for 180 domu_marker
DOMID=$(xl domid "$DOMU_NAME") || fail "xl domid"
say "domU $DOMID is up"
cat "$CONSOLE"

xl info > /out/xl-info.txt 2>&1
run xl list -l > /out/xl-list-l.json
# One pCPU, and the domU spins: give dom0 nearly all of it while both want it (the running dump
# took 24 s instead of 11 at equal weights); the domU still runs between dom0's bursts.
run xl sched-credit2 -d Domain-0 -w 65535
run xl dump-core "$DOMID" /out/running.core
run xl pause "$DOMID"
# Paused: the vCPU context xenctx reads is the one the next dump stores.
xenctx --help > /out/xenctx-help.txt 2>&1
xenctx -a "$DOMID" 0 > /out/xenctx-paused.txt 2>&1 || say "xenctx failed (exit $?)"
# Memory as libxc's own page walk sees it (xc_translate_foreign_address), for the tests to compare
# with our walk: the marker page and the start of the kernel text, by guest VA.
# xenconsoled's log keeps the guest's CR LF line ends.
MARKER_VA=$(tr -d '\r' < "$CONSOLE" | sed -n 's/^XENPTE-MARKER va=\(0x[0-9a-f]*\) .*/\1/p')
TEXT_VA=$(tr -d '\r' < "$CONSOLE" | sed -n 's/^XENPTE-KALLSYMS \([0-9a-f]*\) T _text$/0x\1/p')
# -m VA: 16 lines of 32 bytes from VA (-d is clipped to the page above the stack pointer).
xenctx -m "$MARKER_VA" -l 16 "$DOMID" 0 > /out/xenctx-marker.txt 2>&1
xenctx -m "$TEXT_VA" -l 16 "$DOMID" 0 > /out/xenctx-text.txt 2>&1
run xl dump-core "$DOMID" /out/paused.core
xenctx -a "$DOMID" 0 > /out/xenctx-paused-after.txt 2>&1
xl list > /out/xl-list.txt 2>&1
echo "$DOMID" > /out/domid
cp "$CONSOLE" /out/domu-console.log
xl dmesg > /out/xl-dmesg.txt 2>&1
run xl destroy "$DOMID"

wait_for 30 test -b "$DISK"
say "writing results to $DISK"
(cd /out && tar -cf "$DISK" .) || fail "tar to $DISK"
sync
ls -l /out
say "results written"
echo "XENPTE-DUMPCORE-DONE"
while true; do sleep 60; done

#!/bin/sh
# /init of dom0 for the crashed-host target: bring up the toolstack, load the crash kernel into
# Xen (kexec -p), start two PV domUs (one left paused, one running), record what Xen and its
# tools say about them, write that as a tar onto the second virtio disk, then crash Xen with
# `xl debug-keys C`. /etc/xenpte.conf (written by tests/targets/xen_crash.py) sets XEN_BIN,
# RESULTS_DISK, CRASH_APPEND, DOMAINS ("tag:name:state" words in creation order; state "paused":
# paused once its marker is up), DUMPCORE (the tags to `xl dump-core` while paused) and MODE:
# "crash" as above, or "live" (tests/targets/xen_live.py): no crash kernel; after the results are
# written, print XENPTE-XENLIVE-READY and idle, so the host can be stopped under gdb as it runs.
/bin/busybox --install -s /bin
. /etc/xenpte.conf
export PATH=$XEN_BIN:/usr/bin:/bin:/sbin:/usr/sbin LD_LIBRARY_PATH=/lib/x86_64-linux-gnu

say() { read -r up _ < /proc/uptime; echo "XENPTE-STEP $up $*" >&2; }
fail() {
    exec >/dev/console 2>&1
    echo "XENPTE-XENCRASH-FAILED: $*"
    for f in /var/log/xen/xl-*.log /var/log/xen/console/*.log; do
        [ -f "$f" ] && { echo "--- $f"; tail -n 60 "$f"; }
    done
    dmesg | tail -n 30
    while true; do sleep 60; done
}
# Run a step; fail the run if it fails. A SIGSEGV (exit 139) is retried: busybox applets now and
# then die of one in PV guests under QEMU TCG.
run() {
    say "$*"
    for try in 1 2 3; do
        "$@" && return 0
        rc=$?; [ $rc -eq 139 ] || break
    done
    fail "$* (exit $rc)"
}
wait_for() {
    read -r up _ < /proc/uptime; end=$((${up%.*} + $1)); shift
    while ! "$@" >/dev/null 2>&1; do
        read -r up _ < /proc/uptime
        [ "${up%.*}" -lt $end ] || fail "timed out waiting for: $*"
        sleep 0.2
    done
}
# Succeeds once domU $1 printed its marker; fails the run at once if it died first.
domu_marker() {
    log=/var/log/xen/console/guest-$1.log
    grep -q -e 'Kernel panic' -e 'Attempted to kill init' "$log" 2>/dev/null &&
        fail "$1 died before printing its marker"
    grep -q 'has shut down' "/var/log/xen/xl-$1.log" 2>/dev/null &&
        fail "$1 shut down or crashed before printing its marker"
    grep -q XENPTE-XENCRASH-MARKER "$log"
}
marker_va() {
    for try in 1 2 3 4 5; do
        va=$(tr -d '\r' < "/var/log/xen/console/guest-$1.log" |
             sed -n 's/^XENPTE-XENCRASH-MARKER .* va=\(0x[0-9a-f]*\) .*/\1/p' | head -n 1)
        [ -n "$va" ] && { echo "$va"; return 0; }
    done
    fail "no marker VA in the console log of $1"
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
for d in /run /var/lib /var/log /tmp /out; do mkdir -p $d && mount -t tmpfs tmpfs $d; done
mkdir -p /run/lock /run/xen /run/xenstored /var/lib/xen /var/lib/xenstored /var/log/xen/console
ln -sf /run /var/run
ln -sf /run/lock /var/lock

while read -r ko; do run insmod "$ko"; done < /etc/xenpte-modules.txt
run mount -t xenfs xenfs /proc/xen

# The crash kernel goes into the region Xen reserved (crashkernel=); kexec-tools talks to Xen
# through libxenctrl (it sees /proc/xen/capabilities say control_d).
if [ "$MODE" != live ]; then
    say "kexec -p: $CRASH_APPEND"
    kexec -p /boot/vmlinuz --initrd=/boot/crash-initrd.cpio.gz --append="$CRASH_APPEND" \
        > /out/kexec-load.txt 2>&1 || { cat /out/kexec-load.txt; fail "kexec -p (exit $?)"; }
fi

run oxenstored --pid-file /run/xen/xenstored.pid
wait_for 30 xenstore-read /
run xen-init-dom0
run xenconsoled --log=guest --log-dir=/var/log/xen/console --pid-file=/run/xen/xenconsoled.pid

# "tag:name:state" -> $tag $name $state
split() { tag=${1%%:*} rest=${1#*:}; name=${rest%%:*} state=${rest#*:}; }
# Wait for the marker of $name, note its domid, pause it if its state says so.
settle() {
    say "waiting for the marker of $name"
    wait_for 480 domu_marker "$name"  # a PVH domU under TCG SVM boots slowly
    domid=$(xl domid "$name") || fail "xl domid $name"
    echo "$domid" > "/out/$tag-domid"
    say "$name is domain $domid"
    [ "$state" = paused ] && run xl pause "$domid"
}
# crash: one domU at a time; live: every `xl create` first (dom0's work overlaps the first
# domU's boot), then each marker in creation order.
for entry in $DOMAINS; do
    split "$entry"
    run xl create "/etc/xen/$tag.cfg"
    [ "$MODE" = live ] || settle
done
if [ "$MODE" = live ]; then
    for entry in $DOMAINS; do split "$entry"; settle; done
fi

# Xen's and libxc's views of every domU, taken before the crash: the vCPU context (xenctx -a:
# XEN_DOMCTL_getvcpucontext), 512 bytes at the marker VA through libxc's own page walk, the p2m
# with page types (pinned L4s) from xen-mfndump.
for entry in $DOMAINS; do
    split "$entry"
    domid=$(cat "/out/$tag-domid")
    va=$(marker_va "$name")
    xenctx -a "$domid" 0 > "/out/$tag-xenctx.txt" 2>&1 || say "xenctx $domid failed (exit $?)"
    xenctx -m "$va" -l 16 "$domid" 0 > "/out/$tag-xenctx-marker.txt" 2>&1
    # (PV only: xen-mfndump maps the PV meminfo; it fails on a PVH domU)
    xen-mfndump dump-p2m "$domid" > "/out/$tag-p2m.txt" 2>&1 || say "xen-mfndump $domid failed"
    cp "/var/log/xen/console/guest-$name.log" "/out/$tag-console.log"
done
# The paused domU as the toolstack saves it: its vCPU context there holds both L4s (ctrlreg[3]
# kernel, ctrlreg[1] user), which xenctx does not print.
for tag in $DUMPCORE; do
    run xl dump-core "$(cat "/out/$tag-domid")" "/out/$tag.core"
done
xl list > /out/xl-list.txt 2>&1
xl list -l > /out/xl-list-l.json 2>&1
xl vcpu-list > /out/xl-vcpu-list.txt 2>&1
xl info > /out/xl-info.txt 2>&1
# Xen's own per-pCPU ('d': registers, CR3 of what each pCPU runs) and per-domain ('q': vCPU ->
# pCPU, pause counts) dumps, just before the crash; the ring is cleared first so the file holds
# only them.
xl dmesg -c > /out/xl-dmesg-boot.txt 2>&1
run xl debug-keys d
run xl debug-keys q
sleep 1
xl dmesg > /out/xl-debug-keys.txt 2>&1
# The running domU again: it must still be in its marker process (same kernel L4) at the crash.
for entry in $DOMAINS; do
    split "$entry"
    [ "$state" = running ] &&
        xenctx -a "$(cat "/out/$tag-domid")" 0 > "/out/$tag-xenctx-late.txt" 2>&1
done

say "writing results to $RESULTS_DISK"
wait_for 30 test -b "$RESULTS_DISK"
(cd /out && tar -cf "$RESULTS_DISK" .) || fail "tar to $RESULTS_DISK"
sync
say "results written"
if [ "$MODE" = live ]; then
    echo "XENPTE-XENLIVE-READY"
    while true; do sleep 60; done
fi
echo "XENPTE-XENCRASH-TRIGGER"
xl debug-keys C
sleep 10
fail "Xen is still running 10 s after 'xl debug-keys C' (no crash kernel loaded?)"

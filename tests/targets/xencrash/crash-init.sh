#!/bin/sh
# /init of the crash kernel (booted by Xen's kexec_crash): copy /proc/vmcore, the ELF core
# kexec-tools built from Xen's memory ranges, byte for byte onto the first virtio disk.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { read -r up _ < /proc/uptime; echo "XENPTE-CRASH-STEP $up $*"; }
fail() { echo "XENPTE-VMCORE-FAILED: $*"; dmesg | tail -n 30; poweroff -f; }
say "crash kernel up: $(cat /proc/cmdline)"
while read -r ko; do insmod "$ko" || fail "insmod $ko"; done < /etc/xenpte-modules.txt
n=0
until [ -b /dev/vda ]; do n=$((n + 1)); [ $n -lt 100 ] || fail "no /dev/vda"; sleep 0.1; done
[ -r /proc/vmcore ] || fail "no /proc/vmcore"
size=$(stat -c %s /proc/vmcore)
say "copying /proc/vmcore ($size bytes) to /dev/vda"
dd if=/proc/vmcore of=/dev/vda bs=1M 2>/tmp/dd.log || fail "dd: $(cat /tmp/dd.log)"
sync
say "copied: $(tail -n 1 /tmp/dd.log)"
echo "XENPTE-VMCORE-DONE size=$size"
poweroff -f

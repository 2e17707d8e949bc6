#!/bin/sh
# /init of the PV domU: report what the kernel says about itself, then become the marker process.
# Everything goes to hvc0, which xenconsoled in dom0 logs to a file the dom0 script reads.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "XENPTE-DOMU-UNAME $(uname -r)"
# Kernel text range as the domU's own kernel reports it (root sees real addresses). Retried:
# busybox applets now and then die of SIGSEGV in PV guests under QEMU TCG (seen in dom0 and domU).
n=0
until syms=$(grep -E ' (_text|_stext|_etext)$' /proc/kallsyms) && [ -n "$syms" ]; do
    n=$((n + 1)); [ $n -lt 10 ] || break
done
echo "$syms" | while read -r addr kind name; do echo "XENPTE-KALLSYMS $addr $kind $name"; done
echo "XENPTE-DOMU-MEMINFO $(grep MemTotal /proc/meminfo)"
# exec: the marker becomes PID 1 and the only runnable user process (see marker.c).
exec /marker

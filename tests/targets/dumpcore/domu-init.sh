#!/bin/sh
# /init of the PV domU: report what the kernel says about itself, then become the marker process.
# Everything goes to hvc0, which xenconsoled in dom0 logs to a file the dom0 script reads.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "XENPTE-DOMU-UNAME $(uname -r)"
# Kernel text range as the domU's own kernel reports it (root sees real addresses).
grep -E ' (_text|_stext|_etext)$' /proc/kallsyms | sed 's/^/XENPTE-KALLSYMS /'
echo "XENPTE-DOMU-MEMINFO $(grep MemTotal /proc/meminfo)"
# exec: the marker becomes PID 1 and the only runnable user process (see marker.c).
exec /marker

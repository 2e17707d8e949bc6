#!/bin/sh
# /init of a PV domU of the crashed-host target: become the marker process, named by the tag
# the domU got on its kernel command line (xenpte_tag=...). Output goes to hvc0, which
# xenconsoled in dom0 logs to a file the dom0 script reads.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
tag=none
for word in $(cat /proc/cmdline); do
    case "$word" in xenpte_tag=*) tag=${word#xenpte_tag=} ;; esac
done
echo "XENPTE-DOMU-UNAME $(uname -r) tag=$tag"
# exec: the marker becomes PID 1 and the only runnable user process.
exec /marker "$tag"

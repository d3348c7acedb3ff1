#!/bin/sh
# What the driver step reads of a host before it acts: the running kernel, NVIDIA's
# PCI devices (vendor 0x10de, from sysfs: no pciutils needed on a fresh server) with
# their device id and class, and the packages apt holds.
# nvidia-host.sh
# Exit: 0 always; prints kernel=, pci=SLOT DEVICE CLASS and held=PACKAGE lines.
printf 'kernel=%s\n' "$(uname -r)"
for dev in /sys/bus/pci/devices/*; do
    [ -r "$dev/vendor" ] || continue
    [ "$(cat "$dev/vendor")" = 0x10de ] || continue
    printf 'pci=%s %s %s\n' "${dev##*/}" "$(cat "$dev/device")" "$(cat "$dev/class")"
done
if command -v apt-mark >/dev/null 2>&1; then
    apt-mark showhold 2>/dev/null | sed 's/^/held=/'
fi
exit 0

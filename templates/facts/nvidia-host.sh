#!/bin/sh
# What the driver step reads of a host before it acts: the running kernel, NVIDIA's
# PCI devices (vendor 0x10de, from sysfs: no pciutils needed on a fresh server) with
# their device id and class, and the packages held (dpkg's selection `hold`, which is
# what `apt-mark hold` sets and `apt-mark showhold` lists).
# A server has a few hundred PCI devices: each is read with the shell's own `read`, not a
# process per file.
# nvidia-host.sh
# Exit: 0 always; prints kernel=, pci=SLOT DEVICE CLASS and held=PACKAGE lines.
printf 'kernel=%s\n' "$(uname -r)"
for dev in /sys/bus/pci/devices/*; do
    vendor='' device='' class=''
    read -r vendor 2>/dev/null <"$dev/vendor"  # a last line without newline: still read
    [ "$vendor" = 0x10de ] || continue
    read -r device 2>/dev/null <"$dev/device"
    read -r class 2>/dev/null <"$dev/class"
    printf 'pci=%s %s %s\n' "${dev##*/}" "$device" "$class"
done
if command -v dpkg-query >/dev/null 2>&1; then
    # shellcheck disable=SC2016  # ${...} are dpkg-query's fields, not the shell's
    # the pattern '*': without one dpkg-query leaves out packages not installed, held or not
    dpkg-query -W -f='${Status} ${Package}\n' '*' 2>/dev/null |
        sed -n 's/^hold [^ ]* [^ ]* /held=/p'
fi
exit 0

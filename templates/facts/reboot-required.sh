#!/bin/sh
# What says a host must reboot to run what is installed: Debian's and Ubuntu's flag file
# (/run/reboot-required, written by the kernel's postinst hooks of unattended-upgrades on
# Debian and of update-notifier-common on Ubuntu, and by packages that need it; the
# packages that asked in /run/reboot-required.pkgs), the kernels installed beside the
# running one, the NVIDIA module loaded against the userspace driver installed, and the
# kernels that have an NVIDIA module to boot into. Changes nothing on the host.
# reboot-required.sh
# Exit: 0 always; prints running=KERNEL, kernel=KERNEL per installed kernel
# (/boot/vmlinuz-*), module=KERNEL per kernel with an nvidia.ko under /lib/modules,
# flag=yes and pkg=PACKAGE lines, loaded=VERSION (the module's, from
# /proc/driver/nvidia/version or /sys/module/nvidia/version), library=VERSION (the
# libnvidia-ml.so.1 installed), smi_rc=N and smi=FIRST LINE (nvidia-smi's answer).
printf 'running=%s\n' "$(uname -r)"
for image in /boot/vmlinuz-*; do
    [ -e "$image" ] || continue
    printf 'kernel=%s\n' "${image#/boot/vmlinuz-}"
done
for dir in /lib/modules/*; do
    [ -d "$dir" ] || continue
    if [ -n "$(find "$dir" -name 'nvidia.ko*' -print 2>/dev/null | head -n 1)" ]; then
        printf 'module=%s\n' "${dir#/lib/modules/}"
    fi
done
for run in /run /var/run; do
    if [ -e "$run/reboot-required" ]; then
        echo flag=yes
        [ -r "$run/reboot-required.pkgs" ] && sed -n 's/^\(..*\)$/pkg=\1/p' \
            "$run/reboot-required.pkgs"
        break
    fi
done
loaded=""
if [ -r /proc/driver/nvidia/version ]; then
    # "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build ..."
    loaded=$(awk 'NR == 1 { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\.[0-9.]+$/) {
        print $i; exit } }' /proc/driver/nvidia/version)
fi
if [ -z "$loaded" ] && [ -r /sys/module/nvidia/version ]; then
    loaded=$(cat /sys/module/nvidia/version)
fi
[ -z "$loaded" ] || printf 'loaded=%s\n' "$loaded"
library=$(ldconfig -p 2>/dev/null | sed -n 's/.*libnvidia-ml\.so\.1 .*=> //p' | head -n 1)
if [ -n "$library" ]; then
    real=$(readlink -f "$library" 2>/dev/null)
    case "$real" in
        *libnvidia-ml.so.[0-9]*) printf 'library=%s\n' "${real##*libnvidia-ml.so.}" ;;
    esac
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    out=$(timeout 20 nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>&1)
    printf 'smi_rc=%s\n' "$?"
    printf 'smi=%s\n' "$(printf '%s\n' "$out" | head -n 1)"
fi
exit 0

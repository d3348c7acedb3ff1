#!/bin/sh
# Enable NVIDIA Fabric Manager and start it. A Fabric Manager that will not start stops
# the host here, named: without it CUDA does not initialise on the board, Docker waits
# for it at every boot (ollama-fleet-gpu-ready) and each GPU instance for its fabric.
# On an NVLink 5 board (HGX B100/B200/B300) its start also runs the NVLink Subnet Manager,
# which needs ib_umad loaded (upstream's nvidia-fabricmanager-start.sh refuses otherwise:
# 'Kernel module "ib_umad" has not been loaded, fabric manager cannot be started'):
# MODULES not loaded are loaded first (at later boots /etc/modules-load.d loads them); a
# running kernel that has no such module, or a module that will not load, stops the host
# here with one line naming it, and the package that ships it where one is given.
# fabricmanager.sh [-p PACKAGE] UNIT [MODULE...]
#   PACKAGE the package that ships MODULEs for a kernel, named `PACKAGE-$(uname -r)`
#           (Ubuntu: linux-modules-extra); absent: the kernel's own package ships them
#   UNIT    the systemd unit (nvidia-fabricmanager)
#   MODULE  kernel modules it needs loaded (ib_umad)
# Exit: 0 running; 1 a module the running kernel lacks or that would not load, the unit
# cannot be enabled (not installed) or did not start (why on stderr).
set -u
package=
if [ "${1:-}" = "-p" ]; then
    package=$2
    shift 2
fi
unit=$1
shift
kernel=$(uname -r)
ships=
if [ -n "$package" ]; then
    ships="; it ships in $package-$kernel (apt-get install $package-$kernel)"
fi
for module in "$@"; do
    [ -d "/sys/module/$module" ] && continue
    if ! modinfo "$module" >/dev/null 2>&1; then
        echo "$module: the running kernel $kernel has no such module (modinfo $module)$ships; $unit cannot start on this NVLink 5 board without it loaded" >&2
        exit 1
    fi
    if ! why=$(modprobe "$module" 2>&1 >/dev/null); then
        why=$(printf '%s' "$why" | tr '\n' ' ' | sed 's/ *$//')
        echo "$module: the kernel module did not load (modprobe $module${why:+: $why})$ships; $unit cannot start without it" >&2
        exit 1
    fi
done
systemctl enable "$unit" || exit 1
if ! systemctl start "$unit"; then
    echo "$unit did not start ($(systemctl show -p Result --value "$unit" 2>/dev/null)): CUDA does not initialise on this NVSwitch board without it; see \`journalctl -u $unit\`" >&2
    exit 1
fi
exit 0

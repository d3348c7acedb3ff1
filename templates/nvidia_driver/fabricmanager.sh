#!/bin/sh
# Enable NVIDIA Fabric Manager and start it. A Fabric Manager that will not start stops
# the host here, named: without it CUDA does not initialise on the board, Docker waits
# for it at every boot (ollama-fleet-gpu-ready) and each GPU instance for its fabric.
# On an NVLink 5 board (HGX B100/B200/B300) its start also runs the NVLink Subnet Manager,
# which needs ib_umad loaded: MODULES the kernel has and has not loaded are loaded first
# (at later boots /etc/modules-load.d loads them); a kernel without one leaves Fabric
# Manager to say what is missing.
# fabricmanager.sh UNIT [MODULE...]
#   UNIT    the systemd unit (nvidia-fabricmanager)
#   MODULE  kernel modules it needs loaded (ib_umad)
# Exit: 0 running; 1 a module the kernel has would not load, the unit cannot be enabled
# (not installed) or did not start (why on stderr).
set -u
unit=$1
shift
for module in "$@"; do
    if [ ! -d "/sys/module/$module" ] && modinfo "$module" >/dev/null 2>&1; then
        if ! modprobe "$module"; then
            echo "$module: the kernel module did not load (modprobe $module); $unit cannot start without it" >&2
            exit 1
        fi
    fi
done
systemctl enable "$unit" || exit 1
if ! systemctl start "$unit"; then
    echo "$unit did not start ($(systemctl show -p Result --value "$unit" 2>/dev/null)): CUDA does not initialise on this NVSwitch board without it; see \`journalctl -u $unit\`" >&2
    exit 1
fi
exit 0

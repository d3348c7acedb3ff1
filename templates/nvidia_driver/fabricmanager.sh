#!/bin/sh
# Enable NVIDIA Fabric Manager and start it. A Fabric Manager that will not start stops
# the host here, named: without it CUDA does not initialise on the board, Docker waits
# for it at every boot (ollama-fleet-gpu-ready) and each GPU instance for its fabric.
# fabricmanager.sh UNIT
#   UNIT  the systemd unit (nvidia-fabricmanager)
# Exit: 0 running; 1 it cannot be enabled (not installed) or did not start (why on
# stderr).
set -u
unit=$1
systemctl enable "$unit" || exit 1
if ! systemctl start "$unit"; then
    echo "$unit did not start ($(systemctl show -p Result --value "$unit" 2>/dev/null)): CUDA does not initialise on this NVSwitch board without it; see \`journalctl -u $unit\`" >&2
    exit 1
fi
exit 0

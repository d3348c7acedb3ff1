#!/bin/sh
# Enable NVIDIA Fabric Manager and start it. A Fabric Manager that will not start does
# not stop the deploy here: CUDA then fails to initialise on the board, and the GPU
# inference proof after the stack is up fails the host naming Fabric Manager as the cause
# (with the instance and GPU that run on the CPU), where the operator looks.
# fabricmanager.sh UNIT
#   UNIT  the systemd unit (nvidia-fabricmanager)
# Exit: 0 (a failed start is reported on stderr); non-zero only if the unit cannot be
# enabled (not installed).
set -u
unit=$1
systemctl enable "$unit" || exit 1
if ! systemctl start "$unit"; then
    echo "$unit did not start: $(systemctl show -p Result --value "$unit" 2>/dev/null); CUDA will not initialise on this NVSwitch board" >&2
fi
exit 0

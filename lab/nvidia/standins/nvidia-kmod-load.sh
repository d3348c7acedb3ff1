#!/bin/sh
# Fleet lab simulation of the NVIDIA kernel module being loaded at boot (there is no
# real driver or GPU here). Run by fleetlab-nvidia-kmod.service; creates the marker
# /run/fleetlab/nvidia-driver-loaded holding the version of the "loaded module".
# Like modprobe: a module that is already loaded stays as it is, and without a GPU
# the module does not load. Paths are prefixed with $FLEETLAB_ROOT (default /).
set -e
R="${FLEETLAB_ROOT:-/}"
R="${R%/}"
VERSION="@FLEETLAB_DRIVER_VERSION@"
MARKER="$R/run/fleetlab/nvidia-driver-loaded"
GPUS="$R/etc/fleetlab/gpus.json"

if [ -e "$MARKER" ]; then
    echo "fleetlab: NVIDIA kernel module $(cat "$MARKER") already loaded"
    exit 0
fi
if [ ! -s "$GPUS" ] || ! grep -q '"uuid"' "$GPUS"; then
    echo "NVRM: No NVIDIA GPU found. (fleet lab: $GPUS lists no GPU; module not loaded)" >&2
    exit 0
fi
mkdir -p "$R/run/fleetlab"
printf '%s\n' "$VERSION" > "$MARKER.tmp"
mv "$MARKER.tmp" "$MARKER"
echo "fleetlab: NVIDIA kernel module $VERSION loaded (simulated)"

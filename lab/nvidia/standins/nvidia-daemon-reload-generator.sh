#!/bin/sh
# Fleet lab stand-in (package @PACKAGE@, not NVIDIA software): a systemd generator,
# installed as /usr/lib/systemd/system-generators/fleetlab-nvidia-daemon-reload. It
# generates no unit: systemd runs every generator at boot and at every
# `systemctl daemon-reload` (and daemon-reexec), which makes it the one place that sees a
# reload. A reload re-applies the cgroup settings systemd knows for every unit, the
# containers' scopes too, and so takes away a container's access to device nodes that
# nvidia-container-cli allowed behind runc's back (NVIDIA/nvidia-container-toolkit#48).
# At a reload it leaves a file in /run/fleetlab/daemon-reloads and runs
# nvidia-device-cgroup-reset, which marks the containers affected, before the reload
# ends, as systemd cuts them during the reload itself. systemd 257 runs generators in a
# mount namespace where / is read-only but /run (checked on a lab host: Debian 13), so
# the reset runs in PID 1's mount namespace (nsenter), where the containers' root file
# systems are writable. Should that fail, fleetlab-nvidia-device-cgroup.path starts it
# once the reload is done (the file is still there then).
# At boot (/run empty: it is a tmpfs) no container runs yet: it only notes that it ran.
# Every path is prefixed with $FLEETLAB_ROOT (tests only: they run the reset themselves).
root=${FLEETLAB_ROOT:-}
state="$root/run/fleetlab"
mkdir -p "$state/daemon-reloads" 2>/dev/null || exit 0
if [ ! -e "$state/systemd-generator-ran" ]; then
    : >"$state/systemd-generator-ran" 2>/dev/null
    exit 0
fi
: >"$state/daemon-reloads/$(date +%s).$$" 2>/dev/null
if [ -z "$root" ] && [ -r /proc/1/ns/mnt ] && command -v nsenter >/dev/null 2>&1; then
    nsenter --mount=/proc/1/ns/mnt -- /usr/lib/fleetlab/nvidia-device-cgroup-reset \
        >/dev/null 2>&1 || true
fi
exit 0

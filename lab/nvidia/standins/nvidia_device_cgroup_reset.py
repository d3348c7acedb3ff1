#!/usr/bin/python3
# Fleet lab stand-in (package @PACKAGE@, not NVIDIA software): what a
# `systemctl daemon-reload` does to running GPU containers. Installed as
# /usr/lib/fleetlab/nvidia-device-cgroup-reset and run by
# fleetlab-nvidia-device-cgroup.service once the toolkit's generator has seen a reload
# (a file in /run/fleetlab/daemon-reloads, which it consumes).
#
# With Docker's systemd cgroup driver, systemd owns each container's scope and re-applies
# the device rules it knows at every reload. The device nodes nvidia-container-cli
# allowed from the prestart hook (Docker's `--gpus`, Compose `driver: nvidia`, or the
# NVIDIA runtime in legacy mode) are not among them: the container loses them, and NVML
# there fails with "Failed to initialize NVML: Unknown Error" until the container is
# restarted (the hook runs again). Devices the runtime injected as CDI edits (jit-cdi,
# cdi) are in the container's config, so runc told systemd about them: they stay, unless
# runc is 1.1.3 to 1.1.6, which left out of systemd's rules every device without a
# /dev/char/MAJOR:MINOR link (opencontainers/runc#3708, fixed in 1.1.7).
# (NVIDIA/nvidia-container-toolkit#48 and its troubleshooting guide.)
#
# The cgroup driver is read from /etc/docker/daemon.json: systemd unless "exec-opts" sets
# native.cgroupdriver=cgroupfs. (Docker picks cgroupfs by itself on a cgroup v1 host such
# as the lab's VM, systemd on cgroup v2 as production hosts run: the lab takes the
# production default, so that it never looks safer than production.)
# Every path is prefixed with $FLEETLAB_ROOT.
import datetime
import json
import os
import re
import shutil
import subprocess
import sys

# fleetlab:common-begin
from fleetlab_common import (
    DAEMON_JSON,
    DAEMON_RELOADS,
    gpu_containers,
    host_path,
    read_text,
    update_live,
)

# fleetlab:common-end

LOG_FILE = "/var/log/fleetlab-nvidia-device-cgroup.log"
NVIDIACTL_CHAR = "/dev/char/195:255"


def consume_reloads():
    """The reloads seen since the last run (their files removed)."""
    directory = host_path(DAEMON_RELOADS)
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    for name in names:
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass
    return names


def cgroup_driver():
    """Docker's cgroup driver as daemon.json sets it; systemd when it does not."""
    try:
        doc = json.loads(read_text(DAEMON_JSON) or "{}")
    except ValueError:
        doc = {}
    driver = "systemd"
    opts = doc.get("exec-opts") if isinstance(doc, dict) else None
    for opt in opts if isinstance(opts, list) else []:
        key, _, value = str(opt).partition("=")
        if key.strip() == "native.cgroupdriver" and value.strip() in ("cgroupfs", "systemd"):
            driver = value.strip()
    return driver


def runc_version():
    """(major, minor, patch) of the runc on PATH, or None."""
    runc = shutil.which("runc")
    if runc is None:
        return None
    try:
        out = subprocess.run([runc, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"runc version (\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in match.groups()) if match else None


def cut_off(record, driver, runc, dev_char_links):
    """Why the reload takes RECORD's container off its GPUs, or None when it does not."""
    if driver != "systemd":
        return None
    injection = record.get("injection", "legacy-hook")
    if injection == "legacy-hook":
        return ("devices injected by nvidia-container-runtime-hook, unknown to runc and "
                "systemd")
    if runc is not None and (1, 1, 3) <= runc < (1, 1, 7) and not dev_char_links:
        return (f"runc {'.'.join(map(str, runc))} leaves devices without /dev/char links "
                "out of systemd's rules")
    return None


def log(line):
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat()
    sys.stdout.write(line + "\n")
    try:
        path = host_path(LOG_FILE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{stamp} {line}\n")
    except OSError:
        pass


def main(argv):
    if not consume_reloads() and "--force" not in argv:
        return 0
    driver = cgroup_driver()
    runc = runc_version()
    dev_char = os.path.lexists(host_path(NVIDIACTL_CHAR))
    for record in gpu_containers():
        reason = cut_off(record, driver, runc, dev_char)
        name = record.get("container_id", "")[:12]
        if reason is None:
            log(f"daemon-reload: container {name} keeps its GPUs (cgroup driver {driver}, "
                f"injected by {record.get('injection', 'legacy-hook')})")
        elif update_live(record, {"GPU_ACCESS": "lost"}):
            log(f"daemon-reload: container {name} lost its GPUs: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

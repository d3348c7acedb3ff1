#!/usr/bin/python3
# Fleet lab stand-in for nvidia-container-runtime-hook (package nvidia-container-toolkit).
# dockerd runs it as an OCI prestart hook (`nvidia-container-runtime-hook prestart`,
# OCI state JSON on stdin) for containers that request GPUs. Like the real hook it
# reads NVIDIA_VISIBLE_DEVICES from the bundle's config.json and fails the container
# start when the driver is not loaded or a device is unknown. Instead of mounting
# device nodes and driver libraries, it records the assignment in
# /var/lib/fleetlab/gpu-assignments.jsonl and writes into the container's root
# filesystem the simulated view of its GPUs (/etc/fleetlab/gpus.json, the driver
# marker and an nvidia-smi stand-in). Inside the container the GPUs are numbered
# from 0, as NVML numbers the devices a container can see.
#
# It also decides what cuInit will answer in the container, written as
# /etc/fleetlab/cuda.json for the programs there (the Ollama stand-in): on an NVSwitch
# board (HGX/DGX: gpus.json lists NVSwitches, or its GPUs are HGX Blackwell ones whose
# NVSwitches are not on the host's PCI bus) CUDA initialises only while NVIDIA Fabric
# Manager runs; without it cuInit fails with 802 CUDA_ERROR_SYSTEM_NOT_READY ("system
# not yet initialized") although nvidia-smi lists every GPU; on Hopper and later boards
# also while Fabric Manager still brings the fabric up (Fabric State "In Progress"). A
# CUDA program decides at its start, so a fabric ready later helps only containers
# started after it.
#
# The record in gpu-assignments.jsonl names the container's root file system and how the
# devices were injected ("legacy-hook": by this hook, behind runc's back). The host side
# keeps the container's live view in /etc/fleetlab/live.env there: the fabric's state
# (Fabric Manager updates it) and GPU_ACCESS, which the toolkit's daemon-reload stand-in
# (nvidia_device_cgroup_reset.py) sets to "lost" when systemd cuts the container off.
import json
import os
import sys

# fleetlab:common-begin
from fleetlab_common import (
    BAKED_TOOLKIT_VERSION,
    InjectError,
    baked,
    env_map,
    inject_gpus,
    requested_devices,
    runtime_mode,
)

# fleetlab:common-end

# The hook's own mode check (cmd/nvidia-container-runtime-hook, assertModeIsLegacy): it
# resolves "auto" to legacy; any other configured mode means the NVIDIA Container Runtime
# is to inject the devices, and the hook invoked directly refuses.
NOT_LEGACY = ("invoking the NVIDIA Container Runtime Hook directly (e.g. specifying the "
              "docker --gpus flag) is not supported. Please use the NVIDIA Container Runtime "
              "(e.g. specify the --runtime=nvidia flag) instead")

HookError = InjectError


def prestart(stdin):
    try:
        state = json.load(stdin)
    except ValueError as exc:
        raise HookError(f"could not decode container state: {exc}", 2) from None
    bundle = state.get("bundle") or state.get("bundlePath") or os.getcwd()
    try:
        with open(os.path.join(bundle, "config.json"), encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, ValueError) as exc:
        raise HookError(f"could not load OCI spec: {exc}", 2) from None
    if runtime_mode() not in ("auto", "legacy") and requested_devices(env_map(spec)) is not None:
        raise HookError(NOT_LEGACY)
    inject_gpus(spec, bundle, state.get("id", ""), "legacy-hook")
    return 0


USAGE = """Usage of nvidia-container-runtime-hook (fleet lab stand-in):
  -config string
        configuration file
  -debug
        enable debug output

Commands:
  prestart
        run the prestart hook
  poststart
        no-op
  poststop
        no-op
"""


def main(argv):
    version = baked(BAKED_TOOLKIT_VERSION) or "0.0.0-source"
    positional = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.lstrip("-") == "version" and arg.startswith("-"):
            sys.stdout.write(f"NVIDIA Container Runtime Hook version {version}\n"
                             f"commit: fleetlab-standin-{version}\n")
            return 0
        if arg.startswith("-"):
            if arg.lstrip("-") == "config":
                i += 1
        else:
            positional.append(arg)
        i += 1
    if not positional:
        sys.stderr.write(USAGE)
        return 2
    command = positional[0]
    if command in ("poststart", "poststop"):
        return 0
    if command != "prestart":
        sys.stderr.write(USAGE)
        return 2
    try:
        return prestart(sys.stdin)
    except HookError as exc:
        sys.stderr.write(f"{exc}\n")
        return exc.code
    except OSError as exc:
        sys.stderr.write(f"nvidia-container-cli: mount error: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

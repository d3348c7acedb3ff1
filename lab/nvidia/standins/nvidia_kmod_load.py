#!/usr/bin/python3
# Fleet lab simulation of the NVIDIA kernel module being loaded at boot (there is no
# real driver or GPU here). Run by fleetlab-nvidia-kmod.service, shipped by the package
# that ships nvidia-smi. Like modprobe and the kernel:
# - a module that is already loaded stays as it is;
# - no module built by DKMS for the running kernel
#   (/lib/modules/$(uname -r)/updates/dkms/nvidia.ko): modprobe's FATAL, nothing loads;
# - no GPU: NVRM finds none, nothing loads;
# - the proprietary module on a Blackwell GPU: NVRM refuses the GPU (Blackwell requires
#   the open kernel modules), nothing loads;
# - else the module's version is "loaded": /run/fleetlab/nvidia-driver-loaded.
# It exits 0 in every case, as a boot goes on without the driver. Every absolute path
# is prefixed with $FLEETLAB_ROOT (default /).
import os
import sys

# fleetlab:common-begin
from fleetlab_common import (
    DRIVER_MARKER,
    gpu_device_id,
    host_path,
    is_blackwell,
    kernel_release,
    kernel_slot,
    load_gpus,
    loaded_driver_version,
    read_module,
)

# fleetlab:common-end


def main():
    loaded = loaded_driver_version()
    if loaded is not None:
        print(f"fleetlab: NVIDIA kernel module {loaded} already loaded")
        return 0
    kernel = kernel_release()
    module = read_module(kernel)
    if module is None:
        sys.stderr.write(f"modprobe: FATAL: Module nvidia not found in directory "
                         f"/lib/modules/{kernel}\n")
        return 0
    version, flavour = module
    gpus = load_gpus()
    if not gpus:
        sys.stderr.write("NVRM: No NVIDIA GPU found. (fleet lab: /etc/fleetlab/gpus.json "
                         "lists no GPU; module not loaded)\n")
        return 0
    if flavour == "proprietary":
        refused = [g for g in gpus if is_blackwell(gpu_device_id(g))]
        for gpu in refused:
            slot = kernel_slot(gpu.get("pci_bus_id", ""))
            sys.stderr.write(
                f"NVRM: The NVIDIA GPU {slot} (PCI ID: 10de:{gpu_device_id(gpu):04x})\n"
                "NVRM: installed in this system requires use of the NVIDIA open kernel "
                "modules.\n"
                f"NVRM: GPU {slot}: RmInitAdapter failed! (0x22:0x56:884)\n"
                f"NVRM: GPU {slot}: rm_init_adapter failed, device minor number "
                f"{gpu.get('index', 0)}\n")
        if refused:
            sys.stderr.write("fleetlab: NVIDIA kernel module not loaded (proprietary "
                             f"{version} on Blackwell)\n")
            return 0
    marker = host_path(DRIVER_MARKER)
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    with open(marker + ".tmp", "w", encoding="utf-8") as f:
        f.write(f"{version}\n")
    os.replace(marker + ".tmp", marker)
    print(f"fleetlab: NVIDIA kernel module {version} ({flavour}) loaded (simulated)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

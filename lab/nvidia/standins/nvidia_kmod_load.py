#!/usr/bin/python3
# Fleet lab simulation of the NVIDIA kernel module being loaded at boot (there is no
# real driver or GPU here). Run by fleetlab-nvidia-kmod.service, shipped by the package
# that ships nvidia-smi. Like modprobe and the kernel:
# - a module that is already loaded stays as it is;
# - no module built by DKMS for the running kernel
#   (/lib/modules/$(uname -r)/updates/dkms/nvidia.ko): modprobe's FATAL, nothing loads;
# - Secure Boot on (the lab's /etc/fleetlab/secureboot says "enabled"): a module not
#   signed by a certificate enrolled in MOK (/etc/fleetlab/mok-enrolled/, the DER files
#   mokutil's stand-in tests against) is refused as the kernel refuses it: its notice
#   "Loading of unsigned module is rejected" (or "... module with unavailable key ..."),
#   modprobe's "Key was rejected by service", nothing loads;
# - no GPU: NVRM finds none, nothing loads;
# - the proprietary module on a Blackwell GPU: NVRM refuses the GPU (Blackwell requires
#   the open kernel modules), nothing loads;
# - else the module's version is "loaded": /run/fleetlab/nvidia-driver-loaded.
# It exits 0 in every case, as a boot goes on without the driver. Every absolute path
# is prefixed with $FLEETLAB_ROOT (default /).
import hashlib
import os
import sys

# fleetlab:common-begin
from fleetlab_common import (
    DRIVER_MARKER,
    MODULE_FILE,
    gpu_device_id,
    host_path,
    is_blackwell,
    kernel_release,
    kernel_slot,
    load_gpus,
    loaded_driver_version,
    read_module,
    read_text,
)

# fleetlab:common-end

SECUREBOOT = "/etc/fleetlab/secureboot"
MOK_ENROLLED = "/etc/fleetlab/mok-enrolled"


def secure_boot():
    return (read_text(SECUREBOOT) or "").strip() == "enabled"


def enrolled_keys():
    """sha256 of each certificate enrolled in the simulated MOK list."""
    directory = host_path(MOK_ENROLLED)
    found = set()
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        with open(os.path.join(directory, name), "rb") as f:
            found.add(hashlib.sha256(f.read()).hexdigest())
    return found


def module_signer(kernel):
    """The sha256 of the certificate the module was signed with ('' unsigned)."""
    words = (read_text(MODULE_FILE.format(kernel=kernel)) or "").split()
    return words[2] if len(words) > 2 else ""


def refused_by_secure_boot(kernel):
    """The kernel's reason to refuse the module under Secure Boot, or None (kernel/module/
    signing.c module_sig_check with signatures enforced)."""
    if not secure_boot():
        return None
    signer = module_signer(kernel)
    if not signer:
        return "unsigned module"
    if signer not in enrolled_keys():
        return "module with unavailable key"
    return None


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
    reason = refused_by_secure_boot(kernel)
    if reason:
        sys.stderr.write(f"Loading of {reason} is rejected\n"
                         "modprobe: ERROR: could not insert 'nvidia': Key was rejected by "
                         "service\n")
        return 0
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

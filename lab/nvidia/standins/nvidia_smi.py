#!/usr/bin/python3
# Fleet lab stand-in for nvidia-smi (packages cuda-drivers-<branch>, nvidia-open-<branch>,
# nvidia-driver-cuda). There is no GPU
# and no NVIDIA driver here: it reports the simulated GPUs of /etc/fleetlab/gpus.json
# once the simulated kernel module is loaded (/run/fleetlab/nvidia-driver-loaded,
# created at boot by fleetlab-nvidia-kmod.service), and fails like the real tool
# otherwise. Every absolute path is prefixed with $FLEETLAB_ROOT (default /).
#
# The container hook copies it into containers whose image has python3. There it reads
# the host's live state that the host side keeps in /etc/fleetlab/live.env: the fabric's
# state, and whether the container lost access to its GPUs (a `systemctl daemon-reload`
# under Docker's systemd cgroup driver, NVIDIA/nvidia-container-toolkit#48): then every
# command that initialises NVML fails with "Failed to initialize NVML: Unknown Error",
# exit status 255.
#
# GPUs the lab broke (`python -m lab fault`; /run/fleetlab/gpu-faults.json on the host,
# GPU_LOST / GPU_RESET_REQUIRED / GPU_ECC_DBE in a container's live.env): a GPU off the bus
# (Xid 79) has no NVML handle, so every view prints "Unable to determine the device handle
# for GPU0000:3B:00.0: Unknown Error" for it (in place of its line in -L and --query-gpu,
# instead of the whole table or -q) and exits 255, and `-r` cannot reset it; a double-bit
# ECC error (Xid 48) counts in ecc.errors.uncorrected.volatile.total until a GPU reset
# (`-r [-i N]`, refused while a container holds the GPU). memory.used and the process list
# show what the stand-in Ollama's loaded models hold, per process of the GPU containers
# (inside a container: its own; a container sees no other's processes).
import os
import sys

# fleetlab:common-begin
from fleetlab_common import (
    BAKED_DRIVER_VERSION,
    PERSISTENCE_JSON,
    baked,
    canonical_field,
    fabric_from_live,
    fabric_state,
    faults_from_live,
    fleetlab_root,
    gpu_containers,
    gpu_processes,
    gpu_state,
    handle_error_line,
    host_fabric,
    load_gpu_faults,
    load_gpus,
    load_persistence,
    load_usage,
    loaded_driver_version,
    nvml_version,
    own_container_usage,
    publish_gpu_faults,
    read_live,
    render_csv,
    render_full,
    render_list,
    render_table,
    render_version,
    save_gpu_faults,
    write_json,
)

# fleetlab:common-end

NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
             "Make sure that the latest NVIDIA driver is installed and running.\n")
INVALID_ARGS = "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help.\n"
NO_DEVICES = "No devices were found\n"
# NVML_ERROR_UNKNOWN at nvmlInit: what a container cut off its device nodes gets
NVML_UNKNOWN = "Failed to initialize NVML: Unknown Error\n"

HELP = """NVIDIA System Management Interface -- fleet lab stand-in (not the real nvidia-smi)

nvidia-smi [OPTION1 [ARG1]] [OPTION2 [ARG2]] ...

    -h,   --help                Print usage information and exit.
          --version             Print version information and exit.
    -L,   --list-gpus           Display a list of GPUs connected to the system.
    -q,   --query               Display GPU or Unit info.
    -i,   --id=                 Target a specific GPU (index, UUID or PCI bus id).
          --query-gpu=          Information about GPU (fields as the real tool).
          --format=             csv[,noheader][,nounits]
    -pm,  --persistence-mode=   Set persistence mode: 0/DISABLED, 1/ENABLED
    -r,   --gpu-reset           Trigger reset of the GPU (all GPUs without -i).
"""
RESET_IN_USE = ("currently being used by one or more other processes (e.g., "
                "Fabric Manager, CUDA application, graphics application such as an X "
                "server, or a monitoring application such as another instance of "
                "nvidia-smi). Please first kill all processes using this device and all "
                "compute applications running in the system.\n")


class UsageError(Exception):
    pass


def parse(argv):
    opts = {"mode": "table", "ids": None, "query": None, "format": None, "pm": None}
    i = 0

    def value(arg, names):
        nonlocal i
        for name in names:
            if arg.startswith(name + "="):
                return arg[len(name) + 1:]
        i += 1
        if i >= len(argv):
            raise UsageError(arg)
        return argv[i]

    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if arg in ("-L", "--list-gpus"):
            opts["mode"] = "list"
        elif arg == "--version":
            opts["mode"] = "version"
        elif arg in ("-q", "--query"):
            opts["mode"] = "full"
        elif arg in ("-h", "--help"):
            opts["mode"] = "help"
        elif name in ("-i", "--id"):
            opts["ids"] = value(arg, ("-i", "--id"))
        elif name in ("--query-gpu", "-query-gpu"):
            opts["query"] = value(arg, ("--query-gpu", "-query-gpu"))
            opts["mode"] = "query"
        elif name in ("--format", "-format"):
            opts["format"] = value(arg, ("--format", "-format"))
        elif name in ("-pm", "--persistence-mode"):
            opts["pm"] = value(arg, ("-pm", "--persistence-mode"))
            opts["mode"] = "pm"
        elif arg in ("-r", "--gpu-reset"):
            opts["mode"] = "reset"
        else:
            raise UsageError(arg)
        i += 1
    return opts


def select(gpus, ids):
    if ids is None:
        return gpus
    chosen = []
    for token in (t.strip() for t in ids.split(",")):
        for gpu in gpus:
            if token in (str(gpu["index"]), gpu["uuid"]) or \
                    token.upper() == gpu["pci_bus_id"].upper():
                if gpu not in chosen:
                    chosen.append(gpu)
                break
        else:
            return None
    return chosen


def main(argv):
    out = sys.stdout
    try:
        opts = parse(argv)
    except UsageError:
        out.write(INVALID_ARGS)
        return 2
    if opts["mode"] == "help":
        out.write(HELP)
        return 0

    fields = []
    if opts["mode"] == "query":
        fmt = [f.strip() for f in (opts["format"] or "").split(",") if f.strip()]
        if "csv" not in fmt or any(f not in ("csv", "noheader", "nounits") for f in fmt):
            out.write(INVALID_ARGS)
            return 2
        for field in (f.strip() for f in opts["query"].split(",")):
            canonical = canonical_field(field)
            if canonical is None:
                out.write(f'Field "{field}" is not a valid field to query.\n\n')
                return 2
            fields.append(canonical)
    pm_value = None
    if opts["mode"] == "pm":
        pm_value = {"1": True, "ENABLED": True, "0": False, "DISABLED": False}.get(
            opts["pm"].strip().upper())
        if pm_value is None:
            out.write(INVALID_ARGS)
            return 2

    live = read_live()
    if live is not None and live.get("GPU_ACCESS") == "lost":
        out.write(NVML_UNKNOWN)
        return 255
    driver = loaded_driver_version()
    if driver is None:
        out.write(NO_DRIVER)
        return 9
    library = baked(BAKED_DRIVER_VERSION)
    if library is not None and library != driver:
        out.write("Failed to initialize NVML: Driver/library version mismatch\n"
                  f"NVML library version: {nvml_version(library)}\n")
        return 18

    if opts["mode"] == "version":
        out.write(render_version(driver))
        return 0

    gpus = load_gpus()
    chosen = select(gpus, opts["ids"]) if gpus else None
    if not chosen:
        out.write(NO_DEVICES)
        return 6

    faults = load_gpu_faults() if live is None else faults_from_live(live)
    lost = {u for u, f in faults.items() if f["lost"]}
    if opts["mode"] == "reset":
        return reset(out, chosen, live, faults)
    if opts["mode"] not in ("list", "query"):
        for gpu in chosen:
            if gpu["uuid"] in lost:  # no handle: nothing of the table or -q prints
                out.write(handle_error_line(gpu))
                return 255
    persistence = load_persistence()
    if opts["mode"] == "pm":
        if fleetlab_root() == "/" and os.geteuid() != 0:
            for gpu in chosen[:1]:
                out.write(f"Unable to set persistence mode for GPU {gpu['pci_bus_id']}: "
                          "Insufficient Permissions\n")
            out.write("Terminating early due to previous errors.\n")
            return 4
        word = "Enabled" if pm_value else "Disabled"
        for gpu in chosen:
            if bool(persistence.get(gpu["uuid"])) == pm_value:
                out.write(f"Persistence mode is already {word} for GPU {gpu['pci_bus_id']}.\n")
            else:
                persistence[gpu["uuid"]] = pm_value
                out.write(f"{word} persistence mode for GPU {gpu['pci_bus_id']}.\n")
        write_json(PERSISTENCE_JSON, persistence)
        out.write("All done.\n")
        return 0

    failed = 255 if any(g["uuid"] in lost for g in chosen) else 0
    if opts["mode"] == "list":
        out.write(render_list(chosen, lost))
        return failed

    usage = load_usage()
    fabric = fabric_state(host_fabric() if live is None else fabric_from_live(live))
    processes = gpu_processes() if live is None else []
    held = {}
    for proc in processes:
        held[proc["uuid"]] = held.get(proc["uuid"], 0) + proc["used_mib"]
    if live is not None:
        held = own_container_usage()
    states = {g["uuid"]: gpu_state(g, driver, len(gpus), persistence, usage, fabric,
                                   faults, held.get(g["uuid"], 0)) for g in gpus}
    if opts["mode"] == "full":
        out.write(render_full(chosen, states, driver, len(gpus)))
        return 0
    if opts["mode"] == "query":
        fmt = opts["format"].split(",")
        out.write(render_csv(fields, chosen, states, "noheader" in fmt, "nounits" in fmt,
                             lost))
        return failed
    out.write(render_table(chosen, states, driver, processes))
    return 0


def reset(out, chosen, live, faults):
    """`nvidia-smi -r`: a GPU reset clears a double-bit ECC error's pending state and the
    volatile ECC counts. Refused for a GPU off the bus (no handle), while any container
    holds one of the GPUs (its processes have the device open), and without root."""
    if live is not None or (fleetlab_root() == "/" and os.geteuid() != 0):
        out.write(f"Unable to reset GPU {chosen[0]['pci_bus_id']}: Insufficient "
                  "Permissions\nTerminating early due to previous errors.\n")
        return 4
    for gpu in chosen:
        if faults.get(gpu["uuid"], {}).get("lost"):
            out.write(handle_error_line(gpu))
            return 255
    held = {u for r in gpu_containers() for u in r.get("uuids") or []}
    busy = [g for g in chosen if g["uuid"] in held]
    if busy:
        out.write("The following GPUs could not be reset:\n")
        for gpu in busy:
            out.write(f"  GPU {gpu['pci_bus_id']}: In use by another client\n")
        count = f"{len(busy)} device is" if len(busy) == 1 else f"{len(busy)} devices are"
        out.write(f"\n{count} {RESET_IN_USE}")
        return 255
    for gpu in chosen:
        faults.pop(gpu["uuid"], None)
        out.write(f"GPU {gpu['pci_bus_id']} was successfully reset.\n")
    save_gpu_faults(faults)
    publish_gpu_faults()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

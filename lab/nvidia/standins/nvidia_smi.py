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
    fleetlab_root,
    gpu_state,
    host_fabric,
    load_gpus,
    load_persistence,
    load_usage,
    loaded_driver_version,
    nvml_version,
    read_live,
    render_csv,
    render_full,
    render_list,
    render_table,
    render_version,
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
"""


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

    if opts["mode"] == "list":
        out.write(render_list(chosen))
        return 0

    usage = load_usage()
    fabric = fabric_state(host_fabric() if live is None else fabric_from_live(live))
    states = {g["uuid"]: gpu_state(g, driver, len(gpus), persistence, usage, fabric)
              for g in gpus}
    if opts["mode"] == "full":
        out.write(render_full(chosen, states, driver, len(gpus)))
        return 0
    if opts["mode"] == "query":
        fmt = opts["format"].split(",")
        out.write(render_csv(fields, chosen, states, "noheader" in fmt, "nounits" in fmt))
        return 0
    out.write(render_table(chosen, states, driver))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

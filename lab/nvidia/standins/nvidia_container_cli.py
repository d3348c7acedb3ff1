#!/usr/bin/python3
# Fleet lab stand-in for nvidia-container-cli (package libnvidia-container-tools).
# `--version` and `info` on the simulated GPUs; fails like the real tool when the
# driver is missing, not loaded or of another version than its userspace part.
import sys

# fleetlab:common-begin
from fleetlab_common import (
    BAKED_TOOLKIT_VERSION,
    baked,
    cuda_version,
    installed_library_version,
    load_gpus,
    loaded_driver_version,
    model_spec,
    read_text,
)

# fleetlab:common-end

LIBNVIDIA_CONTAINER = "/usr/lib/fleetlab/libnvidia-container.version"
VALUE_OPTIONS = {"-d", "--debug", "-u", "--user", "-r", "--root", "-l", "--ldcache"}

USAGE = """Usage: nvidia-container-cli [OPTION...] COMMAND [ARG...]
Command line utility for manipulating NVIDIA GPU containers (fleet lab stand-in).

 Commands:
  info       Report information about the driver and devices
  --version  Print the program version
"""


def main(argv):
    cli_version = baked(BAKED_TOOLKIT_VERSION) or "0.0.0-source"
    lib = read_text(LIBNVIDIA_CONTAINER)
    if lib is None:
        sys.stderr.write("nvidia-container-cli: error while loading shared libraries: "
                         "libnvidia-container.so.1: cannot open shared object file: "
                         "No such file or directory\n")
        return 127
    positional = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-V", "--version"):
            sys.stdout.write(f"cli-version: {cli_version}\nlib-version: {lib.strip()}\n"
                             "build date: (fleet lab stand-in)\n"
                             f"build revision: fleetlab-standin-{cli_version}\n"
                             "build compiler: python3\nbuild platform: x86_64\n")
            return 0
        if arg in ("-h", "--help", "-?"):
            sys.stdout.write(USAGE)
            return 0
        if arg.startswith("-"):
            if arg.split("=", 1)[0] in VALUE_OPTIONS and "=" not in arg:
                i += 1
        else:
            positional.append(arg)
        i += 1
    if not positional:
        sys.stderr.write("nvidia-container-cli: missing command\n"
                         "Try `nvidia-container-cli --help' for more information.\n")
        return 64
    if positional[0] != "info":
        sys.stderr.write(f"nvidia-container-cli: fleet lab stand-in: command "
                         f"'{positional[0]}' is not simulated\n")
        return 1

    library = installed_library_version()
    if library is None:
        sys.stderr.write("nvidia-container-cli: initialization error: load library failed: "
                         "libnvidia-ml.so.1: cannot open shared object file: no such file "
                         "or directory\n")
        return 1
    driver = loaded_driver_version()
    if driver is None:
        sys.stderr.write("nvidia-container-cli: initialization error: nvml error: "
                         "driver not loaded\n")
        return 1
    if driver != library:
        sys.stderr.write("nvidia-container-cli: initialization error: nvml error: "
                         "driver/library version mismatch\n")
        return 1
    out = [f"NVRM version:   {driver}", f"CUDA version:   {cuda_version(driver)}", ""]
    for gpu in load_gpus():
        out += [
            f"Device Index:   {gpu['index']}",
            f"Device Minor:   {gpu['index']}",
            f"Model:          {gpu['name']}",
            "Brand:          Nvidia",
            f"GPU UUID:       {gpu['uuid']}",
            f"Bus Location:   {gpu['pci_bus_id']}",
            f"Architecture:   {model_spec(gpu)[0]}",
            "",
        ]
    sys.stdout.write("\n".join(out) + ("\n" if out[-1] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

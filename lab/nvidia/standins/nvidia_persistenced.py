#!/usr/bin/python3
# Fleet lab stand-in for nvidia-persistenced (package nvidia-persistenced); not NVIDIA
# software, no driver here. Like the real daemon, run by nvidia-persistenced.service
# (Type=forking): it needs the loaded NVIDIA driver (/run/fleetlab/nvidia-driver-loaded)
# and refuses to start without it; once started it turns persistence mode on for every
# GPU of /etc/fleetlab/gpus.json (unless --no-persistence-mode), forks into the
# background with its pid in /run/nvidia-persistenced/nvidia-persistenced.pid, and on
# SIGTERM turns persistence mode off again and exits 0. What it would send to syslog
# goes to stderr (the journal). Every absolute path is prefixed with $FLEETLAB_ROOT.
import sys

# fleetlab:common-begin
from fleetlab_common import (
    BAKED_DRIVER_VERSION,
    PERSISTENCE_JSON,
    PERSISTENCED_PID_FILE,
    baked,
    daemonize,
    kernel_slot,
    load_gpus,
    load_persistence,
    loaded_driver_version,
    pid_alive,
    read_pid_file,
    write_json,
)

# fleetlab:common-end

PROGRAM = "nvidia-persistenced"
USAGE = f"""
{PROGRAM} [options]

  --version / -v     Print the utility version and exit.
  --help / -h        Print usage information for the command line options and exit.
  --verbose / -V     Controls how much information is printed.
  --user=USERNAME    Runs nvidia-persistenced with the user permissions of USERNAME.
  --group=GROUPNAME  Runs nvidia-persistenced with the group permissions of GROUPNAME.
  --persistence-mode, --no-persistence-mode
                     Enable/disable persistence mode for all devices on startup.
  --uvm-persistence-mode, --no-uvm-persistence-mode
  --nvidia-cfg-path=PATH

(fleet lab stand-in: not the real nvidia-persistenced)
"""
WITH_VALUE = ("--user", "-u", "--group", "-g", "--nvidia-cfg-path")


def log(message):
    sys.stderr.write(f"{PROGRAM}: {message}\n")
    sys.stderr.flush()


def parse(argv):
    opts = {"mode": "run", "persistence": True, "verbose": False}
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if arg in ("-v", "--version"):
            opts["mode"] = "version"
        elif arg in ("-h", "--help"):
            opts["mode"] = "help"
        elif arg in ("-V", "--verbose"):
            opts["verbose"] = True
        elif arg == "--persistence-mode":
            opts["persistence"] = True
        elif arg == "--no-persistence-mode":
            opts["persistence"] = False
        elif arg in ("--uvm-persistence-mode", "--no-uvm-persistence-mode"):
            pass
        elif name in WITH_VALUE:
            if "=" not in arg:
                i += 1
                if i >= len(argv):
                    raise ValueError(f"Option \"{arg}\" requires an argument.")
        else:
            raise ValueError(f"Unrecognized option: \"{arg}\".")
        i += 1
    return opts


def set_persistence(gpus, enabled):
    state = load_persistence()
    word = "enabled" if enabled else "disabled"
    for gpu in gpus:
        state[gpu["uuid"]] = enabled
    write_json(PERSISTENCE_JSON, state)
    return [f"device {kernel_slot(g['pci_bus_id'])} - persistence mode {word}." for g in gpus]


def main(argv):
    try:
        opts = parse(argv)
    except ValueError as exc:
        sys.stderr.write(f"{PROGRAM}: {exc}\n\nRun '{PROGRAM} --help' for usage.\n")
        return 1
    if opts["mode"] == "help":
        sys.stdout.write(USAGE)
        return 0
    if opts["mode"] == "version":
        version = baked(BAKED_DRIVER_VERSION) or "unknown"
        sys.stdout.write(f"\n{PROGRAM}:  version {version}\n\n  The NVIDIA Persistence "
                         "Daemon (fleet lab stand-in).\n\n")
        return 0

    running = read_pid_file(PERSISTENCED_PID_FILE)
    if running is not None and pid_alive(running):
        log(f"Failed to lock PID file: Resource temporarily unavailable (another "
            f"{PROGRAM} runs as pid {running})")
        log(f"{PROGRAM} failed to initialize. Check syslog for more details.")
        return 1
    if opts["verbose"]:
        log("Verbose syslog connection opened")
    driver = loaded_driver_version()
    gpus = load_gpus()
    if driver is None or not gpus:
        log("Failed to query NVIDIA devices. Please ensure that the NVIDIA device files "
            "(/dev/nvidia*) exist, and that user 0 has read and write permissions for "
            "those files.")
        log("Shutdown")
        log(f"{PROGRAM} failed to initialize. Check syslog for more details.")
        return 1
    for gpu in gpus:
        log(f"device {kernel_slot(gpu['pci_bus_id'])} - registered")
    if opts["persistence"]:
        for line in set_persistence(gpus, True):
            log(line)
    log("Local RPC services initialized")

    def on_stop():
        set_persistence(gpus, False)

    daemonize(PERSISTENCED_PID_FILE, on_stop)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

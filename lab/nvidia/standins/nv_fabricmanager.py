#!/usr/bin/python3
# Fleet lab stand-in for nv-fabricmanager (package @PACKAGE@); not NVIDIA software, no
# NVSwitch and no driver here. Run by nvidia-fabricmanager.service (Type=forking) with
# `-c /usr/share/nvidia/nvswitch/fabricmanager.cfg`. Like NVIDIA Fabric Manager it
# refuses to start (exit 1) when
# - its config file is missing or has a line that is not KEY=VALUE, a comment or blank;
# - no NVIDIA driver is loaded (/run/fleetlab/nvidia-driver-loaded);
# - the loaded driver is not of its own version (Fabric Manager and the driver must be
#   the same version);
# - the board needs no Fabric Manager: /etc/fleetlab/gpus.json lists no NVSwitch and no
#   HGX B100/B200/B300 GPU (NV_WARN_NOTHING_TO_DO);
# - the board is an NVLink 5 one (HGX B100/B200/B300) and the NVLink Subnet Manager is not
#   installed (/opt/nvidia/nvlsm/sbin/nvlsm, package nvlsm): upstream's
#   nvidia-fabricmanager-start.sh says "Detected NVL5+ system" and refuses, naming the
#   package; with it, NVLSM is started first ("Started "Nvidia NVLink Subnet Manager"");
# - the board is an NVLink 5 one and the ib_umad kernel module is not loaded (the lab's
#   kernel lacks it: /etc/fleetlab/kernel-modules-missing lists it): the same script says
#   "Kernel module "ib_umad" has not been loaded, fabric manager cannot be started"
#   (checked right after "Detected NVL5+ system", before NVLSM).
# Otherwise it runs (in the background when DAEMONIZE=1) with its pid in
# /run/fleetlab/fabricmanager.pid, which the lab's container hook reads: on an NVSwitch
# board CUDA initialises only while Fabric Manager runs. SIGTERM removes the pid file.
# Logs go to LOG_FILE_NAME (stderr when empty). Paths are prefixed with $FLEETLAB_ROOT.
#
# Bringing the fabric up takes time: like the real one it has configured the NVSwitches
# when it forks (the forking unit is active then), and the GPUs then register with the
# NVLink fabric, which nvidia-smi shows as Fabric State "In Progress" until "Completed";
# CUDA initialises only after that (802 before). The lab sets how long in gpus.json,
# "fabric_init_seconds" (0 when absent); /run/fleetlab/fabric.json holds when it is done,
# and every running GPU container's live view (/etc/fleetlab/live.env) is updated when
# Fabric Manager starts and stops.
import os
import re
import signal
import sys
import threading
import time

# fleetlab:common-begin
from fleetlab_common import (
    BAKED_DRIVER_VERSION,
    FABRIC_JSON,
    FM_PID_FILE,
    NVLSM_BINARY,
    baked,
    board_needs_fabricmanager,
    board_needs_nvlsm,
    daemonize,
    host_path,
    kernel_module_loaded,
    loaded_driver_version,
    pid_alive,
    publish_fabric,
    read_board,
    read_pid_file,
    read_text,
    remove_file,
    write_json,
)

# fleetlab:common-end

DEFAULT_CONFIG = "/usr/share/nvidia/nvswitch/fabricmanager.cfg"
# the kernel module NVLSM talks to the NVSwitches through (InfiniBand management datagrams)
NVLSM_MODULE = "ib_umad"
LINE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=.*$")
USAGE = """NVIDIA Fabric Manager (fleet lab stand-in, not NVIDIA software)
Runs as a background process to configure the NVSwitches to form
a single memory fabric among all participating GPUs.

Usage: nv-fabricmanager [options]

Options include:
[-h | --help]: Displays help information
[-v | --version]: Displays the Fabric Manager version and exit.
[-c | --config]: Provides Fabric Manager config file path/name which controls all the
                 config options.
[-r | --restart]: Restart Fabric Manager after exit. Applicable to Shared NVSwitch and
                  vGPU multitenancy modes.
"""


class StartError(Exception):
    pass


def version():
    return baked(BAKED_DRIVER_VERSION) or "unknown"


def parse(argv):
    opts = {"mode": "run", "config": DEFAULT_CONFIG}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            opts["mode"] = "help"
        elif arg in ("-v", "--version"):
            opts["mode"] = "version"
        elif arg in ("-r", "--restart"):
            pass
        elif arg in ("-c", "--config"):
            i += 1
            if i >= len(argv):
                raise StartError(f"option '{arg}' requires an argument")
            opts["config"] = argv[i]
        elif arg.startswith("--config="):
            opts["config"] = arg.split("=", 1)[1]
        else:
            raise StartError(f"unrecognized option '{arg}'")
        i += 1
    return opts


def read_config(path):
    text = read_text(path)
    if text is None:
        raise StartError(f"failed to open fabric manager config file {path}: "
                         "No such file or directory")
    config = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not LINE.match(line):
            raise StartError(f"failed to parse fabric manager config file {path}: "
                             f"line {number} is not KEY=VALUE: {raw!r}")
        key, value = line.split("=", 1)
        config[key] = value.strip()
    return config


class Log:
    """Fabric Manager's log lines: [date] [LEVEL] [tid N] message."""

    def __init__(self, path):
        self.path = path

    def write(self, level, message):
        stamp = time.strftime("%b %d %Y %H:%M:%S")
        line = f"[{stamp}] [{level}] [tid {threading.get_native_id()}] {message}\n"
        if self.path:
            try:
                full = host_path(self.path)
                os.makedirs(os.path.dirname(full), exist_ok=True)
                with open(full, "a", encoding="utf-8") as f:
                    f.write(line)
                return
            except OSError:
                pass
        sys.stderr.write(line)


def check_nvlsm(log):
    """What nvidia-fabricmanager-start.sh does before Fabric Manager: on an NVLink 5 board
    ib_umad must be loaded and NVLSM installed (StartError), and NVLSM is started; else
    nothing."""
    if not board_needs_nvlsm(read_board()):
        log.write("INFO", "Detected Pre-NVL5 system")
        return
    log.write("INFO", "Detected NVL5+ system")
    if not kernel_module_loaded(NVLSM_MODULE):
        raise StartError(f'Kernel module "{NVLSM_MODULE}" has not been loaded, fabric '
                         "manager cannot be started")
    if not os.path.exists(host_path(NVLSM_BINARY)):
        raise StartError(f'{NVLSM_BINARY} does not exist. Please install "Nvidia NVLink '
                         'Subnet Manager" (nvlsm) package')
    log.write("INFO", 'Started "Nvidia NVLink Subnet Manager"')


def check(config):
    """Why Fabric Manager cannot start here (StartError), else None."""
    running = read_pid_file(FM_PID_FILE)
    if running is not None and pid_alive(running):
        raise StartError(f"another instance of fabric manager is running (pid {running}); "
                         f"failed to bind to {config.get('BIND_INTERFACE_IP', '127.0.0.1')}"
                         f":{config.get('STARTING_TCP_PORT', '16000')}")
    driver = loaded_driver_version()
    if driver is None:
        raise StartError("failed to allocate handle (client) to NVIDIA GPU driver. Make "
                         "sure that the NVIDIA driver is installed and running")
    if driver != version():
        raise StartError(f"fabric manager NVIDIA GPU driver interface version {version()} "
                         f"don't match with driver version {driver}. Please update with "
                         "matching NVIDIA driver package.")
    if not board_needs_fabricmanager(read_board()):
        raise StartError("request to query NVSwitch device information from NVSwitch "
                         "driver failed with error:WARNING Nothing to do "
                         "[NV_WARN_NOTHING_TO_DO]")


def main(argv):
    try:
        opts = parse(argv)
    except StartError as exc:
        sys.stderr.write(f"nv-fabricmanager: {exc}\n{USAGE}")
        return 1
    if opts["mode"] == "help":
        sys.stdout.write(USAGE)
        return 0
    if opts["mode"] == "version":
        sys.stdout.write(f"Fabric Manager version is : {version()}\n")
        return 0
    log = Log(None)
    try:
        config = read_config(opts["config"])
        log = Log(config.get("LOG_FILE_NAME") or None)
        log.write("INFO", f"Fabric Manager version {version()} is running with the "
                          f"following configuration options (file {opts['config']})")
        check_nvlsm(log)
        check(config)
    except StartError as exc:
        log.write("ERROR", str(exc))
        sys.stderr.write(f"{exc}\nfabric manager failed to start. Please refer to the "
                         "fabric manager log file for more details\n")
        return 1
    log.write("INFO", "Successfully configured all the available NVSwitches to route GPU "
                      "NVLink traffic. NVLink Peer-to-Peer support will be enabled once the "
                      "GPUs are successfully registered with the NVLink fabric.")

    def on_ready():
        # the GPUs' registration with the fabric, from the moment Fabric Manager runs
        delay = read_board()["fabric_init_seconds"]
        done = -int(-(time.time() + delay) // 1) if delay else 0  # whole seconds, rounded up
        write_json(FABRIC_JSON, {"pid": os.getpid(), "completed_at": done})
        publish_fabric()

    def on_stop():
        log.write("INFO", "Received an interrupt to exit, cleaning up Fabric Manager")
        remove_file(FABRIC_JSON)
        remove_file(FM_PID_FILE)
        publish_fabric()

    if config.get("DAEMONIZE", "1") != "0":
        daemonize(FM_PID_FILE, on_stop, on_ready=on_ready)
        return 0
    # DAEMONIZE=0: a normal process in the foreground
    def stop(signum, frame):
        on_stop()
        remove_file(FM_PID_FILE)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    full = host_path(FM_PID_FILE)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")
    on_ready()
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

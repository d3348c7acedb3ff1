# Fleet lab: code shared by the NVIDIA stand-ins. The package builder inlines this
# file into every installed script (between the fleetlab:common markers), so each
# installed program is one self-contained file that needs only python3.
#
# Simulated state (every absolute path is prefixed with $FLEETLAB_ROOT, default /):
#   /etc/fleetlab/gpus.json                 the host's GPUs (written by the lab)
#   /run/fleetlab/nvidia-driver-loaded      "kernel module loaded"; holds its version
#   /run/fleetlab/gpu-usage.json            optional {"<uuid>": {"memory_used_mib", ...}}
#   /run/fleetlab/nvidia-persistence.json   persistence mode per GPU UUID (lost on reboot)
#   /usr/lib/fleetlab/libnvidia-ml.version  userspace driver installed (the package with
#                                           nvidia-smi: cuda-drivers-*, nvidia-open-*,
#                                           nvidia-driver-cuda)
#   /lib/modules/<kernel>/updates/dkms/nvidia.ko
#                                           the module DKMS built: "<version> <flavour>"
#   /run/fleetlab/booted-kernel             the kernel the lab host booted (the newest
#                                           /boot/vmlinuz-*, written at boot by the host
#                                           image; `uname -r` says it too); absent: the
#                                           machine's own kernel
#   /run/fleetlab/fabricmanager.pid         the Fabric Manager stand-in, while it runs
#   /run/fleetlab/fabric.json               its fabric bring-up: {"pid", "completed_at"}
#                                           (GPUs registered with the NVLink fabric from then)
#   /var/lib/fleetlab/gpu-assignments.jsonl every GPU injection into a container (container
#                                           id, GPUs, its root file system, how injected)
#   /etc/fleetlab/live.env                  IN A CONTAINER: the host's live driver state as
#                                           the host side last wrote it (KEY=VALUE lines)
#   /run/fleetlab/daemon-reloads/           one file per `systemctl daemon-reload` (written
#                                           by the toolkit's systemd generator)
#   /run/nvidia-persistenced/nvidia-persistenced.pid
#                                           the nvidia-persistenced stand-in, while it runs
#   /run/fleetlab/gpu-faults.json           GPUs the lab broke (`python -m lab fault`):
#                                           {"<uuid>": {"lost": true} (Xid 79, off the bus
#                                           until a reboot), {"ecc_dbe_volatile": N,
#                                           "reset_required": true} (Xid 48, until a GPU
#                                           reset)}; lost at a reboot, as /run is
#   /dev/kmsg                               ON A LAB GPU HOST: a regular file the lab
#                                           creates at boot (fleetlab-kmsg.service) and
#                                           appends kernel records to (NVRM Xid lines),
#                                           in the kernel's /dev/kmsg record format
#   /tmp/.fleetlab-gpu-usage.json           IN A CONTAINER: the GPU memory the stand-in
#                                           Ollama's loaded models hold, per GPU UUID (the
#                                           host's nvidia-smi reads it through
#                                           /proc/PID/root of the container's processes)
#   /etc/fleetlab/kernel-modules-missing    modules the lab's kernel lacks, one a line
#                                           (written by the lab or a test; e.g. ib_umad,
#                                           as on an Ubuntu kernel without
#                                           linux-modules-extra-$(uname -r)); every other
#                                           module the stand-ins ask for counts as loaded
import datetime
import json
import os
import shlex
import signal
import sys
import time

# Replaced when a package is built; left as is when run from the source tree.
BAKED_DRIVER_VERSION = "@FLEETLAB_DRIVER_VERSION@"
BAKED_TOOLKIT_VERSION = "@FLEETLAB_TOOLKIT_VERSION@"

GPUS_JSON = "/etc/fleetlab/gpus.json"
DRIVER_MARKER = "/run/fleetlab/nvidia-driver-loaded"
USAGE_JSON = "/run/fleetlab/gpu-usage.json"
PERSISTENCE_JSON = "/run/fleetlab/nvidia-persistence.json"
NVML_LIBRARY = "/usr/lib/fleetlab/libnvidia-ml.version"
ASSIGNMENTS_LOG = "/var/lib/fleetlab/gpu-assignments.jsonl"
MODULE_FILE = "/lib/modules/{kernel}/updates/dkms/nvidia.ko"
FM_PID_FILE = "/run/fleetlab/fabricmanager.pid"
FABRIC_JSON = "/run/fleetlab/fabric.json"
LIVE_ENV = "/etc/fleetlab/live.env"
DAEMON_RELOADS = "/run/fleetlab/daemon-reloads"
GENERATOR_RAN = "/run/fleetlab/systemd-generator-ran"
DAEMON_JSON = "/etc/docker/daemon.json"
RUNTIME_CONFIG = "/etc/nvidia-container-runtime/config.toml"
PERSISTENCED_PID_FILE = "/run/nvidia-persistenced/nvidia-persistenced.pid"
GPU_FAULTS_JSON = "/run/fleetlab/gpu-faults.json"
KMSG = "/dev/kmsg"
# written by the stand-in Ollama in its container (lab/ollama/standin/scheduler.py)
CONTAINER_GPU_USAGE = "/tmp/.fleetlab-gpu-usage.json"
# what a CUDA context (one runner process) takes of a GPU's memory, beside its model
CUDA_CONTEXT_MIB = 512

# PCI device ids (NVIDIA's supportedchips tables, pci.ids). Blackwell runs only with the
# open kernel modules; the SXM parts of HGX B100/B200/B300 (pci.ids: 2901 GB100 [B200],
# 2920 GB100 [TS4 / B100], 29bc GB102 [B100], 3182 B300) mean an NVSwitch board although
# their NVSwitches are not PCI devices of the host, and an NVLink 5 one, whose Fabric
# Manager needs the NVLink Subnet Manager (NVLSM).
BLACKWELL_DEVICE_RANGES = ((0x2900, 0x2FFF), (0x3182, 0x3182), (0x31C2, 0x31C3))
HGX_BLACKWELL_DEVICES = (0x2901, 0x2920, 0x29BC, 0x3182)
NVLSM_BINARY = "/opt/nvidia/nvlsm/sbin/nvlsm"
KERNEL_MODULES_MISSING = "/etc/fleetlab/kernel-modules-missing"

# name -> (compute capability, power limit W, idle power W, idle temperature C)
MODEL_SPECS = {
    "NVIDIA H100 80GB HBM3": ("9.0", 700.0, 69.7, 31),
    "NVIDIA A100-SXM4-80GB": ("8.0", 400.0, 61.2, 30),
    "NVIDIA L40S": ("8.9", 350.0, 34.5, 28),
    "NVIDIA B200": ("10.0", 1000.0, 140.0, 32),
    "NVIDIA B100": ("10.0", 700.0, 120.0, 31),
    "NVIDIA B300 SXM6 AC": ("10.3", 1100.0, 150.0, 32),
}
DEFAULT_SPEC = ("9.0", 300.0, 50.0, 30)

# CUDA version the driver branch reports (nvidia-smi "CUDA Version").
CUDA_BY_BRANCH = {550: "12.4", 570: "12.8", 580: "13.0", 590: "13.1"}

IDLE_MEMORY_USED_MIB = 1


def baked(value):
    """A build-time constant, or None when running from the source tree."""
    return None if value.startswith("@") else value


def fleetlab_root():
    return os.environ.get("FLEETLAB_ROOT") or "/"


def host_path(path):
    """An absolute path of the simulated host, under $FLEETLAB_ROOT."""
    return os.path.join(fleetlab_root(), path.lstrip("/"))


def read_text(path):
    try:
        with open(host_path(path), encoding="utf-8") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def read_json(path, default):
    text = read_text(path)
    if text is None or not text.strip():
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def write_json(path, data):
    full = host_path(path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    tmp = full + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, full)


def load_gpus():
    """The simulated GPUs, ordered by index ([] on a host without GPUs)."""
    gpus = [g for g in read_board()["gpus"] if "index" in g and "uuid" in g]
    return sorted(gpus, key=lambda g: int(g["index"]))


def loaded_driver_version():
    """Version of the "loaded kernel module", or None when no driver is loaded."""
    text = read_text(DRIVER_MARKER)
    if text is None:
        return None
    return text.strip() or "unknown"


def installed_library_version():
    """Version of the installed userspace driver (libnvidia-ml), or None."""
    text = read_text(NVML_LIBRARY)
    return text.strip() if text is not None else None


def driver_branch(version):
    try:
        return int(version.split(".")[0])
    except (ValueError, AttributeError):
        return 0


def cuda_version(driver_version):
    branch = driver_branch(driver_version)
    if branch in CUDA_BY_BRANCH:
        return CUDA_BY_BRANCH[branch]
    if branch >= 590:
        return "13.1"
    if branch >= 580:
        return "13.0"
    if branch >= 570:
        return "12.8"
    if branch >= 550:
        return "12.4"
    return "12.2"


def nvml_version(driver_version):
    return ".".join(driver_version.split(".")[:2])


def model_spec(gpu):
    """(compute capability, power limit, idle power, idle temperature) of GPU: the compute
    capability gpus.json gives (lab/nvidia/hardware.py MODELS), else the model's."""
    spec = MODEL_SPECS.get(gpu.get("name", ""), DEFAULT_SPEC)
    cap = gpu.get("compute_cap")
    return (cap, *spec[1:]) if isinstance(cap, str) and cap else spec


def read_board():
    """gpus.json read tolerantly: {"gpus": [...], "board": "hgx"|"pcie", "nvswitches": [...]}.

    An older file (a bare list, or {"gpus": [...]} alone) or a damaged one describes a
    PCIe board without NVSwitch."""
    try:
        doc = json.loads(read_text(GPUS_JSON) or "{}")
    except ValueError:
        doc = {}
    if isinstance(doc, list):
        doc = {"gpus": doc}
    if not isinstance(doc, dict):
        doc = {}
    gpus = [g for g in doc.get("gpus") or [] if isinstance(g, dict)] \
        if isinstance(doc.get("gpus"), list) else []
    switches = doc.get("nvswitches") if isinstance(doc.get("nvswitches"), list) else []
    board = doc.get("board") if doc.get("board") in ("hgx", "pcie") else "pcie"
    delay = doc.get("fabric_init_seconds")
    delay = delay if isinstance(delay, (int, float)) and not isinstance(delay, bool) \
        and 0 <= delay < 86400 else 0
    return {"gpus": gpus, "board": board, "nvswitches": switches,
            "fabric_init_seconds": delay}


def gpu_device_id(gpu):
    """A GPU's PCI device id as an int ("0x2330" or 0x2330), or None when unknown."""
    value = gpu.get("pci_device_id") if isinstance(gpu, dict) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value), 16)
    except (TypeError, ValueError):
        return None


def is_blackwell(device):
    return device is not None and any(lo <= device <= hi for lo, hi in BLACKWELL_DEVICE_RANGES)


def board_needs_fabricmanager(board):
    """An NVSwitch board (HGX/DGX): NVSwitches on the PCI bus, or HGX Blackwell GPUs."""
    return bool(board["nvswitches"]) or any(
        gpu_device_id(g) in HGX_BLACKWELL_DEVICES for g in board["gpus"])


def board_needs_nvlsm(board):
    """An NVLink 5 board (HGX B100/B200/B300): Fabric Manager runs with NVLSM only."""
    return any(gpu_device_id(g) in HGX_BLACKWELL_DEVICES for g in board["gpus"])


def kernel_module_loaded(name):
    """Whether kernel module NAME is loaded: the lab's kernel has every module (the deploy
    loads what it needs, and /etc/modules-load.d at boot) except those the lab lists in
    /etc/fleetlab/kernel-modules-missing, which no modprobe can load."""
    missing = (read_text(KERNEL_MODULES_MISSING) or "").split()
    return name not in missing


def board_has_fabric_probe(board):
    """Whether the board's GPUs register with the NVLink fabric, so that nvidia-smi shows a
    Fabric State: Hopper and later GPUs (compute capability 9+) on an NVSwitch board. An A100
    (and a PCIe card) shows N/A there."""
    return board_needs_fabricmanager(board) and any(
        int(model_spec(g)[0].split(".")[0]) >= 9 for g in board["gpus"])


def fabric_manager_pid():
    """The running Fabric Manager's pid, or None."""
    pid = read_pid_file(FM_PID_FILE)
    return pid if pid and pid_alive(pid) else None


def host_fabric():
    """The host's fabric: {"supported", "fm_running", "completed_at"} (epoch seconds, or 0)."""
    board = read_board()
    pid = fabric_manager_pid()
    completed_at = 0
    if pid is not None:
        doc = read_json(FABRIC_JSON, {})
        if isinstance(doc, dict) and doc.get("pid") == pid:
            try:
                completed_at = int(doc.get("completed_at") or 0)
            except (TypeError, ValueError):
                completed_at = 0
    return {"supported": board_has_fabric_probe(board), "fm_running": pid is not None,
            "completed_at": completed_at, "required": board_needs_fabricmanager(board)}


def fabric_state(fabric, now=None):
    """(State, Status) of the GPUs' fabric as nvidia-smi prints them: N/A where the GPUs do
    not register with a fabric; In Progress until Fabric Manager has brought the fabric up
    (not running: still In Progress); then Completed / Success."""
    if not fabric.get("supported"):
        return "N/A", "N/A"
    now = time.time() if now is None else now
    if not fabric.get("fm_running") or now < fabric.get("completed_at", 0):
        return "In Progress", "N/A"
    return "Completed", "Success"


def fabric_ready(board, fabric, now=None):
    """Whether CUDA initialises on this board now: Fabric Manager running where the board
    needs it and, where the GPUs register with the fabric, the fabric Completed."""
    if not board_needs_fabricmanager(board):
        return True
    if not fabric.get("fm_running"):
        return False
    return fabric_state(fabric, now)[0] != "In Progress"


def live_text(values):
    return "".join(f"{k}={values[k]}\n" for k in sorted(values))


def parse_live(text):
    values = {}
    for line in (text or "").splitlines():
        key, eq, value = line.partition("=")
        if eq and key.strip():
            values[key.strip()] = value.strip()
    return values


def read_live():
    """In a container: the live state the host side wrote (/etc/fleetlab/live.env), else
    None (on the host itself)."""
    text = read_text(LIVE_ENV)
    return None if text is None else parse_live(text)


def fabric_from_live(live):
    try:
        completed_at = int(live.get("FABRIC_COMPLETED_AT") or 0)
    except ValueError:
        completed_at = 0
    return {"supported": live.get("FABRIC") == "supported",
            "fm_running": live.get("FM_RUNNING") == "1", "completed_at": completed_at,
            "required": live.get("FM_REQUIRED") == "1"}


def live_fabric_values(fabric):
    """FM_REQUIRED: the board needs Fabric Manager for CUDA (an NVSwitch board); a runner
    that starts while it is not running cannot initialise CUDA there (802)."""
    return {"FABRIC": "supported" if fabric["supported"] else "unsupported",
            "FM_RUNNING": "1" if fabric["fm_running"] else "0",
            "FABRIC_COMPLETED_AT": str(int(fabric["completed_at"])),
            "FM_REQUIRED": "1" if fabric.get("required") else "0"}


def resolve_in_root(root, path):
    """Resolve `path` inside `root` the way a chroot would (symlinks stay inside)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    current = ""
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, part) if current else part
        full = os.path.join(root, candidate)
        if os.path.islink(full):
            hops += 1
            if hops > 40:
                raise ValueError(f"too many levels of symbolic links: {path}")
            target = os.readlink(full)
            if target.startswith("/"):
                current = ""
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        current = candidate
    return os.path.join(root, current)


def write_in_root(root, path, data, mode=0o644):
    """Write PATH inside the container root ROOT, from the host side (symlinks resolved
    inside the root). ValueError when PATH is there and not a regular file."""
    parent = resolve_in_root(root, os.path.dirname(path))
    os.makedirs(parent, exist_ok=True)
    target = resolve_in_root(root, path)
    if os.path.lexists(target) and not os.path.isfile(target):
        raise ValueError(f"cannot write {path} in the container: not a regular file")
    tmp = target + ".fleetlab-tmp"
    with open(tmp, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    os.chmod(tmp, mode)
    os.replace(tmp, target)


def gpu_containers():
    """The GPU containers running now: the last injection record of every container whose
    root file system still shows its live state (a stopped container's root is unmounted)."""
    latest = {}
    text = read_text(ASSIGNMENTS_LOG) or ""
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("rootfs"):
            latest[record.get("container_id", "")] = record
    running = []
    for record in latest.values():
        try:
            if os.path.isfile(resolve_in_root(record["rootfs"], LIVE_ENV)):
                running.append(record)
        except (OSError, ValueError):
            continue
    return running


def update_live(record, values):
    """Merge VALUES into a running GPU container's live state; False when it is gone."""
    try:
        path = resolve_in_root(record["rootfs"], LIVE_ENV)
        with open(path, encoding="utf-8") as f:
            live = parse_live(f.read())
        live.update(values)
        write_in_root(record["rootfs"], LIVE_ENV, live_text(live))
        return True
    except (OSError, ValueError):
        return False


def publish_fabric():
    """Tell every running GPU container the host's fabric as it is now."""
    values = live_fabric_values(host_fabric())
    for record in gpu_containers():
        update_live(record, values)


# ---------------------------------------------------------------- GPUs the lab broke

def load_gpu_faults():
    """{uuid: {"lost": bool, "reset_required": bool, "ecc_dbe_volatile": int}} of the
    host's GPUs the lab broke since the boot (`python -m lab fault`)."""
    data = read_json(GPU_FAULTS_JSON, {})
    out = {}
    for uuid, fault in (data.items() if isinstance(data, dict) else ()):
        if not isinstance(fault, dict):
            continue
        try:
            count = max(0, int(fault.get("ecc_dbe_volatile") or 0))
        except (TypeError, ValueError):
            count = 0
        out[str(uuid)] = {"lost": fault.get("lost") is True,
                          "reset_required": fault.get("reset_required") is True,
                          "ecc_dbe_volatile": count}
    return out


def save_gpu_faults(faults):
    kept = {u: f for u, f in faults.items()
            if f.get("lost") or f.get("reset_required") or f.get("ecc_dbe_volatile")}
    write_json(GPU_FAULTS_JSON, kept)


def fault_live_values(uuids, faults):
    """A container's view of the faults of its GPUs UUIDS (live.env): GPU_LOST and
    GPU_RESET_REQUIRED list UUIDs, GPU_ECC_DBE is `uuid:count` pairs."""
    mine = [u for u in uuids if u in faults]
    return {
        "GPU_LOST": ",".join(u for u in mine if faults[u]["lost"]),
        "GPU_RESET_REQUIRED": ",".join(u for u in mine if faults[u]["reset_required"]),
        "GPU_ECC_DBE": ",".join(f"{u}:{faults[u]['ecc_dbe_volatile']}" for u in mine
                                if faults[u]["ecc_dbe_volatile"]),
    }


def faults_from_live(live):
    """The faults a container's live.env reports, as load_gpu_faults() returns them."""
    faults = {}

    def entry(uuid):
        return faults.setdefault(uuid, {"lost": False, "reset_required": False,
                                        "ecc_dbe_volatile": 0})

    for uuid in filter(None, (live.get("GPU_LOST") or "").split(",")):
        entry(uuid.strip())["lost"] = True
    for uuid in filter(None, (live.get("GPU_RESET_REQUIRED") or "").split(",")):
        entry(uuid.strip())["reset_required"] = True
    for pair in filter(None, (live.get("GPU_ECC_DBE") or "").split(",")):
        uuid, _, count = pair.rpartition(":")
        try:
            entry(uuid.strip())["ecc_dbe_volatile"] = max(0, int(count))
        except ValueError:
            continue
    return faults


def publish_gpu_faults():
    """Tell every running GPU container the faults of its GPUs as they are now."""
    faults = load_gpu_faults()
    for record in gpu_containers():
        update_live(record, fault_live_values(record.get("uuids") or [], faults))


def handle_error_line(gpu, list_form=False):
    """What nvidia-smi prints in place of a GPU NVML has no handle for (a GPU off the bus):
    `-L` says "gpu" and a space, the other views "GPU" and the bus id without one, both with
    a 4-digit domain."""
    domain, _, rest = str(gpu["pci_bus_id"]).partition(":")
    bus = f"{domain[-4:]}:{rest}".upper()
    if list_form:
        return f"Unable to determine the device handle for gpu {bus}: Unknown Error\n"
    return f"Unable to determine the device handle for GPU{bus}: Unknown Error\n"


def kmsg_pci(gpu):
    """The PCI part of an NVRM Xid line: DOMAIN:BUS:DEVICE, lower case, no function."""
    domain, _, rest = str(gpu["pci_bus_id"]).partition(":")
    return f"{domain[-4:]}:{rest.rsplit('.', 1)[0]}".lower()


def kmsg_records(text):
    """[(prio, seq, usec, message)] of the records in TEXT (the /dev/kmsg format:
    `PRIO,SEQ,USEC,FLAGS[,...];MESSAGE`, continuation lines start with a space)."""
    out = []
    for line in (text or "").splitlines():
        head, sep, message = line.partition(";")
        fields = head.split(",")
        if not sep or len(fields) < 4:
            continue
        try:
            out.append((int(fields[0]), int(fields[1]), int(fields[2]), message))
        except ValueError:
            continue
    return out


def kmsg_append(messages, prio=4):
    """Append MESSAGES to the lab host's /dev/kmsg as kernel records, sequence numbers
    going on from the last one, time stamps from the boot's uptime. ValueError when the
    host has no lab kernel log (a regular /dev/kmsg)."""
    path = host_path(KMSG)
    if not os.path.isfile(path):
        raise ValueError(f"{KMSG} is not the lab's kernel log here (a regular file the lab "
                         "creates at boot on GPU hosts: recreate the host with "
                         "`python -m lab up`)")
    with open(path, encoding="utf-8", errors="replace") as f:
        records = kmsg_records(f.read())
    seq = records[-1][1] + 1 if records else 0
    try:
        usec = int(float((read_text("/proc/uptime") or "").split()[0]) * 1e6)
    except (IndexError, ValueError):
        usec = int(time.monotonic() * 1e6)
    usec = max(usec, records[-1][2] if records else 0)
    text = "".join(f"{prio},{seq + i},{usec},-;{m}\n" for i, m in enumerate(messages))
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
    return text


# ---------------------------------------------------------------- GPU injection

# What cuInit answers in the container.
CUDA_JSON = "/etc/fleetlab/cuda.json"
CUDA_SYSTEM_NOT_READY = {"init_error": 802, "name": "CUDA_ERROR_SYSTEM_NOT_READY",
                         "message": "system not yet initialized"}
PYTHONS = ("usr/bin/python3", "usr/local/bin/python3", "bin/python3")


class InjectError(Exception):
    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


def runtime_mode():
    """nvidia-container-runtime.mode of /etc/nvidia-container-runtime/config.toml ("auto"
    when the file or the key is not there)."""
    section = ""
    for raw in (read_text(RUNTIME_CONFIG) or "").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("[") and line.endswith("]"):
            section = line.strip("[]").strip().strip('"')
        elif section == "nvidia-container-runtime" and line.partition("=")[0].strip() == "mode":
            value = line.partition("=")[2].strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                return value[1:-1]
    return "auto"


def env_map(spec):
    env = {}
    for item in (spec.get("process") or {}).get("env") or []:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def requested_devices(env):
    """getDevicesFromEnvvar: None means "no GPUs wanted, leave the container alone"."""
    legacy_image = "CUDA_VERSION" in env and "NVIDIA_REQUIRE_CUDA" not in env
    devices = env.get("NVIDIA_VISIBLE_DEVICES")
    if devices is None:
        return "all" if legacy_image else None
    if devices == "" or devices == "void":
        return None
    return devices


def resolve(requested, gpus):
    if requested == "none":
        return []
    chosen = []
    for token in (t.strip() for t in requested.split(",")):
        if not token:
            continue
        if token == "all":  # noqa: S105 (a device list, no secret)
            matches = gpus
        else:
            matches = [g for g in gpus if token in (str(g["index"]), g["uuid"])]
        if not matches:
            raise InjectError(f"nvidia-container-cli: device error: {token}: unknown device")
        chosen.extend(g for g in matches if g not in chosen)
    return sorted(chosen, key=lambda g: int(g["index"]))


def cuda_state():
    """What cuInit answers in a container started now (written as cuda.json): on an
    NVSwitch board CUDA initialises only while Fabric Manager runs and, where the GPUs
    register with the NVLink fabric, once it has brought the fabric up (Completed)."""
    if not fabric_ready(read_board(), host_fabric()):
        return dict(CUDA_SYSTEM_NOT_READY)
    return {"init_error": 0}


def nvidia_smi_for(root, container_gpus, driver, persistence):
    if any(os.path.lexists(resolve_in_root(root, p)) for p in PYTHONS):
        try:
            with open(host_path("/usr/bin/nvidia-smi"), encoding="utf-8") as f:
                text = f.read()
        except OSError:
            text = None
        if text is not None:
            lines = text.split("\n", 1)
            if lines[0].startswith("#!"):
                text = "#!/usr/bin/env python3\n" + (lines[1] if len(lines) > 1 else "")
            return text
    return render_sh_nvidia_smi(container_gpus, driver, persistence)


def inject_gpus(spec, bundle, container_id, injection):
    """Give the container of SPEC (its bundle BUNDLE) the GPUs NVIDIA_VISIBLE_DEVICES asks
    for, as nvidia-container-cli (INJECTION "legacy-hook") or the runtime's CDI edits
    ("jit-cdi", "cdi") would; the lab's version of it: the assignment recorded, the
    container's view of its GPUs written into its root file system. Returns the record,
    or None for a container that asks for no GPU. InjectError when it cannot be done."""
    env = env_map(spec)
    requested = requested_devices(env)
    if requested is None:
        return None

    library = installed_library_version()
    if library is None:
        raise InjectError("nvidia-container-cli: initialization error: load library failed: "
                          "libnvidia-ml.so.1: cannot open shared object file: no such file "
                          "or directory")
    driver = loaded_driver_version()
    if driver is None:
        raise InjectError("nvidia-container-cli: initialization error: nvml error: "
                          "driver not loaded")
    if driver != library:
        raise InjectError("nvidia-container-cli: initialization error: nvml error: "
                          "driver/library version mismatch")

    gpus = load_gpus()
    chosen = resolve(requested, gpus)
    faults = load_gpu_faults()
    # a GPU off the bus has no NVML handle: nvidia-container-cli's device information
    # walks every GPU of the host, the runtime's CDI spec the GPUs it injects
    lost = [g for g in (gpus if injection == "legacy-hook" else chosen)
            if faults.get(g["uuid"], {}).get("lost")]
    if lost and injection == "legacy-hook":
        raise InjectError("nvidia-container-cli: detection error: nvml error: unknown error")
    if lost:
        raise InjectError(f"failed to create CDI spec: failed to get device handle for "
                          f"{lost[0]['uuid']}: Unknown Error")
    root = (spec.get("root") or {}).get("path") or "rootfs"
    if not os.path.isabs(root):
        root = os.path.join(bundle, root)

    record = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "container_id": container_id,
        "requested": requested,
        "indexes": [int(g["index"]) for g in chosen],
        "uuids": [g["uuid"] for g in chosen],
        "rootfs": root,
        "injection": injection,
    }
    log_path = host_path(ASSIGNMENTS_LOG)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")

    container_gpus = [{**g, "index": i} for i, g in enumerate(chosen)]
    host_persistence = load_persistence()
    persistence = {g["uuid"]: host_persistence[g["uuid"]] for g in chosen
                   if g["uuid"] in host_persistence}
    live = {"GPU_ACCESS": "ok", **live_fabric_values(host_fabric()),
            **fault_live_values([g["uuid"] for g in chosen], faults)}
    try:
        write_in_root(root, GPUS_JSON, json.dumps({"gpus": container_gpus}, indent=2) + "\n")
        write_in_root(root, DRIVER_MARKER, driver + "\n")
        write_in_root(root, PERSISTENCE_JSON, json.dumps(persistence, indent=2) + "\n")
        write_in_root(root, CUDA_JSON, json.dumps(cuda_state(), indent=2) + "\n")
        write_in_root(root, LIVE_ENV, live_text(live))
        write_in_root(root, "/usr/bin/nvidia-smi",
                      nvidia_smi_for(root, container_gpus, driver, persistence), 0o755)
    except ValueError as exc:
        raise InjectError(str(exc)) from None
    return record


def kernel_slot(pci_bus_id):
    """nvidia-smi's bus id (00000000:18:00.0) as the kernel names it (0000:18:00.0)."""
    domain, _, rest = str(pci_bus_id).partition(":")
    try:
        return f"{int(domain, 16):04x}:{rest.lower()}"
    except ValueError:
        return str(pci_bus_id).lower()


BOOTED_KERNEL = "/run/fleetlab/booted-kernel"


def kernel_release():
    """The running kernel: the one the lab host booted (what its `uname -r` says), else
    the machine's own (no lab kernel installed, or outside a lab host)."""
    return (read_text(BOOTED_KERNEL) or "").strip() or os.uname().release


def read_module(kernel=None):
    """(version, flavour) of the module DKMS built for KERNEL (default: the running one),
    or None when there is none."""
    text = read_text(MODULE_FILE.format(kernel=kernel or kernel_release()))
    if text is None or not text.split():
        return None
    words = text.split()
    flavour = words[1] if len(words) > 1 and words[1] in ("open", "proprietary") \
        else "proprietary"
    return words[0], flavour


def pid_alive(pid):
    """Whether PID names a live process (a zombie has exited)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def read_pid_file(path):
    """The pid a pid file names, or None."""
    try:
        return int((read_text(path) or "").strip())
    except ValueError:
        return None


def remove_file(path):
    try:
        os.unlink(host_path(path))
    except FileNotFoundError:
        pass


def daemonize(pid_file, on_stop, log_path=None, on_ready=None):
    """Fork into the background as a Type=forking daemon does: the child starts a new
    session, writes its pid to PID_FILE (under $FLEETLAB_ROOT), runs ON_READY and tells
    the parent, which then exits 0. On SIGTERM/SIGINT the child runs ON_STOP, removes the
    pid file and exits 0. The child's output goes to LOG_PATH (or /dev/null)."""
    read_end, write_end = os.pipe()
    stopping = []

    def stop(signum, frame):
        if stopping:
            return
        stopping.append(signum)
        try:
            on_stop()
        finally:
            remove_file(pid_file)
            os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid > 0:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as ready:
            ok = ready.read(1) == b"1"
        os._exit(0 if ok else 1)
    os.close(read_end)
    os.setsid()
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    out = null
    if log_path:
        try:
            full = host_path(log_path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            out = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError:
            out = null
    os.dup2(out, 1)
    os.dup2(out, 2)
    full = host_path(pid_file)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full + ".tmp", "w", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(full + ".tmp", full)
    if on_ready is not None:
        on_ready()
    os.write(write_end, b"1")
    os.close(write_end)
    while True:
        signal.pause()


def load_persistence():
    data = read_json(PERSISTENCE_JSON, {})
    return data if isinstance(data, dict) else {}


def load_usage():
    data = read_json(USAGE_JSON, {})
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------- GPU memory in use

def _proc_text(pid, name):
    try:
        with open(host_path(f"/proc/{pid}/{name}"), encoding="utf-8",
                  errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _start_time(pid):
    """A process's start time (clock ticks since boot, /proc/PID/stat field 22): the same
    seen from the host and from the container."""
    text = _proc_text(pid, "stat")
    try:
        return int(text.rsplit(")", 1)[1].split()[19])
    except (AttributeError, IndexError, ValueError):
        return None


def _ns_pid(pid):
    """The pid in its own (innermost) PID namespace (NSpid of /proc/PID/status)."""
    for line in (_proc_text(pid, "status") or "").splitlines():
        if line.startswith("NSpid:"):
            try:
                return int(line.split()[-1])
            except (IndexError, ValueError):
                return None
    return None


def container_pids(container_ids):
    """{container id: [host pids]} of the processes in those containers (their cgroup
    path names the container id, whatever Docker's cgroup driver)."""
    out = {}
    wanted = [c for c in container_ids if c]
    if not wanted:
        return out
    try:
        names = os.listdir(host_path("/proc"))
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        text = _proc_text(name, "cgroup")
        if not text:
            continue
        for cid in wanted:
            if cid in text:
                out.setdefault(cid, []).append(int(name))
                break
    return out


def gpu_processes():
    """[{"pid", "uuid", "used_mib", "name"}]: the processes of the running GPU containers
    that hold GPU memory, by host pid, as the stand-in Ollama in each container reports
    its loaded models (/tmp/.fleetlab-gpu-usage.json in the container: its pid and start
    time there, and MiB per GPU UUID; a file whose process is gone counts for nothing)."""
    records = {r["container_id"]: r for r in gpu_containers() if r.get("container_id")}
    out = []
    for cid, pids in sorted(container_pids(list(records)).items()):
        allowed = set(records[cid].get("uuids") or [])
        doc = None
        for pid in pids:
            text = _proc_text(pid, "root" + CONTAINER_GPU_USAGE)
            if text is not None:
                try:
                    doc = json.loads(text)
                except ValueError:
                    doc = None
                break
        if not isinstance(doc, dict) or not isinstance(doc.get("gpus"), dict):
            continue
        owner = next((p for p in pids if _ns_pid(p) == doc.get("pid")
                      and _start_time(p) == doc.get("starttime")), None)
        if owner is None:
            continue
        for uuid, mib in sorted(doc["gpus"].items()):
            if uuid in allowed and isinstance(mib, int) and mib > 0:
                out.append({"pid": owner, "uuid": uuid, "used_mib": mib,
                            "name": str(doc.get("name") or "ollama")})
    return out


def own_container_usage():
    """In a container: {uuid: MiB} its own stand-in Ollama holds (a container sees no
    other container's processes)."""
    doc = read_json(CONTAINER_GPU_USAGE, {})
    gpus = doc.get("gpus") if isinstance(doc, dict) else None
    return {u: m for u, m in (gpus or {}).items() if isinstance(m, int) and m > 0}


# ---------------------------------------------------------------- nvidia-smi model

# canonical field -> unit shown in the CSV header and after values (None: no unit)
QUERY_FIELDS = {
    "timestamp": None,
    "driver_version": None,
    "count": None,
    "name": None,
    "serial": None,
    "uuid": None,
    "pci.bus_id": None,
    "index": None,
    "persistence_mode": None,
    "compute_mode": None,
    "compute_cap": None,
    "pstate": None,
    "fan.speed": "%",
    "mig.mode.current": None,
    "memory.total": "MiB",
    "memory.used": "MiB",
    "memory.free": "MiB",
    "utilization.gpu": "%",
    "utilization.memory": "%",
    "temperature.gpu": None,
    "power.draw": "W",
    "power.limit": "W",
    "fabric.state": None,
    "fabric.status": None,
    "ecc.mode.current": None,
    "ecc.errors.uncorrected.volatile.total": None,
}
# fields whose value is the live state, not the GPU's own
LIVE_FIELDS = ("fabric.state", "fabric.status", "ecc.errors.uncorrected.volatile.total")
QUERY_ALIASES = {
    "gpu_name": "name",
    "gpu_serial": "serial",
    "gpu_uuid": "uuid",
    "gpu_bus_id": "pci.bus_id",
}


def canonical_field(field):
    field = QUERY_ALIASES.get(field, field)
    return field if field in QUERY_FIELDS else None


def csv_header(field):
    unit = QUERY_FIELDS[field]
    return f"{field} [{unit}]" if unit else field


def gpu_state(gpu, driver_version, count, persistence, usage, fabric=("N/A", "N/A"),
              faults=None, held_mib=0):
    """All queryable values of one GPU, as strings without units (FABRIC: its fabric's
    State and Status; FAULTS: the lab's faults by UUID; HELD_MIB: what processes hold)."""
    compute_cap, power_limit, idle_power, idle_temp = model_spec(gpu)
    use = usage.get(gpu["uuid"])
    use = use if isinstance(use, dict) else {}
    total = int(gpu["memory_total_mib"])
    used = int(use.get("memory_used_mib", IDLE_MEMORY_USED_MIB + held_mib))
    fault = (faults or {}).get(gpu["uuid"]) or {}
    used = max(0, min(used, total))
    util = max(0, min(100, int(use.get("utilization_gpu", 0))))
    util_mem = max(0, min(100, int(use.get("utilization_memory", util // 2))))
    power = idle_power + (power_limit - idle_power) * util / 100.0
    temp = idle_temp + sum(map(ord, gpu["uuid"])) % 7 + util * 40 // 100
    return {
        "timestamp": time.strftime("%Y/%m/%d %H:%M:%S.") + f"{int(time.time() * 1000) % 1000:03d}",
        "driver_version": driver_version,
        "count": str(count),
        "name": gpu["name"],
        "serial": str(gpu.get("serial", "[N/A]")),
        "uuid": gpu["uuid"],
        "pci.bus_id": gpu["pci_bus_id"],
        "index": str(gpu["index"]),
        "persistence_mode": "Enabled" if persistence.get(gpu["uuid"]) else "Disabled",
        "compute_mode": "Default",
        "compute_cap": compute_cap,
        "pstate": "P0",
        "fan.speed": "[N/A]",
        "mig.mode.current": "Disabled",
        "memory.total": str(total),
        "memory.used": str(used),
        "memory.free": str(total - used),
        "utilization.gpu": str(util),
        "utilization.memory": str(util_mem),
        "temperature.gpu": str(temp),
        "power.draw": f"{power:.2f}",
        "power.limit": f"{power_limit:.2f}",
        "fabric.state": fabric[0],
        "fabric.status": fabric[1],
        "ecc.mode.current": "Enabled",
        "ecc.errors.uncorrected.volatile.total": str(fault.get("ecc_dbe_volatile", 0)),
    }


def csv_value(field, state, nounits):
    value = state[field]
    unit = QUERY_FIELDS[field]
    if unit and not nounits and not value.startswith("["):
        return f"{value} {unit}"
    return value


def render_list(gpus, lost=()):
    """`nvidia-smi -L`; a GPU in LOST (UUIDs: off the bus) is its handle error instead."""
    return "".join(handle_error_line(g, list_form=True) if g["uuid"] in lost else
                   f"GPU {g['index']}: {g['name']} (UUID: {g['uuid']})\n" for g in gpus)


def render_csv(fields, gpus, states, noheader, nounits, lost=()):
    """`--query-gpu`; a GPU in LOST (UUIDs) is its handle error in place of its row."""
    lines = []
    if not noheader:
        lines.append(", ".join(csv_header(f) for f in fields) + "\n")
    for gpu in gpus:
        if gpu["uuid"] in lost:
            lines.append(handle_error_line(gpu))
            continue
        state = states[gpu["uuid"]]
        lines.append(", ".join(csv_value(f, state, nounits) for f in fields) + "\n")
    return "".join(lines)


def render_processes(gpus, processes):
    """The Processes section's rows (compute processes, "C"), or its "No running processes
    found" line."""
    index = {g["uuid"]: g["index"] for g in gpus}
    rows = []
    for proc in processes:
        if proc["uuid"] not in index:
            continue
        name = proc["name"] if len(proc["name"]) <= 36 else "..." + proc["name"][-33:]
        rows.append(f"{index[proc['uuid']]:>5}{'N/A':>6}{'N/A':>5}{proc['pid']:>16}"
                    f"{'C':>7}   {name:<36}{str(proc['used_mib']) + 'MiB':>10} ")
    return rows or ["  No running processes found"]


def _cell(text, width):
    return text[:width].ljust(width)


def render_table(gpus, states, driver_version, processes=()):
    """The default nvidia-smi view (layout of the 550/570 drivers); PROCESSES as
    gpu_processes() returns them."""
    cuda = cuda_version(driver_version)
    out = [time.strftime("%a %b %d %H:%M:%S %Y") + "       "]
    full = "+" + "-" * 89 + "+"
    out.append(full)
    head = f" NVIDIA-SMI {driver_version:<22} Driver Version: {driver_version:<14} " \
           f"CUDA Version: {cuda}"
    out.append("|" + _cell(head, 89) + "|")
    out.append("|" + "-" * 41 + "+" + "-" * 24 + "+" + "-" * 22 + "+")
    out.append("| GPU  Name                 Persistence-M | Bus-Id          Disp.A |"
               " Volatile Uncorr. ECC |")
    out.append("| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage |"
               " GPU-Util  Compute M. |")
    out.append("|                                         |                        |"
               "               MIG M. |")
    out.append("|" + "=" * 41 + "+" + "=" * 24 + "+" + "=" * 22 + "|")
    for gpu in gpus:
        s = states[gpu["uuid"]]
        pm = "On" if s["persistence_mode"] == "Enabled" else "Off"
        name = gpu["name"] if len(gpu["name"]) <= 29 else gpu["name"][:26] + "..."
        c1 = f"{gpu['index']:>4}  {name:<29}{pm:>4}  "
        c2 = f"   {gpu['pci_bus_id']:<16} Off "
        c3 = f"{s['ecc.errors.uncorrected.volatile.total']:>21} "
        out.append(f"|{_cell(c1, 41)}|{_cell(c2, 24)}|{_cell(c3, 22)}|")
        power = f"{round(float(s['power.draw']))}W / {round(float(s['power.limit'])):>4}W"
        c1 = f" N/A  {s['temperature.gpu']:>3}C    {s['pstate']}{power:>24} "
        c2 = f"{s['memory.used']:>8}MiB / {s['memory.total']:>6}MiB "
        c3 = f"{s['utilization.gpu']:>7}%      Default "
        out.append(f"|{_cell(c1, 41)}|{_cell(c2, 24)}|{_cell(c3, 22)}|")
        out.append("|" + " " * 41 + "|" + " " * 24 + "|" + "Disabled ".rjust(22) + "|")
        out.append("+" + "-" * 41 + "+" + "-" * 24 + "+" + "-" * 22 + "+")
    out.append(" " * 89)
    out.append(full)
    out.append("|" + _cell(" Processes:", 89) + "|")
    out.append("|" + _cell("  GPU   GI   CI              PID   Type   Process name"
                           "                        GPU Memory ", 89) + "|")
    out.append("|" + _cell("        ID   ID                                        "
                           "                       Usage      ", 89) + "|")
    out.append("|" + "=" * 89 + "|")
    out += ["|" + _cell(row, 89) + "|" for row in render_processes(gpus, processes)]
    out.append(full)
    return "\n".join(out) + "\n"


def render_version(driver_version):
    return (f"NVIDIA-SMI version  : {driver_version}\n"
            f"NVML version        : {nvml_version(driver_version)}\n"
            f"DRIVER version      : {driver_version}\n"
            f"CUDA Version        : {cuda_version(driver_version)}\n")


def _row(label, value, indent=4):
    return f"{' ' * indent}{label:<{42 - indent}}: {value}\n"


def render_full(gpus, states, driver, count):
    """The start of `nvidia-smi -q`: its header and, per GPU, the identity, persistence
    mode, Fabric, PCI and memory sections (the real tool prints many more). The Fabric
    section is the GPU's registration with the NVLink fabric (State, Status, CliqueId,
    ClusterUUID): all N/A where the GPU does not register with a fabric."""
    out = ["\n==============NVSMI LOG==============\n\n",
           _row("Timestamp", time.strftime("%a %b %d %H:%M:%S %Y"), 0),
           _row("Driver Version", driver, 0),
           _row("CUDA Version", cuda_version(driver), 0), "\n",
           _row("Attached GPUs", str(count), 0)]
    for gpu in gpus:
        s = states[gpu["uuid"]]
        bus = gpu["pci_bus_id"]
        domain, bus_no, rest = (bus.split(":") + ["", ""])[:3]
        device = gpu_device_id(gpu)
        out.append(f"GPU {bus}\n")
        out.append(_row("Product Name", gpu["name"]))
        out.append(_row("Product Brand", "NVIDIA"))
        out.append(_row("Display Mode", "Disabled"))
        out.append(_row("Persistence Mode", s["persistence_mode"]))
        out.append(_row("Serial Number", s["serial"]))
        out.append(_row("GPU UUID", gpu["uuid"]))
        out.append(_row("Minor Number", str(gpu["index"])))
        out.append("    Fabric\n")
        out.append(_row("State", s["fabric.state"], 8))
        out.append(_row("Status", s["fabric.status"], 8))
        done = s["fabric.state"] == "Completed"
        out.append(_row("CliqueId", "0" if done else "N/A", 8))
        out.append(_row("ClusterUUID", "00000000-0000-0000-0000-000000000000" if done
                        else "N/A", 8))
        out.append("    PCI\n")
        out.append(_row("Bus", f"0x{bus_no}", 8))
        out.append(_row("Device", f"0x{rest.split('.')[0]}", 8))
        out.append(_row("Domain", f"0x{domain[-4:]}", 8))
        out.append(_row("Device Id", f"0x{device:04X}10DE" if device is not None else "N/A",
                        8))
        out.append(_row("Bus Id", bus, 8))
        out.append("    FB Memory Usage\n")
        out.append(_row("Total", f"{s['memory.total']} MiB", 8))
        out.append(_row("Used", f"{s['memory.used']} MiB", 8))
        out.append(_row("Free", f"{s['memory.free']} MiB", 8))
        out.append(_row("Compute Mode", s["compute_mode"]))
        out.append("\n")
    return "".join(out)


def render_sh_nvidia_smi(gpus, driver_version, persistence):
    """A POSIX sh nvidia-smi for containers without python3.

    The outputs are rendered now (when the container starts); it answers plain
    `nvidia-smi`, `-L`, `-q`, `--version` and `--query-gpu=... --format=csv[,noheader]
    [,nounits]`. What is live it reads at every run from /etc/fleetlab/live.env (under
    $FLEETLAB_ROOT): the fabric's state, and GPU_ACCESS=lost, when every command fails as
    NVML does in a container cut off its devices ("Failed to initialize NVML: Unknown
    Error", exit status 255); the GPUs off the bus (GPU_LOST: their handle error in place
    of their line, exit status 255) and their volatile uncorrected ECC count (GPU_ECC_DBE).
    """
    states = {g["uuid"]: gpu_state(g, driver_version, len(gpus), persistence, {}) for g in gpus}
    q = shlex.quote

    def full(fabric):
        return render_full(gpus, {u: {**st, "fabric.state": fabric[0], "fabric.status": fabric[1]}
                                  for u, st in states.items()}, driver_version, len(gpus))

    lines = [
        "#!/bin/sh",
        "# Fleet lab stand-in for nvidia-smi, written into this container by the",
        "# lab's nvidia-container-runtime-hook (the image has no python3). Its answers",
        "# were rendered when the container started, but for the live state the host side",
        "# keeps in /etc/fleetlab/live.env. Not the real nvidia-smi.",
        f"TABLE={q(render_table(gpus, states, driver_version))}",
        f"LIST={q(render_list(gpus))}",
        f"VERSION={q(render_version(driver_version))}",
        f"FULL_NA={q(full(('N/A', 'N/A')))}",
        f"FULL_PROGRESS={q(full(('In Progress', 'N/A')))}",
        f"FULL_DONE={q(full(('Completed', 'Success')))}",
        'LIVE="${FLEETLAB_ROOT:-}/etc/fleetlab/live.env"',
        "live() {",
        '  [ -r "$LIVE" ] || return 0',
        "  while IFS='=' read -r k v; do",
        '    if [ "$k" = "$1" ]; then printf %s "$v"; return 0; fi',
        '  done < "$LIVE"',
        "}",
        "fabric() {",
        '  FSTATE=N/A; FSTATUS=N/A; FULL=$FULL_NA',
        '  [ "$(live FABRIC)" = supported ] || return 0',
        '  FSTATE="In Progress"; FULL=$FULL_PROGRESS',
        '  [ "$(live FM_RUNNING)" = 1 ] || return 0',
        '  at=$(live FABRIC_COMPLETED_AT)',
        '  [ "$(date +%s)" -ge "${at:-0}" ] 2>/dev/null || return 0',
        '  FSTATE=Completed; FSTATUS=Success; FULL=$FULL_DONE',
        "}",
        "uuid_of() {",
        '  case "$1" in',
        *[f"    {g['index']}) printf %s {q(g['uuid'])} ;;" for g in gpus],
        "  esac",
        "}",
        "handle() {",
        '  case "$1:$2" in',
        *[f"    {g['index']}:{form}) printf %s {q(handle_error_line(g, form == 'list'))} ;;"
          for g in gpus for form in ("list", "other")],
        *[f"    {g['index']}:ok) printf %s {q(render_list([g]))} ;;" for g in gpus],
        "  esac",
        "}",
        "lost() {",
        '  case ",$(live GPU_LOST)," in *,"$(uuid_of "$1")",*) return 0 ;; esac',
        "  return 1",
        "}",
        "any_lost() {",
        "  i=0",
        '  while [ "$i" -lt "$COUNT" ]; do',
        '    if lost "$i"; then LOST=$i; return 0; fi',
        "    i=$((i + 1))",
        "  done",
        "  return 1",
        "}",
        "ecc() {",
        "  IFS=,",
        '  for p in $(live GPU_ECC_DBE); do',
        '    if [ "${p%:*}" = "$1" ]; then printf %s "${p##*:}"; return 0; fi',
        "  done",
        "  printf 0",
        "}",
        "hdr() {",
        '  case "$1" in',
    ]
    names = {**{f: f for f in QUERY_FIELDS}, **QUERY_ALIASES}
    for name, field in sorted(names.items()):
        lines.append(f"    {q(name)}) printf %s {q(csv_header(field))} ;;")
    lines += ["    *) return 1 ;;", "  esac", "}", "val() {", '  case "$1:$2:$3" in']
    for gpu in gpus:
        state = states[gpu["uuid"]]
        for name, field in sorted(names.items()):
            if field == "timestamp" or field in LIVE_FIELDS:
                continue
            for nounits in (0, 1):
                key = f"{gpu['index']}:{name}:{nounits}"
                lines.append(f"    {q(key)}) printf %s {q(csv_value(field, state, nounits))} ;;")
    lines += [
        "    *:timestamp:*) date '+%Y/%m/%d %H:%M:%S.000' | tr -d '\\n' ;;",
        '    *:fabric.state:*) printf %s "$FSTATE" ;;',
        '    *:fabric.status:*) printf %s "$FSTATUS" ;;',
        '    *:ecc.errors.uncorrected.volatile.total:*) ecc "$(uuid_of "$1")" ;;',
        "  esac",
        "}",
        f"COUNT={len(gpus)}",
        "mode=table; query=; format=",
        'while [ $# -gt 0 ]; do',
        '  case "$1" in',
        "    -L|--list-gpus) mode=list ;;",
        "    -q|--query) mode=full ;;",
        "    --version) mode=version ;;",
        '    --query-gpu=*) mode=query; query="${1#--query-gpu=}" ;;',
        '    --query-gpu) mode=query; shift; query="$1" ;;',
        '    --format=*) format="${1#--format=}" ;;',
        '    --format) shift; format="$1" ;;',
        "    *) echo \"nvidia-smi (fleet lab stand-in, no python3 in this container):"
        " option '$1' is not simulated here\" >&2; exit 2 ;;",
        "  esac",
        "  shift",
        "done",
        'if [ "$(live GPU_ACCESS)" = lost ]; then',
        '  echo "Failed to initialize NVML: Unknown Error"; exit 255',
        "fi",
        "fabric",
        "rc=0",
        'case "$mode" in',
        "  list)",
        '    [ "$COUNT" -gt 0 ] || { echo "No devices were found"; exit 6; }',
        '    if ! any_lost; then printf %s "$LIST"; exit 0; fi',
        "    i=0",
        '    while [ "$i" -lt "$COUNT" ]; do',
        '      if lost "$i"; then handle "$i" list; rc=255; else handle "$i" ok; fi',
        "      i=$((i + 1))",
        "    done ;;",
        '  full) [ "$COUNT" -gt 0 ] || { echo "No devices were found"; exit 6; };'
        ' if any_lost; then handle "$LOST" other; exit 255; fi; printf %s "$FULL" ;;',
        '  version) printf %s "$VERSION" ;;',
        '  table) [ "$COUNT" -gt 0 ] || { echo "No devices were found"; exit 6; };'
        ' if any_lost; then handle "$LOST" other; exit 255; fi; printf %s "$TABLE" ;;',
        "  query)",
        '    case ",$format," in *,csv,*) ;; *) echo "Invalid combination of input arguments.'
        " Please run 'nvidia-smi -h' for help.\"; exit 2 ;; esac",
        '    noheader=0; nounits=0',
        '    case ",$format," in *,noheader,*) noheader=1 ;; esac',
        '    case ",$format," in *,nounits,*) nounits=1 ;; esac',
        "    oldifs=$IFS; IFS=,",
        '    for f in $query; do hdr "$f" >/dev/null || { echo "Field \\"$f\\" is not a valid'
        ' field to query."; echo; exit 2; }; done',
        '    [ "$COUNT" -gt 0 ] || { echo "No devices were found"; exit 6; }',
        '    if [ "$noheader" = 0 ]; then sep=; for f in $query; do printf "%s%s" "$sep"'
        ' "$(hdr "$f")"; sep=", "; done; echo; fi',
        "    i=0",
        '    while [ "$i" -lt "$COUNT" ]; do',
        '      if lost "$i"; then handle "$i" other; rc=255; i=$((i + 1)); continue; fi',
        '      sep=; for f in $query; do printf "%s%s" "$sep" "$(val "$i" "$f" "$nounits")";'
        ' sep=", "; done; echo',
        "      i=$((i + 1))",
        "    done",
        "    IFS=$oldifs ;;",
        "esac",
        'exit "$rc"',
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- logrus-like logging

class GoLogger:
    """Log lines the way logrus' default TextFormatter writes them to stderr."""

    COLORS = {"debug": 37, "info": 36, "warning": 33, "error": 31}

    def __init__(self, stream=None, level="info"):
        self.stream = stream or sys.stderr
        self.start = time.time()
        self.level = level
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False

    def _enabled(self, level):
        order = ["debug", "info", "warning", "error"]
        return order.index(level) >= order.index(self.level)

    @staticmethod
    def _quote(text):
        safe = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._/@^+")
        if text and all(c in safe for c in text):
            return text
        return json.dumps(text, ensure_ascii=False)

    def log(self, level, msg):
        if not self._enabled(level):
            return
        msg = msg[:-1] if msg.endswith("\n") else msg
        if self.tty:
            text = level.upper()[:4]
            secs = int(time.time() - self.start)
            line = f"\x1b[{self.COLORS[level]}m{text}\x1b[0m[{secs:04d}] {msg:<44} "
        else:
            now = datetime.datetime.now().astimezone().replace(microsecond=0)
            stamp = now.isoformat()
            if stamp.endswith("+00:00"):
                stamp = stamp[:-6] + "Z"
            line = f"time={self._quote(stamp)} level={level} msg={self._quote(msg)}"
        self.stream.write(line + "\n")
        self.stream.flush()

    def info(self, msg):
        self.log("info", msg)

    def warning(self, msg):
        self.log("warning", msg)

    def error(self, msg):
        self.log("error", msg)

    def debug(self, msg):
        self.log("debug", msg)

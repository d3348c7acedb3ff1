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
#   /run/fleetlab/fabricmanager.pid         the Fabric Manager stand-in, while it runs
#   /run/nvidia-persistenced/nvidia-persistenced.pid
#                                           the nvidia-persistenced stand-in, while it runs
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
PERSISTENCED_PID_FILE = "/run/nvidia-persistenced/nvidia-persistenced.pid"

# PCI device ids (NVIDIA's supportedchips tables, pci.ids). Blackwell runs only with the
# open kernel modules; the SXM parts of HGX B200/B300 mean an NVSwitch board although
# their NVSwitches are not PCI devices of the host.
BLACKWELL_DEVICE_RANGES = ((0x2900, 0x2FFF), (0x3182, 0x3182), (0x31C2, 0x31C3))
HGX_BLACKWELL_DEVICES = (0x2901, 0x3182)

# name -> (compute capability, power limit W, idle power W, idle temperature C)
MODEL_SPECS = {
    "NVIDIA H100 80GB HBM3": ("9.0", 700.0, 69.7, 31),
    "NVIDIA A100-SXM4-80GB": ("8.0", 400.0, 61.2, 30),
    "NVIDIA L40S": ("8.9", 350.0, 34.5, 28),
    "NVIDIA B200": ("10.0", 1000.0, 140.0, 32),
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
    return MODEL_SPECS.get(gpu.get("name", ""), DEFAULT_SPEC)


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
    return {"gpus": gpus, "board": board, "nvswitches": switches}


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


def kernel_slot(pci_bus_id):
    """nvidia-smi's bus id (00000000:18:00.0) as the kernel names it (0000:18:00.0)."""
    domain, _, rest = str(pci_bus_id).partition(":")
    try:
        return f"{int(domain, 16):04x}:{rest.lower()}"
    except ValueError:
        return str(pci_bus_id).lower()


def kernel_release():
    return os.uname().release


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


def daemonize(pid_file, on_stop, log_path=None):
    """Fork into the background as a Type=forking daemon does: the child starts a new
    session, writes its pid to PID_FILE (under $FLEETLAB_ROOT) and tells the parent,
    which then exits 0. On SIGTERM/SIGINT the child runs ON_STOP, removes the pid file
    and exits 0. The child's output goes to LOG_PATH (or /dev/null)."""
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
}
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


def gpu_state(gpu, driver_version, count, persistence, usage):
    """All queryable values of one GPU, as strings without units."""
    compute_cap, power_limit, idle_power, idle_temp = model_spec(gpu)
    use = usage.get(gpu["uuid"])
    use = use if isinstance(use, dict) else {}
    total = int(gpu["memory_total_mib"])
    used = int(use.get("memory_used_mib", IDLE_MEMORY_USED_MIB))
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
    }


def csv_value(field, state, nounits):
    value = state[field]
    unit = QUERY_FIELDS[field]
    if unit and not nounits and not value.startswith("["):
        return f"{value} {unit}"
    return value


def render_list(gpus):
    return "".join(f"GPU {g['index']}: {g['name']} (UUID: {g['uuid']})\n" for g in gpus)


def render_csv(fields, gpus, states, noheader, nounits):
    lines = []
    if not noheader:
        lines.append(", ".join(csv_header(f) for f in fields))
    for gpu in gpus:
        state = states[gpu["uuid"]]
        lines.append(", ".join(csv_value(f, state, nounits) for f in fields))
    return "".join(line + "\n" for line in lines)


def _cell(text, width):
    return text[:width].ljust(width)


def render_table(gpus, states, driver_version):
    """The default nvidia-smi view (layout of the 550/570 drivers)."""
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
        c3 = f"{'0':>21} "
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
    out.append("|" + _cell("  No running processes found", 89) + "|")
    out.append(full)
    return "\n".join(out) + "\n"


def render_version(driver_version):
    return (f"NVIDIA-SMI version  : {driver_version}\n"
            f"NVML version        : {nvml_version(driver_version)}\n"
            f"DRIVER version      : {driver_version}\n"
            f"CUDA Version        : {cuda_version(driver_version)}\n")


def render_sh_nvidia_smi(gpus, driver_version, persistence):
    """A POSIX sh nvidia-smi for containers without python3.

    The outputs are rendered now (when the container starts); it answers plain
    `nvidia-smi`, `-L`, `--version` and `--query-gpu=... --format=csv[,noheader][,nounits]`.
    """
    states = {g["uuid"]: gpu_state(g, driver_version, len(gpus), persistence, {}) for g in gpus}
    q = shlex.quote
    lines = [
        "#!/bin/sh",
        "# Fleet lab stand-in for nvidia-smi, written into this container by the",
        "# lab's nvidia-container-runtime-hook (the image has no python3). Its answers",
        "# were rendered when the container started. Not the real nvidia-smi.",
        f"TABLE={q(render_table(gpus, states, driver_version))}",
        f"LIST={q(render_list(gpus))}",
        f"VERSION={q(render_version(driver_version))}",
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
            if field == "timestamp":
                continue
            for nounits in (0, 1):
                key = f"{gpu['index']}:{name}:{nounits}"
                lines.append(f"    {q(key)}) printf %s {q(csv_value(field, state, nounits))} ;;")
    lines += [
        "    *:timestamp:*) date '+%Y/%m/%d %H:%M:%S.000' | tr -d '\\n' ;;",
        "  esac",
        "}",
        f"COUNT={len(gpus)}",
        "mode=table; query=; format=",
        'while [ $# -gt 0 ]; do',
        '  case "$1" in',
        "    -L|--list-gpus) mode=list ;;",
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
        'case "$mode" in',
        '  list) printf %s "$LIST"; [ "$COUNT" -gt 0 ] || { echo "No devices were found";'
        " exit 6; } ;;",
        '  version) printf %s "$VERSION" ;;',
        '  table) [ "$COUNT" -gt 0 ] || { echo "No devices were found"; exit 6; };'
        ' printf %s "$TABLE" ;;',
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
        '      sep=; for f in $query; do printf "%s%s" "$sep" "$(val "$i" "$f" "$nounits")";'
        ' sep=", "; done; echo',
        "      i=$((i + 1))",
        "    done",
        "    IFS=$oldifs ;;",
        "esac",
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

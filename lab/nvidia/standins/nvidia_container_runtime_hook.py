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
# not yet initialized") although nvidia-smi lists every GPU. A CUDA program decides at
# its start, so a Fabric Manager started later helps only containers started after it.
import datetime
import json
import os
import sys

# fleetlab:common-begin
from fleetlab_common import (
    ASSIGNMENTS_LOG,
    BAKED_TOOLKIT_VERSION,
    DRIVER_MARKER,
    FM_PID_FILE,
    GPUS_JSON,
    PERSISTENCE_JSON,
    baked,
    board_needs_fabricmanager,
    host_path,
    installed_library_version,
    load_gpus,
    load_persistence,
    loaded_driver_version,
    pid_alive,
    read_board,
    read_pid_file,
    render_sh_nvidia_smi,
)

# fleetlab:common-end

PYTHONS = ("usr/bin/python3", "usr/local/bin/python3", "bin/python3")

# What cuInit answers in the container.
CUDA_JSON = "/etc/fleetlab/cuda.json"
CUDA_SYSTEM_NOT_READY = {"init_error": 802, "name": "CUDA_ERROR_SYSTEM_NOT_READY",
                         "message": "system not yet initialized"}


class HookError(Exception):
    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


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
            raise HookError(f"nvidia-container-cli: device error: {token}: unknown device")
        chosen.extend(g for g in matches if g not in chosen)
    return sorted(chosen, key=lambda g: int(g["index"]))


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
                raise HookError(f"too many levels of symbolic links: {path}")
            target = os.readlink(full)
            if target.startswith("/"):
                current = ""
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        current = candidate
    return os.path.join(root, current)


def cuda_state():
    """What cuInit answers in a container started now (written as cuda.json): Fabric
    Manager counts as running when its pid file names a live process."""
    pid = read_pid_file(FM_PID_FILE)
    if board_needs_fabricmanager(read_board()) and not (pid and pid_alive(pid)):
        return dict(CUDA_SYSTEM_NOT_READY)
    return {"init_error": 0}


def write_in_root(root, path, data, mode=0o644):
    parent = resolve_in_root(root, os.path.dirname(path))
    os.makedirs(parent, exist_ok=True)
    target = resolve_in_root(root, path)
    if os.path.lexists(target) and not os.path.isfile(target):
        raise HookError(f"cannot write {path} in the container: not a regular file")
    tmp = target + ".fleetlab-tmp"
    with open(tmp, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    os.chmod(tmp, mode)
    os.replace(tmp, target)


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

    env = env_map(spec)
    requested = requested_devices(env)
    if requested is None:
        return 0

    library = installed_library_version()
    if library is None:
        raise HookError("nvidia-container-cli: initialization error: load library failed: "
                        "libnvidia-ml.so.1: cannot open shared object file: no such file "
                        "or directory")
    driver = loaded_driver_version()
    if driver is None:
        raise HookError("nvidia-container-cli: initialization error: nvml error: "
                        "driver not loaded")
    if driver != library:
        raise HookError("nvidia-container-cli: initialization error: nvml error: "
                        "driver/library version mismatch")

    gpus = load_gpus()
    chosen = resolve(requested, gpus)

    record = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "container_id": state.get("id", ""),
        "requested": requested,
        "indexes": [int(g["index"]) for g in chosen],
        "uuids": [g["uuid"] for g in chosen],
    }
    log_path = host_path(ASSIGNMENTS_LOG)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")

    root = (spec.get("root") or {}).get("path") or "rootfs"
    if not os.path.isabs(root):
        root = os.path.join(bundle, root)
    container_gpus = [{**g, "index": i} for i, g in enumerate(chosen)]
    host_persistence = load_persistence()
    persistence = {g["uuid"]: host_persistence[g["uuid"]] for g in chosen
                   if g["uuid"] in host_persistence}
    write_in_root(root, GPUS_JSON, json.dumps({"gpus": container_gpus}, indent=2) + "\n")
    write_in_root(root, DRIVER_MARKER, driver + "\n")
    write_in_root(root, PERSISTENCE_JSON, json.dumps(persistence, indent=2) + "\n")
    write_in_root(root, CUDA_JSON, json.dumps(cuda_state(), indent=2) + "\n")
    write_in_root(root, "/usr/bin/nvidia-smi",
                  nvidia_smi_for(root, container_gpus, driver, persistence), 0o755)
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

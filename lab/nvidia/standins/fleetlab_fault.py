#!/usr/bin/python3
# Fleet lab machinery, not a stand-in and never packaged: `python -m lab fault HOST KIND`
# pipes this script (the shared code inlined) into `python3 -` on the lab host, as root.
# It breaks the host the way the real fault would show, in the places the stand-ins read:
#
#   xid79 --gpu N      GPU N fell off the bus: NVRM's records in /dev/kmsg; the GPU marked
#                      lost (/run/fleetlab/gpu-faults.json, and every GPU container's
#                      live.env): nvidia-smi has no handle for it, the stand-in Ollama's
#                      requests on it fail, no container gets it; only a reboot clears it
#   xid48 --gpu N      a double-bit ECC error on GPU N: the Xid 48 record, the GPU's volatile
#                      uncorrected ECC count up by one, its requests failing until a GPU
#                      reset (`nvidia-smi -r -i N`, with nothing holding the GPU)
#   nvml-lost          the instance on GPU N (or --container NAME) loses its device nodes,
#                      as a `systemctl daemon-reload` does to the hook's injection
#                      (GPU_ACCESS=lost in its live.env); a restart through the runtime heals
#   fm-down            Fabric Manager is killed (SIGKILL): its unit fails, CUDA cannot
#                      initialise in a new runner or container on the NVSwitch board
#   cpu                the instance's server falls back to the CPU until its process
#                      restarts (SIGUSR1 to the stand-in Ollama: lab only)
#   hang               the instance's server is stopped (SIGSTOP): it accepts connections
#                      and answers nothing; SIGKILL (docker kill, restart) still ends it
#   crash              the instance's server dies (SIGKILL), as a crash
#   clear              undo what can be undone without a reboot
#
# Every absolute path is prefixed with $FLEETLAB_ROOT (default /), for tests.
import json
import os
import signal
import subprocess
import sys
import time

# fleetlab:common-begin
from fleetlab_common import (
    LIVE_ENV,
    board_needs_fabricmanager,
    container_pids,
    fabric_manager_pid,
    gpu_containers,
    host_path,
    kmsg_append,
    kmsg_pci,
    load_gpu_faults,
    load_gpus,
    parse_live,
    pid_alive,
    publish_fabric,
    publish_gpu_faults,
    read_board,
    resolve_in_root,
    save_gpu_faults,
    update_live,
)

# fleetlab:common-end

KINDS = ("xid79", "xid48", "nvml-lost", "fm-down", "cpu", "hang", "crash", "clear")
GPU_KINDS = ("xid79", "xid48")
INSTANCE_KINDS = ("nvml-lost", "cpu", "hang", "crash")
# the stand-in Ollama's lab-only signals (lab/ollama/standin/server.py)
CPU_ON, CPU_OFF = signal.SIGUSR1, signal.SIGUSR2


class FaultError(Exception):
    pass


def docker(*args):
    try:
        proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise FaultError(f"docker {args[0]}: {exc}") from None
    if proc.returncode != 0:
        raise FaultError(f"docker {args[0]}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def _cmdline(pid):
    try:
        with open(host_path(f"/proc/{pid}/cmdline"), "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def instances():
    """The running containers of this host whose Ollama server runs: [{"name", "id",
    "pid" (its `ollama serve`, host pid), "record" (its GPU injection, or None)}]."""
    names = {}
    for line in docker("ps", "--no-trunc", "--format", "{{.ID}}\t{{.Names}}").splitlines():
        cid, _, name = line.partition("\t")
        names[cid.strip()] = name.strip()
    records = {r.get("container_id"): r for r in gpu_containers()}
    out = []
    for cid, pids in sorted(container_pids(list(names)).items()):
        server = [p for p in sorted(pids) if b"serve" in _cmdline(p)
                  and any(b"ollama" in part for part in _cmdline(p))]
        if server:
            out.append({"name": names[cid], "id": cid, "pid": server[0],
                        "record": records.get(cid)})
    return out


def pick(gpu, container):
    """The instance --container names, else the one on GPU N."""
    running = instances()
    if container:
        for inst in running:
            if container in (inst["name"], inst["id"], inst["id"][:12]):
                return inst
        raise FaultError(f"no running Ollama instance named {container} (running: "
                         f"{', '.join(i['name'] for i in running) or 'none'})")
    index = 0 if gpu is None else gpu
    on_gpu = [i for i in running if i["record"] and index in i["record"].get("indexes", [])]
    if not on_gpu:
        raise FaultError(f"no running Ollama instance has GPU {index} (running: "
                         f"{', '.join(i['name'] for i in running) or 'none'})")
    if len(on_gpu) > 1:
        raise FaultError(f"GPU {index} is in {', '.join(i['name'] for i in on_gpu)}: "
                         "name one with --container")
    return on_gpu[0]


def the_gpu(gpu):
    gpus = load_gpus()
    index = 0 if gpu is None else gpu
    for g in gpus:
        if int(g["index"]) == index:
            return g
    raise FaultError(f"no GPU {index} on this host (GPUs 0..{len(gpus) - 1})")


def gpu_header(g):
    """The lines NVRM prints before a GPU's first Xid since the driver loaded."""
    return [f"NVRM: GPU at PCI:{kmsg_pci(g)}: {g['uuid']}",
            f"NVRM: GPU Board Serial Number: {g.get('serial', '')}"]


def xid79(gpu):
    g = the_gpu(gpu)
    faults = load_gpu_faults()
    if faults.get(g["uuid"], {}).get("lost"):
        return f"GPU {g['index']} is already off the bus"
    faults.setdefault(g["uuid"], {})["lost"] = True
    save_gpu_faults(faults)
    pci = kmsg_pci(g)
    kmsg_append([*gpu_header(g),
                 f"NVRM: Xid (PCI:{pci}): 79, pid='<unknown>', name=<unknown>, "
                 "GPU has fallen off the bus.",
                 f"NVRM: GPU {pci}.0: GPU has fallen off the bus."])
    publish_gpu_faults()
    return (f"GPU {g['index']} ({g['pci_bus_id']}) fell off the bus: Xid 79 in /dev/kmsg; "
            "nvidia-smi has no handle for it, Ollama fails on it; a reboot clears it")


def xid48(gpu):
    g = the_gpu(gpu)
    faults = load_gpu_faults()
    if faults.get(g["uuid"], {}).get("lost"):
        raise FaultError(f"GPU {g['index']} is off the bus: it reports nothing more")
    try:
        running = instances()
    except FaultError:  # no Docker (yet): nothing runs on the GPU
        running = []
    users = [i for i in running if i["record"] and g["uuid"] in i["record"]["uuids"]]
    who = (f"pid={users[0]['pid']}, name=ollama" if users
           else "pid='<unknown>', name=<unknown>")
    # as the driver does it: the Xid record and the count together, the record first (the
    # count read after the docker calls above, so a reset in between is not undone); a
    # record that came after a reset would describe an error the reset already cleared
    kmsg_append([*gpu_header(g),
                 f"NVRM: Xid (PCI:{kmsg_pci(g)}): 48, {who}, An uncorrectable double bit "
                 "error (DBE) has been detected on GPU in the framebuffer at partition 0, "
                 "subpartition 0."])
    faults = load_gpu_faults()
    fault = faults.setdefault(g["uuid"], {})
    fault["ecc_dbe_volatile"] = int(fault.get("ecc_dbe_volatile") or 0) + 1
    fault["reset_required"] = True
    save_gpu_faults(faults)
    publish_gpu_faults()
    return (f"GPU {g['index']} ({g['pci_bus_id']}): double-bit ECC error (Xid 48), volatile "
            f"uncorrected ECC {fault['ecc_dbe_volatile']}; Ollama fails on it until "
            f"`nvidia-smi -r -i {g['index']}` (nothing may hold the GPU)")


def nvml_lost(gpu, container):
    inst = pick(gpu, container)
    if inst["record"] is None:
        raise FaultError(f"{inst['name']} has no GPU to lose")
    update_live(inst["record"], {"GPU_ACCESS": "lost"})
    return (f"{inst['name']} lost its GPUs (Failed to initialize NVML: Unknown Error in "
            "it); a restart or recreate through the runtime gives them back")


def fm_down():
    if not board_needs_fabricmanager(read_board()):
        raise FaultError("not an NVSwitch board: no Fabric Manager here")
    pid = fabric_manager_pid()
    if pid is None:
        raise FaultError("Fabric Manager is not running")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    publish_fabric()
    return (f"Fabric Manager (pid {pid}) killed: nvidia-fabricmanager failed; new CUDA "
            "initialisation fails (802) until it runs again")


def signal_instance(gpu, container, signum, what):
    inst = pick(gpu, container)
    os.kill(inst["pid"], signum)
    return f"{inst['name']} (pid {inst['pid']}): {what}"


def clear():
    done = []
    faults = load_gpu_faults()
    gpus = {g["uuid"]: g for g in load_gpus()}
    lost = [gpus[u]["index"] for u, f in faults.items() if f["lost"] and u in gpus]
    if any(f["reset_required"] or f["ecc_dbe_volatile"] for f in faults.values()):
        for fault in faults.values():
            fault["reset_required"] = False
            fault["ecc_dbe_volatile"] = 0
        done.append("ECC errors cleared (as a GPU reset does)")
    save_gpu_faults(faults)
    publish_gpu_faults()
    for record in gpu_containers():
        try:
            with open(resolve_in_root(record["rootfs"], LIVE_ENV), encoding="utf-8") as f:
                cut = parse_live(f.read()).get("GPU_ACCESS") == "lost"
        except (OSError, ValueError):
            continue
        if cut and update_live(record, {"GPU_ACCESS": "ok"}):
            done.append(f"container {record['container_id'][:12]} has its GPUs again")
    try:
        running = instances()
    except FaultError:
        running = []
    for inst in running:
        for signum in (signal.SIGCONT, CPU_OFF):
            os.kill(inst["pid"], signum)
    if board_needs_fabricmanager(read_board()) and fabric_manager_pid() is None:
        subprocess.run(["systemctl", "reset-failed", "nvidia-fabricmanager"],
                       capture_output=True, timeout=60)
        start = subprocess.run(["systemctl", "start", "nvidia-fabricmanager"],
                               capture_output=True, text=True, timeout=300)
        done.append("nvidia-fabricmanager started" if start.returncode == 0 else
                    f"nvidia-fabricmanager did not start: {start.stderr.strip()}")
    done.append("instances continued and back on their GPUs (hang, cpu)")
    for index in lost:
        done.append(f"GPU {index} stays off the bus until the host reboots "
                    "(python -m lab reboot HOST)")
    return "; ".join(done)


def main(argv):
    args = list(argv)
    gpu = container = None
    kind = None
    while args:
        arg = args.pop(0)
        if arg == "--gpu" and args:
            gpu = int(args.pop(0))
        elif arg == "--container" and args:
            container = args.pop(0)
        elif kind is None and arg in KINDS:
            kind = arg
        else:
            sys.stderr.write(f"fault: bad argument {arg!r}\n")
            return 2
    try:
        if kind == "xid79":
            line = xid79(gpu)
        elif kind == "xid48":
            line = xid48(gpu)
        elif kind == "nvml-lost":
            line = nvml_lost(gpu, container)
        elif kind == "fm-down":
            line = fm_down()
        elif kind == "cpu":
            line = signal_instance(gpu, container, CPU_ON,
                                   "on the CPU until its process restarts")
        elif kind == "hang":
            line = signal_instance(gpu, container, signal.SIGSTOP,
                                   "stopped: it accepts connections and answers nothing")
        elif kind == "crash":
            line = signal_instance(gpu, container, signal.SIGKILL, "killed (a crash)")
        elif kind == "clear":
            line = clear()
        else:
            sys.stderr.write(f"fault: give one of {', '.join(KINDS)}\n")
            return 2
    except (FaultError, ValueError, OSError) as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    sys.stdout.write(json.dumps({"kind": kind, "result": line}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/python3
# Installed by the deploy (tasks/steps/health.py) as /usr/local/libexec/ollama-fleet/health-agent
# and run by ollama-fleet-health.service. The host's Python 3 standard library only.
"""The GPU host's health agent: one check a second, one verdict per host and per instance,
healing by policy.

Each cycle reads:
- the kernel log (/dev/kmsg): NVIDIA's Xid reports (79 fallen off the bus, 48 double-bit
  ECC, ...) name a GPU by its PCI address; NVSwitch SXid reports are kept as evidence;
- nvidia-smi: does it answer, does it list `gpu_count` GPUs, did a GPU's volatile
  uncorrected ECC count rise;
- Fabric Manager's unit, on boards that need it;
- every Ollama instance on loopback (/api/ps: refused, no answer, the proof model on the
  CPU) and, every NVML_EVERY_S seconds, nvidia-smi inside each GPU instance (NVML lost).

It writes /run/ollama-fleet/health/verdict.json (served by the host's nginx at /fleet/health
to the front doors and the fleet's other GPU hosts) and a flag file per instance taken out
(/run/ollama-fleet/health/out/NAME, `host` for the whole host) that the host's nginx reads
to refuse it at once, so no request reaches it.

Healing follows a chain of actions per fault kind (CHAINS): restart the instance, recreate
it when it lost its GPUs, reset its GPU once the GPU is idle, restart Fabric Manager, and
reboot the host only when `allow_reboot` is set and fewer than `max_unavailable` other hosts
are out at the front doors (drained ones count). An instance comes back only after its
fault has been gone for `return_after` checks and it passed the GPU proof (its proof model
loaded with weights in GPU memory). With `heal` off it detects and evicts only. While a
deploy or a roll holds the host's run lock it takes nothing new out and acts on nothing;
each action holds that lock itself while it runs, so a deploy or roll that starts meanwhile
waits for it (templates/lock/hold.sh) instead of racing it.
Every action is a line of /var/lib/ollama-fleet/health/events.jsonl and of the journal.
"""

from __future__ import annotations

import calendar
import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, wait

CONFIG = "/etc/ollama-fleet/health.json"
AGENT_OWNER = "ollama-fleet-health"  # how the run lock's owner line names the agent
RUN = "/run/ollama-fleet/health"  # the stack's HEALTH_DIR (tasks/steps/stack.py)
EVENTS = "/var/lib/ollama-fleet/health/events.jsonl"
EVENTS_KEPT = 500
KMSG = "/dev/kmsg"

# Xid -> (fault kind, chain of actions), after NVIDIA's Xid catalog (recommended actions).
# Xids caused by an application (13, 31, 43, 45, ...) leave the GPU usable: evidence only.
XIDS = {
    79: ("xid79", ["reboot"]),  # GPU has fallen off the bus: no reset reaches it
    48: ("xid48", ["reset-gpu", "reboot"]),  # double-bit ECC error
    95: ("xid95", ["reset-gpu", "reboot"]),  # uncontained ECC error
    94: ("xid94", ["restart", "reset-gpu", "reboot"]),  # contained ECC error
    74: ("xid74", ["reset-gpu", "reboot"]),  # NVLink error
    62: ("xid62", ["reset-gpu", "reboot"]),  # internal micro-controller halt
    64: ("xid64", ["reset-gpu", "reboot"]),  # ECC page retirement or row remap failure
    109: ("xid109", ["reset-gpu", "reboot"]),  # context switch timeout
    110: ("xid110", ["reset-gpu", "reboot"]),  # security fault
    119: ("xid119", ["reset-gpu", "reboot"]),  # GSP RPC timeout
    120: ("xid120", ["reset-gpu", "reboot"]),  # GSP error
    140: ("xid140", ["reset-gpu", "reboot"]),  # unrecovered ECC error
    143: ("xid143", ["reset-gpu", "reboot"]),  # GPU initialisation failure
    154: ("xid154", ["reboot"]),  # the driver says the GPU needs a recovery action
    160: ("xid160", ["reboot"]),  # a GPU the driver lost
}
# Fault kind -> chain of actions, for the faults not read from an Xid.
CHAINS = {
    "down": ["start", "restart", "recreate"],
    # it died and Docker's restart policy started it again: that was the first action
    "crash": ["start", "restart", "recreate"],
    "stopped": [],  # an operator's `docker stop`: theirs
    "missing": [],  # a removed container: the operator's, or the next deploy's
    "hang": ["restart", "recreate"],
    "nvml-lost": ["recreate", "restart"],
    "cpu": ["restart", "reset-gpu", "reboot"],
    "proof": ["restart"],  # the proof model does not load: restarted once, then theirs
    "starting": [],  # Docker's start period (a GPU wait at boot): nothing to heal yet
    "ecc": ["reset-gpu", "reboot"],
    "gpu-missing": ["reboot"],
    "nvidia-smi": ["reboot"],
    "fm-down": ["restart-fm", "reboot"],
}
# How long an action gets to show its effect before the next one of the chain is taken.
ACTION_WAIT_S = {"start": 60, "restart": 90, "recreate": 120, "reset-gpu": 120,
                 "restart-fm": 120, "reboot": 600}
# NVML inside an instance (a `docker exec` of nvidia-smi: the costliest check, one per GPU
# instance) is asked at most this often; a lost NVML still leaves within 5 s.
NVML_EVERY_S = 3.0
# An instance exited this long with no error and not by the agent: someone stopped it
# (a crash is started again by Docker's restart policy well within it).
STOPPED_AFTER_S = 15
XID_LINE = re.compile(r"NVRM: Xid \(PCI:([0-9A-Fa-f]+):([0-9A-Fa-f]+):([0-9A-Fa-f]+)\): (\d+),")
SXID_LINE = re.compile(r"SXid \(PCI:([^)]*)\): (\d+)")
NO_HANDLE = re.compile(r"Unable to determine the device handle for GPU ?"
                       r"([0-9A-Fa-f]+):([0-9A-Fa-f]+):([0-9A-Fa-f]+)")


def log(message: str) -> None:
    print(message, flush=True)


def run(argv: list[str], timeout: float) -> tuple[int, str]:
    """ARGV's exit status and output (stdout and stderr), bounded by TIMEOUT seconds."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]} did not answer in {timeout:g} s"
    except OSError as exc:
        return 127, f"{argv[0]}: {exc.strerror}"
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def rfc3339(text: str) -> float:
    """Docker's `2026-12-06T16:58:00.123456789Z` as unix seconds (0 when unreadable)."""
    try:
        return calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return 0.0


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")[:300]


def bus_key(bus: str, device: str) -> str:
    """`BB:DD` of a PCI address, lower case: what an Xid line and nvidia-smi share."""
    return f"{int(bus, 16):02x}:{int(device, 16):02x}"


def smi_bus_key(pci_bus_id: str) -> str:
    """`00000000:3B:00.0` -> `3b:00`."""
    parts = pci_bus_id.strip().split(":")
    return bus_key(parts[-2], parts[-1].split(".")[0]) if len(parts) >= 2 else ""


def write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.{threading.get_ident()}.tmp"  # the loop and an action may both write
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


class KernelLog:
    """New records of the kernel log since the last one handled in this boot."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.seen_file = f"{RUN}/kmsg-seq"
        try:
            with open(self.seen_file, encoding="utf-8") as f:
                self.last = int(f.read().strip() or -1)
        except (OSError, ValueError):
            self.last = -1
        self.partial = b""

    def read(self) -> list[str]:
        if self.fd is None:
            try:
                self.fd = os.open(KMSG, os.O_RDONLY | os.O_NONBLOCK)
            except OSError:
                return []
        data = b""
        for _ in range(10000):  # bounded: at most this many records a cycle
            try:
                chunk = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:  # records overwritten before we read them: go on
                continue
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        if not data:
            return []
        text = (self.partial + data).decode("utf-8", "replace")
        lines = text.split("\n")
        self.partial = lines.pop().encode()
        messages = []
        last = self.last
        for line in lines:
            if line.startswith(" ") or ";" not in line:
                continue  # a continuation line (KEY=value) or not a record
            head, _, message = line.partition(";")
            fields = head.split(",")
            try:
                seq = int(fields[1])
            except (IndexError, ValueError):
                continue
            if seq <= self.last:
                continue
            last = max(last, seq)
            messages.append(message)
        if last != self.last:
            self.last = last
            write_atomic(self.seen_file, str(last))
        return messages


def http_json(url: str, timeout: float, body: dict | None = None) -> tuple[str, object]:
    """("ok", document) | ("refused", why) | ("timeout", why) | ("error", why)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={  # noqa: S310 (http URLs of ours)
        "Content-Type": "application/json", "Host": "localhost"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
            return "ok", json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read(300).decode("utf-8", "replace")
        except OSError:
            body = ""
        return "error", f"HTTP {exc.code}: {body}".strip()
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ConnectionRefusedError):
            return "refused", "connection refused"
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            return "timeout", f"no answer in {timeout:g} s"
        return "error", str(reason)
    except TimeoutError:
        return "timeout", f"no answer in {timeout:g} s"
    except (OSError, ValueError) as exc:
        return "error", str(exc)


class Fault:
    """One fault of an instance or the host, and where its chain of actions stands."""

    def __init__(self, kind: str, reason: str, chain: list[str], now: float) -> None:
        self.kind, self.reason, self.chain = kind, reason, list(chain)
        self.since = now
        self.step = -1  # the chain's action taken last
        self.acted_at = 0.0
        self.action = ""
        self.good = 0  # checks in a row without the fault
        self.stuck = ""  # why the chain stopped (it needs an operator)

    def dump(self) -> dict:
        return {k: getattr(self, k) for k in ("kind", "reason", "chain", "since", "step",
                                               "acted_at", "action", "stuck")}

    @classmethod
    def load(cls, doc: dict) -> Fault:
        fault = cls(doc["kind"], doc["reason"], doc["chain"], doc["since"])
        for key in ("step", "acted_at", "action", "stuck"):
            setattr(fault, key, doc[key])
        return fault


class Agent:
    def __init__(self, config: dict) -> None:
        self.c = config
        self.host_fault: Fault | None = None
        self.faults: dict[str, Fault] = {}  # instance name -> its fault
        self.gpu_faults: dict[int, tuple[str, str, list[str]]] = {}  # GPU index -> fault
        self.agent_stopped: set[str] = set()  # containers a GPU reset stopped (not an operator)
        self.hang_count: dict[str, int] = {}
        self.seen: dict[str, str] = {}  # each container's state at the last check
        self.cycle = 0
        self.started: dict[str, float] = {}  # when each background check last started
        self.nvml: dict[str, str] = {}  # instance -> why NVML failed, "" when it answers
        self.cpu: dict[str, str] = {}  # instance -> why its proof model is on the CPU
        self.kmsg = KernelLog()
        self.busy = threading.Lock()  # one healing action at a time
        self.pool = ThreadPoolExecutor(max_workers=4 + 2 * len(config["instances"]))
        self.jobs: dict[str, tuple] = {}
        self.results: dict[str, object] = {}
        self.boot_id = self.read_boot_id()
        self.gpu_by_bus: dict[str, int] = {}
        self.smi_rows: dict[int, dict] = {}
        self.resetting = False  # a GPU reset runs: no nvidia-smi of ours may hold a GPU
        self.out_view: list[str] | None = None  # the other hosts out, at the front doors
        self.held = False  # a deploy or a roll holds the run lock, or the host is held out
        self.holding_lock = False  # an action of the agent's holds the run lock
        self.held_by = ""  # this host drained or held at a front door, and by what
        os.makedirs(f"{RUN}/out", exist_ok=True)
        os.makedirs(os.path.dirname(EVENTS), exist_ok=True)
        self.load_state()

    # ---- state kept across a restart of the agent (not across a boot: /run) ----
    @staticmethod
    def read_boot_id() -> str:
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="utf-8") as f:
                return f.read().strip()
        except OSError:
            return ""

    def load_state(self) -> None:
        try:
            with open(f"{RUN}/state.json", encoding="utf-8") as f:
                state = json.load(f)
        except (OSError, ValueError):
            return
        if state.get("boot_id") != self.boot_id:
            return
        # what this agent held out before it was restarted stays out until proven again
        for index, (kind, reason, chain) in state.get("gpu_faults", {}).items():
            self.gpu_faults[int(index)] = (kind, reason, chain)
        self.faults = {n: Fault.load(f) for n, f in state.get("faults", {}).items()}
        if state.get("host_fault"):
            self.host_fault = Fault.load(state["host_fault"])
        self.agent_stopped = set(state.get("agent_stopped", []))

    def save_state(self) -> None:
        write_atomic(f"{RUN}/state.json", json.dumps({
            "boot_id": self.boot_id, "agent_stopped": sorted(self.agent_stopped),
            "gpu_faults": {str(k): list(v) for k, v in self.gpu_faults.items()},
            "faults": {n: f.dump() for n, f in self.faults.items()},
            "host_fault": self.host_fault.dump() if self.host_fault else None}))

    def event(self, instance: str, kind: str, action: str, result: str, reason: str) -> None:
        record = {"at": round(time.time(), 3), "host": self.c["host"], "instance": instance,
                  "kind": kind, "action": action, "result": result, "reason": reason}
        log(f"health: {instance or 'host'}: {kind}: {action}: {result}"
            + (f": {reason}" if reason else ""))
        try:
            with open(EVENTS, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            with open(EVENTS, encoding="utf-8") as f:
                lines = f.readlines()
            if len(lines) > 2 * EVENTS_KEPT:
                write_atomic(EVENTS, "".join(lines[-EVENTS_KEPT:]))
        except OSError as exc:
            log(f"health: events file: {exc}")

    # ---- what is wrong now ----
    def read_kernel(self) -> None:
        for message in self.kmsg.read():
            match = XID_LINE.search(message)
            if match:
                code = int(match.group(4))
                index = self.gpu_by_bus.get(bus_key(match.group(2), match.group(3)))
                if code in XIDS and index is not None and index not in self.gpu_faults:
                    kind, chain = XIDS[code]
                    self.gpu_faults[index] = (kind, f"GPU {index}: {message.strip()[:200]}",
                                              chain)
                    self.save_state()
                self.event("", f"xid{code}", "seen", "kernel log", message.strip()[:300])
                continue
            match = SXID_LINE.search(message)
            if match:
                self.event("", f"sxid{match.group(2)}", "seen", "kernel log",
                           message.strip()[:300])

    def read_smi(self) -> str:
        """Reads nvidia-smi's GPUs; returns why the host's GPUs cannot be read ('' if they can)."""
        status, out = run(["nvidia-smi", "--query-gpu=index,uuid,pci.bus_id,"
                           "ecc.errors.uncorrected.volatile.total,memory.used,memory.total",
                           "--format=csv,noheader,nounits"], 10)
        rows: dict[int, dict] = {}
        lost: list[str] = []
        for line in out.splitlines():
            match = NO_HANDLE.search(line)
            if match:
                lost.append(bus_key(match.group(2), match.group(3)))
                continue
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 6 or not parts[0].isdigit():
                continue
            index = int(parts[0])
            rows[index] = {"uuid": parts[1], "bus": smi_bus_key(parts[2]), "ecc": parts[3],
                           "memory_used": parts[4]}
        for index, row in rows.items():
            self.gpu_by_bus[row["bus"]] = index
        for key in lost:
            index = self.gpu_by_bus.get(key)
            if index is not None and index not in self.gpu_faults:
                self.gpu_faults[index] = ("xid79", f"GPU {index} ({key}): nvidia-smi cannot "
                                          "reach it (fallen off the bus?)", XIDS[79][1])
                self.save_state()
        if not rows and status != 0:
            return f"nvidia-smi fails: {first_line(out) or f'exit {status}'}"
        self.smi_rows = rows
        for index, row in rows.items():
            # volatile: since the driver loaded or the GPU was last reset
            if row["ecc"].isdigit() and int(row["ecc"]) > 0 and index not in self.gpu_faults:
                self.gpu_faults[index] = ("ecc", f"GPU {index}: {row['ecc']} uncorrected ECC "
                                          "errors since the driver loaded or the last reset",
                                          CHAINS["ecc"])
                self.save_state()
        expected = self.c["gpu_count"]
        if len(rows) + len(lost) < expected:
            return f"nvidia-smi lists {len(rows)} of {expected} GPUs"
        return ""

    def host_problem(self) -> tuple[str, str]:
        """(kind, reason) of what takes the whole host out, ('', '') when nothing does."""
        why = self.read_smi()
        if why:
            kind = "gpu-missing" if "lists" in why else "nvidia-smi"
            return kind, why
        unit = self.c.get("fabricmanager_unit")
        if unit:
            status, out = run(["systemctl", "is-active", unit], 10)
            if status != 0:
                return "fm-down", f"Fabric Manager is not running ({unit}: {first_line(out)})"
        return "", ""

    def containers(self) -> dict[str, str]:
        """Each container of the project: Docker's state, `starting` while a running one is
        in its healthcheck's start period."""
        status, out = run(["docker", "ps", "-a", "--filter",
                           f"label=com.docker.compose.project={self.c['project']}",
                           "--format", "{{.Names}}\t{{.State}}\t{{.Status}}"], 5)
        result = {}
        for line in out.splitlines() if status == 0 else []:
            name, _, rest = line.partition("\t")
            state, _, text = rest.partition("\t")
            result[name] = "starting" if state == "running" and "health: starting" in text \
                else state
        return result

    def check_nvml(self, name: str, gpus: int) -> str:
        """Why nvidia-smi in instance NAME cannot see its GPUS GPUs; '' when it can, or when
        the answer is Docker's (the container stopped or restarting under the check) or
        none came (a check that hangs judges nothing)."""
        status, out = run(["docker", "exec", name, "nvidia-smi", "-L"], 10)
        if status != 0:
            # NVML's own words only: Docker's (a container stopping under the check, "cannot
            # exec in a stopped container") and a check that hung say nothing of the GPUs
            known = ("NVML", "device handle", "No devices were found")
            line = next((li for li in out.splitlines() if any(k in li for k in known)), "")
            return line.strip()[:300]
        listed = sum(1 for line in out.splitlines() if line.startswith("GPU "))
        return "" if listed == gpus else f"lists {listed} of its {gpus} GPUs"

    def on_cpu(self, port: int) -> str:
        """Why the proof model runs on the CPU in the instance on PORT ('' when it does not
        or /api/ps cannot tell now: it waits on a model that is loading)."""
        proof = self.c.get("proof_model")
        outcome, doc = http_json(f"http://{self.c['address']}:{port}/api/ps", 5)
        if outcome != "ok" or not isinstance(doc, dict) or not proof:
            return ""
        for m in doc.get("models") or []:
            if same_model(m.get("name", ""), proof) and not m.get("size_vram"):
                return f"{m.get('name')} runs on the CPU (size_vram 0 of {m.get('size', 0)} bytes)"
        return ""

    def instance_problem(self, inst: dict, state: str, version: tuple[str, object],
                         ) -> tuple[str, str]:
        name = inst["name"]
        if state not in ("running", "starting"):
            self.hang_count[name] = 0
            if state in ("exited", "created"):
                status, out = run(["docker", "inspect", "--format",
                                   "{{.State.FinishedAt}} {{.State.Error}}", name], 5)
                finished, _, error = out.strip().partition(" ")
                if status == 0 and not error and name not in self.agent_stopped \
                        and time.time() - rfc3339(finished) > STOPPED_AFTER_S:
                    return "stopped", "stopped by someone (not failed): left to the operator"
                if error:
                    return "down", f"container {state}: it could not start: {first_line(error)}"
                return "down", f"container {state} (a crash: Docker's restart policy is due)"
            if not state:  # removed (compose down, a deploy that changed the topology)
                return "missing", "no container: left to the operator and the next deploy"
            return "down", f"container {state}"
        if state == "starting":
            self.hang_count[name] = 0
            if self.seen.get(name) == "running":  # it served at the last check: it died
                return "crash", ("it died, and Docker's restart policy started it again "
                                 "(in its start period)")
            return "starting", "in its start period (waiting for its GPUs, or starting)"
        # /api/version takes no lock of Ollama's scheduler: it answers while a model loads
        outcome, doc = version
        if outcome == "timeout":
            self.hang_count[name] = self.hang_count.get(name, 0) + 1
            if self.hang_count[name] >= 2:
                return "hang", f"accepts connections, no answer to /api/version ({doc})"
            return "", ""
        self.hang_count[name] = 0
        if outcome == "refused":
            return "down", "Ollama refuses connections"
        if outcome == "error":
            return "down", f"/api/version: {doc}"
        for index in inst["gpus"]:
            if index in self.gpu_faults:
                kind, reason, _ = self.gpu_faults[index]
                return kind, reason
        if inst["gpus"] and self.nvml.get(name):
            return "nvml-lost", f"nvidia-smi in the container: {self.nvml[name]}"
        if inst["gpus"] and self.cpu.get(name):
            return "cpu", self.cpu[name]
        return "", ""

    # ---- a cycle ----
    def background(self, key: str, call, *args, repeat: bool = True, every: float = 0.0,
                   ) -> tuple[bool, object, float]:
        """CALL(*ARGS) in the pool, one at a time per KEY: (finished, its last result, seconds
        the current one has run). A check that hangs (nvidia-smi on a sick driver) never
        holds up the cycle. With REPEAT a finished one is started again at once (or once
        EVERY seconds have passed since it last started); without, only when its result
        was taken (`self.results.pop(KEY)`)."""
        job = self.jobs.get(key)
        if job and job[0].done():
            self.results[key] = job[0].result()
            del self.jobs[key]
            job = None
        due = time.monotonic() - self.started.get(key, float("-inf")) >= every
        if job is None and ((repeat and due) or key not in self.results):
            self.started[key] = time.monotonic()
            self.jobs[key] = job = (self.pool.submit(call, *args), time.monotonic())
        return key in self.results, self.results.get(key), \
            time.monotonic() - job[1] if job else 0.0

    def check(self) -> None:
        now = time.time()
        self.cycle += 1
        # a deploy or a roll is at work on this host: it recreates and proves the instances
        # itself (a roll's smoke test asks them through this nginx), so nothing new is
        # taken out and nothing is done until it ends; what is out stays out until proven
        done, view, _ = self.background("fleet", self.fleet_view)
        if done:
            self.out_view, self.held_by = view
        # a host an operator drained or a roll holds is theirs: nothing new out, no action
        self.held = self.locked() or bool(self.held_by)
        kind, reason = "", ""
        if self.c["gpu_count"] and not self.resetting:
            # the kernel's records name GPUs by PCI address: read once nvidia-smi mapped them
            if self.gpu_by_bus:
                self.read_kernel()
            done, result, running = self.background("host", self.host_problem)
            if running > 10:
                kind, reason = "nvidia-smi", f"nvidia-smi has not answered for {running:.0f} s"
            elif done:
                kind, reason = result
        elif self.host_fault:
            kind, reason = self.host_fault.kind, self.host_fault.reason
        self.observe_host(kind, reason, now)
        instances = self.c["instances"]
        states = self.containers()
        futures = {i["name"]: self.pool.submit(
            http_json, f"http://{self.c['address']}:{i['port']}/api/version", 1.0)
            for i in instances}
        for i in instances:
            name = i["name"]
            if i["gpus"] and states.get(name) == "running" and not self.resetting:
                done, result, _ = self.background(f"nvml:{name}", self.check_nvml, name,
                                                  len(i["gpus"]), every=NVML_EVERY_S)
                self.nvml[name] = result if done else ""
                done, result, _ = self.background(f"cpu:{name}", self.on_cpu, i["port"])
                self.cpu[name] = result if done else ""
            else:
                for key in (f"nvml:{name}", f"cpu:{name}"):
                    self.results.pop(key, None)
                self.nvml[name] = self.cpu[name] = ""
        for inst in instances:
            problem = self.instance_problem(inst, states.get(inst["name"], ""),
                                            futures[inst["name"]].result())
            self.observe_instance(inst, *problem, now)
        self.seen = states
        self.heal(now)
        self.publish(now)
        self.save_state()

    def all_faults(self) -> list[Fault]:
        return [f for f in [self.host_fault, *self.faults.values()] if f is not None]

    def observe_host(self, kind: str, reason: str, now: float) -> None:
        fault = self.host_fault
        if kind and fault is None and not self.held:
            self.host_fault = Fault(kind, reason, CHAINS.get(kind, []), now)
            self.event("", kind, "evicted", "out of rotation", reason)
        elif kind and fault:
            fault.good = 0
            fault.reason = reason
        elif fault:
            fault.good += 1
            if fault.good >= self.c["return_after"]:
                self.host_fault = None
                self.event("", fault.kind, "returned", "in rotation",
                           f"healthy for {fault.good} checks")

    def observe_instance(self, inst: dict, kind: str, reason: str, now: float) -> None:
        name = inst["name"]
        fault = self.faults.get(name)
        if kind and fault is None and self.held:
            return
        if kind and fault is None:
            chain = next((c for k, _, c in [self.gpu_faults.get(g, ("", "", []))
                                             for g in inst["gpus"]] if k == kind), None)
            fault = self.faults[name] = Fault(kind, reason, chain or CHAINS.get(kind, []), now)
            if kind == "crash":  # Docker took the first action: its effect is awaited
                fault.step, fault.action, fault.acted_at = 0, "start", now
            if kind != "starting":
                self.event(name, kind, "evicted", "out of rotation", reason)
        elif kind and fault:
            fault.good = 0
            self.jobs.pop(f"proof:{name}", None)
            self.results.pop(f"proof:{name}", None)
            transient = ("down", "crash", "hang", "starting")
            if kind != fault.kind and fault.kind in transient and kind not in transient:
                fault.kind, fault.reason = kind, reason  # it came up with another fault
                fault.chain, fault.step = CHAINS.get(kind, fault.chain), -1
                fault.stuck = ""
                self.event(name, kind, "evicted", "out of rotation", reason)
            elif kind == fault.kind:
                fault.reason = reason  # (down while a restart runs: the same fault)
        elif fault:
            fault.good += 1
            if fault.good < self.c["return_after"] or self.busy.locked():
                return
            # the GPU proof loads a model (seconds to minutes): never in the cycle itself
            done, why, _ = self.background(f"proof:{name}", self.prove, inst, repeat=False)
            if not done:
                return
            self.results.pop(f"proof:{name}", None)
            if why:
                fault.good = 0
                kind = "cpu" if "on the CPU" in why else "proof"
                if fault.kind != kind:
                    fault.kind, fault.chain, fault.step, fault.stuck = kind, CHAINS[kind], -1, ""
                fault.reason = why
                self.event(name, kind, "proof", "failed", why)
            else:
                del self.faults[name]
                if fault.kind != "starting":
                    self.event(name, fault.kind, "returned", "in rotation",
                               "GPU proof passed" if inst["gpus"] else "answers again")

    def prove(self, inst: dict) -> str:
        """'' when the instance infers on its GPUs (its proof model loaded, in GPU memory)."""
        model = self.c.get("proof_model")
        if not inst["gpus"] or not model:
            return ""
        url = f"http://{self.c['address']}:{inst['port']}"
        keep = -1 if self.c.get("proof_warm") else "5m"
        outcome, doc = http_json(f"{url}/api/generate", self.c["proof_timeout_s"],
                                 {"model": model, "keep_alive": keep})
        if outcome != "ok" and "support generate" in str(doc):  # an embedding model
            outcome, doc = http_json(f"{url}/api/embed", self.c["proof_timeout_s"],
                                     {"model": model, "input": "proof", "keep_alive": keep})
        if outcome != "ok":
            return f"the proof model {model} does not load: {doc}"
        outcome, doc = http_json(f"{url}/api/ps", 10)
        if outcome != "ok" or not isinstance(doc, dict):
            return f"/api/ps after the proof: {doc}"
        for m in doc.get("models") or []:
            if same_model(m.get("name", ""), model):
                return "" if m.get("size_vram") else (
                    f"{m.get('name')} loads on the CPU (size_vram 0)")
        return f"the proof model {model} is not loaded after the proof"

    # ---- healing ----
    def locked(self) -> bool:
        """Whether a deploy or a roll holds the host's run lock: asked of the lock itself
        (a try that lets go at once; a deploy's holder waits up to 3 s for it, so a starting
        deploy never stops on it). Not /proc/locks: inside a PID namespace (a container)
        it leaves out a lock whose taker (flock(1)) has exited, as the deploy's has. Not
        while the agent's own action holds it."""
        if self.holding_lock or self.busy.locked():
            return False  # the agent's own action holds it, or is about to take it
        try:
            fd = os.open(self.c["lock"], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return False  # no lock file: no run has taken it since boot
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    def heal(self, now: float) -> None:
        if not self.c["heal"] or self.busy.locked():
            return
        targets = [("", self.host_fault)] if self.host_fault else []
        targets += [(n, f) for n, f in self.faults.items()
                    if not (self.host_fault and f.kind == self.host_fault.kind)]
        for name, fault in targets:
            if fault is None or fault.stuck:
                continue
            wait = ACTION_WAIT_S.get(fault.action, 60)
            if fault.step >= 0 and now - fault.acted_at < wait:
                continue  # the last action still has time to show its effect
            if fault.step + 1 >= len(fault.chain):
                if fault.kind == "starting":
                    continue  # Docker's start period runs its course
                fault.stuck = (f"no action left after {fault.action}" if fault.action
                               else "no action heals this")
                self.event(name, fault.kind, "left out", "needs an operator", fault.stuck)
                continue
            if self.held:
                return
            action = fault.chain[fault.step + 1]
            allowed = self.allowed(action)
            if allowed:
                if fault.action != f"waits: {allowed}":
                    fault.action = f"waits: {allowed}"
                    self.event(name, fault.kind, action, "waits", allowed)
                if action == "reboot" and not self.c["allow_reboot"]:
                    fault.stuck = allowed
                continue
            if action == "reset-gpu" and self.gpu_by_bus:
                # the kernel's records written up to now describe what this reset clears: read
                # before it (the ECC count that called it may have come in after this cycle's
                # read), so that none is taken afterwards for a new error of the reset GPU
                self.read_kernel()
            fault.step += 1
            fault.acted_at = now
            fault.action = action
            self.busy.acquire()
            threading.Thread(target=self.act, args=(name, fault, fault.kind, action),
                             daemon=True).start()
            return  # one action at a time

    def serving(self) -> bool:
        """Whether any instance of this host is in rotation (its own view)."""
        return self.host_fault is None and any(i["name"] not in self.faults
                                               for i in self.c["instances"])

    def allowed(self, action: str) -> str:
        """'' when ACTION may be taken now, else why not."""
        if action != "reboot":
            return ""
        if not self.c["allow_reboot"]:
            return "a reboot is needed and health_allow_reboot is off"
        # the one action that can take more of the fleet out: bounded, unless this host
        # serves nothing any more (rebooting it then takes nothing out)
        if not self.serving():
            return ""
        out = self.out_view
        if out is None:
            return "no front door answered yet: the fleet's state is unknown"
        if len(out) + 1 > self.c["max_unavailable"]:
            return (f"{len(out)} other host(s) out ({', '.join(out)}); "
                    f"health_max_unavailable {self.c['max_unavailable']}")
        return ""

    def fleet_view(self) -> tuple[list[str] | None, str]:
        """(the other hosts out of rotation at any front door: drained, held, evicted; None
        when no front door answered), and whether this host is drained or held there."""
        out: set[str] = set()
        mine = ""
        answered = False
        for url in self.c["front_doors"]:
            outcome, doc = http_json(url, 3)
            if outcome != "ok" or not isinstance(doc, dict):
                continue
            answered = True
            for name, state in (doc.get("hosts") or {}).items():
                if not isinstance(state, dict):
                    continue
                if name == self.c["host"]:
                    if state.get("state") in ("drained", "held"):
                        mine = f"{state.get('state')} ({state.get('cause')})"
                elif state.get("state") != "in":
                    out.add(f"{name}: {state.get('state')}")
        return (sorted(out) if answered or not self.c["front_doors"] else None), mine

    @contextlib.contextmanager
    def run_lock(self, name: str, action: str):
        """Hold the host's run lock for one action (yields False when a deploy or a roll
        has it): a deploy that starts meanwhile waits for the action, never races it. The
        owner line says who holds it; it is removed while the lock is still held."""
        path = self.c["lock"]
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            st = os.stat(os.path.dirname(path), follow_symlinks=False)
            if st.st_uid != os.getuid() or st.st_mode & 0o077:
                raise OSError(f"{os.path.dirname(path)} is not this user's alone")
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            log(f"health: cannot open the run lock {path}: {exc}")
            yield False
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield False
                return
            line = (f"{AGENT_OWNER} on {self.c['host']}: {action} {name or 'host'} since "
                    f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} "
                    f"(agent pid {os.getpid()})\n")
            owner = f"{path}.owner"
            with contextlib.suppress(OSError):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(owner)  # never written through a link someone left there
                ofd = os.open(owner, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                              0o644)
                with os.fdopen(ofd, "w", encoding="utf-8") as f:
                    f.write(line)
            self.holding_lock = True
            try:
                yield True
            finally:
                self.holding_lock = False
                with contextlib.suppress(OSError):
                    with open(owner, encoding="utf-8") as f:
                        if f.read() == line:
                            os.unlink(owner)
        finally:
            os.close(fd)  # lets the lock go

    def act(self, name: str, fault: Fault, kind: str, action: str) -> None:
        try:
            reason = fault.reason
            with self.run_lock(name, action) as mine:
                if not mine:  # a deploy or a roll took the host first: theirs, not ours
                    fault.step -= 1
                    fault.action = fault.chain[fault.step] if fault.step >= 0 else ""
                    return
                status, output = self.do(name, action, kind)
                self.event(name, kind, action, "done" if status == 0 else "failed",
                           reason if status == 0 else first_line(output))
                if status == 0 and action in ("reset-gpu",):
                    for index in self.fault_gpus(name):
                        self.gpu_faults.pop(index, None)
                    self.save_state()
        finally:
            self.busy.release()

    def fault_gpus(self, name: str) -> list[int]:
        if not name:
            return list(self.gpu_faults)
        inst = next(i for i in self.c["instances"] if i["name"] == name)
        return [g for g in inst["gpus"] if g in self.gpu_faults]

    def sharing(self, gpus: list[int]) -> list[str]:
        return [i["name"] for i in self.c["instances"] if set(i["gpus"]) & set(gpus)]

    @contextlib.contextmanager
    def idle(self, users: list[str]):
        """GPUs idle for a reset: the instances USERS stopped (marked as the agent's, so a
        restarted agent starts them, not an operator's stop), no nvidia-smi of the agent's
        running; afterwards the instances started again."""
        self.resetting = True
        try:
            self.agent_stopped.update(users)
            self.save_state()
            for user in users:
                run(["docker", "stop", "-t", "10", user], 60)
            # the checks already running end first (bounded: each is)
            wait([f for k, (f, _) in list(self.jobs.items())
                  if k == "host" or k.startswith("nvml:")], timeout=15)
            yield
        finally:
            started = [u for u in users if run(["docker", "start", u], 120)[0] == 0]
            self.agent_stopped.difference_update(started)
            self.resetting = False

    def do(self, name: str, action: str, kind: str = "") -> tuple[int, str]:
        compose = ["docker", "compose", "--project-directory", self.c["stack_dir"],
                   "-p", self.c["project"]]
        if action == "start":
            return run(["docker", "start", name], 120)
        if action == "restart":
            # a hung instance answers nothing, SIGTERM included: killed at once, so that the
            # requests it holds fail now, when the front door can still send them to another
            # host (within its retry window), instead of after a grace period
            grace = "0" if kind == "hang" else "10"
            return run(["docker", "restart", "-t", grace, name], 120)
        if action == "recreate":
            return run([*compose, "up", "-d", "--force-recreate", "--no-deps", name], 300)
        if action == "reset-gpu":
            inst = next((i for i in self.c["instances"] if i["name"] == name), None)
            gpus = self.fault_gpus(name) or (inst["gpus"] if inst else [])
            with self.idle(self.sharing(gpus)):
                return run(["nvidia-smi", "-r", "-i", ",".join(map(str, gpus))], 120)
        if action == "restart-fm":
            # NVIDIA's order: GPU clients stopped, Fabric Manager stopped, the GPUs reset,
            # Fabric Manager started, the clients started again
            unit = self.c["fabricmanager_unit"]
            with self.idle([i["name"] for i in self.c["instances"] if i["gpus"]]):
                run(["systemctl", "stop", unit], 120)
                run(["nvidia-smi", "-r"], 120)  # every GPU: a failure is FM's start to tell
                return run(["systemctl", "start", unit], 300)
        if action == "reboot":
            self.event(name, "reboot", "reboot", "starting", "health_allow_reboot is on")
            return run(["systemctl", "reboot"], 60)
        return 1, f"unknown action {action}"

    # ---- what the front doors read ----
    def publish(self, now: float) -> None:
        instances = []
        for inst in self.c["instances"]:
            fault = self.faults.get(inst["name"])
            if fault is None and self.host_fault:
                fault = self.host_fault
            instances.append({
                "name": inst["name"], "port": inst["port"],
                "gpus": [str(g) for g in inst["gpus"]],
                "state": "out" if fault else "ok", "kind": fault.kind if fault else "",
                "reason": fault.reason if fault else "",
                "since": fault.since if fault else None,
                "action": (fault.stuck or fault.action) if fault else ""})
            flag(inst["name"], fault is not None)
        host = self.host_fault
        flag("host", host is not None)
        verdict = {"version": 1, "host": self.c["host"], "boot_id": self.boot_id,
                   "checked_at": round(now, 3), "interval_s": self.c["interval_s"],
                   "state": "out" if host else "ok", "kind": host.kind if host else "",
                   "reason": host.reason if host else "", "since": host.since if host else None,
                   "action": (host.stuck or host.action) if host else "",
                   "heal": self.c["heal"], "instances": instances}
        write_atomic(f"{RUN}/verdict.json", json.dumps(verdict))


def flag(name: str, out: bool) -> None:
    path = f"{RUN}/out/{name}"
    if out and not os.path.exists(path):
        write_atomic(path, "")
    elif not out and os.path.exists(path):
        os.unlink(path)


def model_key(name: str) -> str:
    """A model's name as Ollama compares them: `:latest` implied, case folded."""
    name = name.strip().lower()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def same_model(a: str, b: str) -> bool:
    return model_key(a) == model_key(b)


def main() -> int:
    try:
        with open(sys.argv[1] if len(sys.argv) > 1 else CONFIG, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        print(f"health: cannot read the configuration: {exc}", file=sys.stderr)
        return 2
    agent = Agent(config)
    log(f"health: watching {len(config['instances'])} instance(s) of {config['host']} "
        f"every {config['interval_s']} s (healing {'on' if config['heal'] else 'off'}, "
        f"reboots {'allowed' if config['allow_reboot'] else 'off'})")
    while True:
        started = time.monotonic()
        try:
            agent.check()
        except Exception as exc:  # noqa: BLE001 (one bad cycle must not stop the watch)
            log(f"health: check failed: {exc!r}")
        time.sleep(max(0.05, config["interval_s"] - (time.monotonic() - started)))


if __name__ == "__main__":
    sys.exit(main())

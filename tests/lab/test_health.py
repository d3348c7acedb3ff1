"""The fleet watches itself between deploys: a failing GPU, instance or host leaves the
front door by itself, is healed by policy, and comes back only after the GPU proof.

Two converged HGX H100 hosts with 2 GPUs each (one instance per GPU) behind a front door;
faults come from `python -m lab fault` (lab/UPSTREAM.md: each shaped like the real one).
What is asserted is what an operator sees: the front door's rotation view
(/fleet/rotation, read on the front door), each host's verdict and events, the hosts'
boot ids, and what clients through the front door got. Timings are bench/health.py's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lab.loadgen import LoadGenerator
from tests.conftest import running_lab
from tests.labfleet import REPO, lab_cli, poll

pytestmark = pytest.mark.lab

NAME = "fleetlab-health"
MODEL = "tinyllama"
DEPLOY = ("deploy.py", "--data", f'ollama_models=["{MODEL}"]',
          "--data", f'ollama_warm_models=["{MODEL}"]')


@pytest.fixture(scope="module")
def fleet():
    with running_lab(NAME, "--gpu-hosts", "2", "--gpus-per-host", "2", "--lb-hosts", "1",
                     "--registry-port", "5107", "--model-scale", "0.1",
                     "--health-interval", "1") as lab:
        proc = lab.pyinfra(*DEPLOY)
        assert proc.returncode == 0, proc.output[-4000:]
        yield lab


def rotation(fleet) -> dict:
    """The front door's view of every host (read on the front door: it serves it to
    loopback and the GPU hosts only)."""
    _, out, _ = fleet.ssh("lb-1", "curl -sS --max-time 5 http://127.0.0.1:11391/fleet/rotation")
    return json.loads(out)["hosts"]


def instance_state(fleet, host: str, instance: str) -> str:
    return rotation(fleet)[host]["instances"].get(instance, {}).get("state", "")


def verdict(fleet, host: str) -> dict:
    _, out, _ = fleet.ssh(host, "cat /run/ollama-fleet/health/verdict.json")
    return json.loads(out)


def events(fleet, host: str) -> list[tuple[str, str, str, str]]:
    _, out, _ = fleet.ssh(host, "cat /var/lib/ollama-fleet/health/events.jsonl", check=False)
    return [(e["instance"], e["kind"], e["action"], e["result"])
            for e in map(json.loads, out.splitlines())]


def boot_id(fleet, host: str) -> str:
    """When HOST last booted (a lab host is a container: its start; the kernel's boot_id
    is the machine's)."""
    return fleet.started_at(host)


def ssh_answers(fleet, host: str) -> bool:
    fleet.forget(host)  # a rebooted host's sshd is new
    try:
        return fleet.ssh(host, "true", timeout=10, check=False)[0] == 0
    except Exception:  # noqa: BLE001 (refused or reset while it boots)
        return False


def all_in(fleet) -> bool:
    hosts = rotation(fleet)
    return all(h["state"] == "in" and all(i["state"] == "in" for i in h["instances"].values())
               for h in hosts.values())


def fault(fleet, host: str, kind: str, gpu: int | None = None) -> None:
    lab_cli("fault", host, kind, *(["--gpu", str(gpu)] if gpu is not None else []), name=NAME)


def fleet_cli(fleet, *args: str) -> subprocess.CompletedProcess:
    """`ollama-fleet INVENTORY ARGS...`, as an operator runs it."""
    proc = subprocess.run([sys.executable, "-m", "ollama_fleet", fleet.inventory, *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    proc.output = proc.stdout + proc.stderr
    return proc


@pytest.fixture(autouse=True)
def whole_fleet_in_rotation(fleet):
    """Each test starts and ends with every host and instance in rotation."""
    poll(lambda: all_in(fleet), 240, interval=2, what=f"every host in rotation: {rotation(fleet)}")
    yield
    poll(lambda: all_in(fleet), 300, interval=2, what=f"every host back: {rotation(fleet)}")


def test_a_hung_instance_leaves_rotation_and_is_restarted_with_no_operator(fleet):
    front = f"http://{fleet.host('lb-1')['address']}"
    with LoadGenerator(front, MODEL, threads=4, max_requests=3000, max_seconds=240,
                       request_timeout=60, num_predict=16) as load:
        poll(lambda: load.stats.sent > 8, 60, what="the load started")
        fault(fleet, "gpu-1", "hang", gpu=0)
        poll(lambda: instance_state(fleet, "gpu-1", "ollama-0") == "evicted", 30, interval=0.5,
             what="the hung instance out of rotation")
        poll(lambda: instance_state(fleet, "gpu-1", "ollama-0") == "in", 180, interval=2,
             what="the hung instance back after its restart and the GPU proof")
        served = load.stats.sent
        poll(lambda: load.stats.sent > served + 8, 60, what="requests after its return")
    stats = load.stats
    # a stream on the hung instance ends with an error the client sees; nothing else fails,
    # and no request waited for its own timeout (a hang would)
    assert stats.failed <= stats.streams_cut, stats.errors
    assert not [e for e in stats.errors if "timed out" in e], stats.errors
    mine = events(fleet, "gpu-1")
    assert ("ollama-0", "hang", "evicted", "out of rotation") in mine
    assert ("ollama-0", "hang", "restart", "done") in mine
    assert ("ollama-0", "hang", "returned", "in rotation") in mine


@pytest.mark.parametrize(("kind", "action"), [("nvml-lost", "recreate"), ("cpu", "restart"),
                                              ("xid48", "reset-gpu"), ("crash", None)])
def test_each_fault_is_evicted_healed_and_proven_before_it_returns(fleet, kind, action):
    before = len(events(fleet, "gpu-2"))
    fault(fleet, "gpu-2", kind, gpu=1)
    poll(lambda: instance_state(fleet, "gpu-2", "ollama-1") == "evicted", 60, interval=0.5,
         what=f"{kind}: ollama-1 out of rotation")
    assert instance_state(fleet, "gpu-2", "ollama-0") == "in"  # the other GPU serves on
    poll(lambda: instance_state(fleet, "gpu-2", "ollama-1") == "in", 240, interval=2,
         what=f"{kind}: ollama-1 back")
    new = events(fleet, "gpu-2")[before:]
    evicted = [e for e in new if e[0] == "ollama-1" and e[2] == "evicted"]
    assert evicted, new
    assert ("ollama-1", evicted[0][1], "returned", "in rotation") in new, new
    if action:
        assert ("ollama-1", action, "done") in [(e[0], e[2], e[3]) for e in new], new


def test_fabric_manager_down_takes_the_host_out_and_is_restarted(fleet):
    before = len(events(fleet, "gpu-1"))
    fault(fleet, "gpu-1", "fm-down")
    poll(lambda: rotation(fleet)["gpu-1"]["state"] == "evicted", 60, interval=0.5,
         what="the host out of rotation")
    assert "Fabric Manager" in rotation(fleet)["gpu-1"]["reason"]
    poll(lambda: rotation(fleet)["gpu-1"]["state"] == "in", 240, interval=2,
         what="the host back after Fabric Manager's restart")
    new = events(fleet, "gpu-1")[before:]
    assert ("", "fm-down", "restart-fm", "done") in new, new


def test_a_gpu_off_the_bus_is_evicted_and_reported_and_no_host_reboots_by_default(fleet):
    booted = boot_id(fleet, "gpu-2")
    fault(fleet, "gpu-2", "xid79", gpu=1)
    poll(lambda: instance_state(fleet, "gpu-2", "ollama-1") == "evicted", 60, interval=0.5,
         what="the GPU's instance out of rotation")
    poll(lambda: "health_allow_reboot is off" in next(
        i for i in verdict(fleet, "gpu-2")["instances"] if i["name"] == "ollama-1")["action"],
        180, interval=2, what="the agent left it out for want of a reboot")
    assert boot_id(fleet, "gpu-2") == booted
    assert instance_state(fleet, "gpu-2", "ollama-0") == "in"
    # no GPU reset reaches a GPU off the bus (NVIDIA's catalog: a node restart)
    assert ("ollama-1", "xid79", "reboot", "waits") in events(fleet, "gpu-2")
    status = fleet_cli(fleet, "status")
    assert "OUT xid79" in status.stdout and "front door lb-1:" in status.stdout, status.output
    # a deploy never puts back what the agent took out (the front door's config and nginx
    # reloaded: what it holds out lives in its shared dictionary and the host's verdict)
    proc = fleet.pyinfra(*DEPLOY, limit="lb-1")
    assert proc.returncode == 0, proc.output[-4000:]
    assert instance_state(fleet, "gpu-2", "ollama-1") == "evicted"
    fleet.reboot("gpu-2")  # the operator's reboot: the GPU is back, and so is its instance


def test_reboots_wait_for_the_bound_counting_drained_hosts(fleet):
    proc = fleet.pyinfra(*DEPLOY, "--data", "health_allow_reboot=true", limit="gpu-2")
    assert proc.returncode == 0, proc.output[-4000:]
    drained = fleet_cli(fleet, "drain", "gpu-1", "-y")
    assert drained.returncode == 0, drained.output
    view = json.loads(fleet_cli(fleet, "status", "--json").stdout)
    gpu1 = next(v for v in view if v["host"] == "gpu-1")
    assert gpu1["rotation"]["lb-1"]["state"] == "drained"
    assert gpu1["rotation"]["lb-1"]["cause"] == "drain"
    booted = boot_id(fleet, "gpu-2")
    fault(fleet, "gpu-2", "xid79", gpu=0)
    poll(lambda: "gpu-1: drained" in next(
        i for i in verdict(fleet, "gpu-2")["instances"] if i["name"] == "ollama-0")["action"],
        180, interval=2, what="the reboot waiting for the drained host")
    assert boot_id(fleet, "gpu-2") == booted
    assert rotation(fleet)["gpu-1"]["state"] == "drained"  # the agent never undrains
    undrained = fleet_cli(fleet, "undrain", "gpu-1", "-y")
    assert undrained.returncode == 0, undrained.output
    poll(lambda: boot_id(fleet, "gpu-2") != booted, 240, interval=3,
         what="gpu-2 rebooted by its agent once gpu-1 was back")
    poll(lambda: ssh_answers(fleet, "gpu-2"), 120, interval=2, what="gpu-2's sshd again")
    proc = fleet.pyinfra(*DEPLOY, limit="gpu-2")  # the knob back to its default
    assert proc.returncode == 0, proc.output[-4000:]

NO_HANDLE_1 = "Unable to determine the device handle for GPU0000:2A:00.0: Unknown Error"


def raw_fault(*args: str) -> str:
    return lab_cli("fault", "gpu-1", *args, name=NAME).stdout


def generate(fleet, port: int, stream: bool = False) -> tuple[int, str]:
    """HTTP status and body of a tinyllama generate on the host's loopback."""
    doc = json.dumps({"model": "tinyllama", "prompt": "hi", "stream": stream})
    _, out, _ = fleet.ssh("gpu-1", f"curl -sS -m 60 -w '\\n%{{http_code}}' -d '{doc}' "
                                   f"http://127.0.0.1:{port}/api/generate", check=False)
    body, _, status = out.rstrip("\n").rpartition("\n")
    return int(status or 0), body


def answers(fleet, port: int) -> bool:
    return fleet.ssh("gpu-1", f"curl -sS -m 1 http://127.0.0.1:{port}/api/ps",
                     check=False)[0] == 0


def test_the_labs_faults_show_where_the_agent_reads_them(fleet):
    """The faults as the lab makes them (lab/UPSTREAM.md), on gpu-1 with its health agent
    stopped: nobody heals them; a reboot ends the test (and starts the agent again)."""
    fleet.ssh("gpu-1", "systemctl stop ollama-fleet-health.service")
    query = ("nvidia-smi --query-gpu=index,ecc.errors.uncorrected.volatile.total,memory.used "
             "--format=csv,noheader,nounits")
    # the boot's kernel log: a regular file with its first record, nothing of journald's
    assert fleet.ssh("gpu-1", "test -f /dev/kmsg && cat /dev/kmsg")[1].startswith(
        "5,0,0,-;Linux version ")
    # a loaded model's memory in the host's nvidia-smi, with its process
    assert generate(fleet, 11434)[0] == 200
    used = {line.split(", ")[0]: int(line.split(", ")[2])
            for line in fleet.ssh("gpu-1", query)[1].splitlines()}
    assert used["0"] >= 513
    assert "/usr/bin/ollama" in fleet.ssh("gpu-1", "nvidia-smi")[1]

    # xid48: the record, the count, Ollama failing, a reset refused in use, then done
    raw_fault("xid48", "--gpu", "0")
    assert ": 48, pid=" in fleet.ssh("gpu-1", "tail -n 1 /dev/kmsg")[1]
    assert fleet.ssh("gpu-1", query)[1].splitlines()[0].split(", ")[1] == "1"
    assert generate(fleet, 11434) == (500, json.dumps(
        {"error": "an error was encountered while running the model: CUDA error\n"
                  "CUDA error: uncorrectable ECC error encountered"}, separators=(",", ":")))
    status, out, _ = fleet.ssh("gpu-1", "nvidia-smi -r -i 0", check=False)
    assert status == 255 and "In use by another client" in out
    fleet.ssh("gpu-1", "docker stop -t 5 ollama-0 && nvidia-smi -r -i 0 && docker start ollama-0")
    assert fleet.ssh("gpu-1", query)[1].splitlines()[0].split(", ")[1] == "0"
    poll(lambda: generate(fleet, 11434)[0] == 200, 90, what="ollama-0 serving after the reset")

    # nvml-lost: the container's nvidia-smi fails, the host's answers; a restart heals
    raw_fault("nvml-lost", "--gpu", "1")
    status, out, _ = fleet.ssh("gpu-1", "docker exec ollama-1 nvidia-smi -L", check=False)
    assert (status, out) == (255, "Failed to initialize NVML: Unknown Error\n")
    assert generate(fleet, 11435)[0] == 200  # the loaded model, or a load on the CPU
    fleet.ssh("gpu-1", "docker restart -t 5 ollama-1")
    assert fleet.ssh("gpu-1", "docker exec ollama-1 nvidia-smi -L")[0] == 0

    # cpu: /api/ps says size_vram 0 until the process restarts
    raw_fault("cpu", "--gpu", "0")
    _, ps, _ = fleet.ssh("gpu-1", "curl -sS -m 5 http://127.0.0.1:11434/api/ps")
    assert [m["size_vram"] for m in json.loads(ps)["models"]] == [0]
    fleet.ssh("gpu-1", "docker restart -t 5 ollama-0")
    poll(lambda: generate(fleet, 11434)[0] == 200, 90, what="ollama-0 after its restart")
    _, ps, _ = fleet.ssh("gpu-1", "curl -sS -m 5 http://127.0.0.1:11434/api/ps")
    assert json.loads(ps)["models"][0]["size_vram"] > 0

    # hang: connections accepted, no answer; crash: the restart policy brings it back
    raw_fault("hang", "--gpu", "0")
    status, _, err = fleet.ssh("gpu-1", "curl -sS -m 1 http://127.0.0.1:11434/api/ps",
                               check=False)
    assert status == 28, err  # curl: timed out (connected, nothing answered)
    raw_fault("crash", "--gpu", "0")
    poll(lambda: answers(fleet, 11434), 60, what="ollama-0 back after its crash")

    # fm-down: the unit failed; clear starts it again
    raw_fault("fm-down")
    assert fleet.ssh("gpu-1", "systemctl is-active nvidia-fabricmanager",
                     check=False)[1].strip() == "failed"
    assert "nvidia-fabricmanager started" in raw_fault("clear")
    assert fleet.ssh("gpu-1", "systemctl is-active nvidia-fabricmanager")[1].strip() == "active"

    # xid79: no handle for GPU 1, Ollama fails on it, no restart helps, a reboot does
    raw_fault("xid79", "--gpu", "1")
    status, out, _ = fleet.ssh("gpu-1", query, check=False)
    assert status == 255 and out.splitlines()[1] == NO_HANDLE_1
    status, out, _ = fleet.ssh("gpu-1", "docker exec ollama-1 nvidia-smi -L", check=False)
    assert status == 255 and "gpu 0000:2A:00.0: Unknown Error" in out
    assert generate(fleet, 11435)[0] == 500
    assert fleet.ssh("gpu-1", "docker restart -t 5 ollama-1", check=False)[0] != 0
    assert "GPU 1 stays off the bus until the host reboots" in raw_fault("clear")
    lab_cli("reboot", "gpu-1", name=NAME)
    fleet.close()  # the host's sshd is new
    poll(lambda: fleet.ssh("gpu-1", "nvidia-smi -L", check=False)[0] == 0, 60,
         what="nvidia-smi after the reboot")
    assert fleet.ssh("gpu-1", "wc -l < /dev/kmsg")[1].strip() == "1"
    poll(lambda: answers(fleet, 11435), 120, what="ollama-1 after the reboot")

"""The health agent (templates/health/health-agent.py), run here against stand-in
nvidia-smi, docker and systemctl on PATH, a kernel log file and Ollama instances served
on loopback: what it takes out, what it writes for the front doors and the host's nginx,
and which actions it takes, in which order, and when it must not."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ollama_fleet.tasks.kit.paths import TEMPLATES

# loaded as the host runs it (a script, not a module of the package): no bytecode beside it
AGENT_PATH = TEMPLATES / "health/health-agent.py"
agent_module = types.ModuleType("health_agent")
sys.modules["health_agent"] = agent_module
exec(compile(AGENT_PATH.read_text(), str(AGENT_PATH), "exec"), agent_module.__dict__)  # noqa: S102

SMI_OK = ("0, GPU-aaaa, 00000000:3B:00.0, 0, 4000, 81559\n"
          "1, GPU-bbbb, 00000000:5E:00.0, 0, 4000, 81559\n")


class Ollama:
    """An instance on loopback: /api/ps answers MODELS; hang=True accepts and never answers."""

    def __init__(self, hang: bool = False) -> None:
        self.models: list[dict] = []
        self.generated: list[dict] = []
        if hang:
            self.sock = socket.socket()
            self.sock.bind(("127.0.0.1", 0))
            self.sock.listen(16)
            self.port = self.sock.getsockname()[1]
            self.server = None
            return
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def reply(self, doc):
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self.reply({"models": outer.models})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                outer.generated.append(json.loads(self.rfile.read(length) or b"{}"))
                self.reply({"done": True})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
        else:
            self.sock.close()


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A GPU host: two GPUs, two instances, stand-in tools whose answers are files."""
    fake = tmp_path / "fake"
    fake.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (fake / "smi.out").write_text(SMI_OK)
    (fake / "smi.rc").write_text("0")
    (fake / "ps.out").write_text("ollama-0\trunning\nollama-1\trunning\n")
    (fake / "exec.out").write_text("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa)\n")
    (fake / "exec.rc").write_text("0")
    (fake / "fm.rc").write_text("0")
    tools = {
        "nvidia-smi": f'echo "nvidia-smi $*" >>{fake}/actions\n'
                      f'case "$1" in -r)\n'
                      f'   [ -f {fake}/smi.reset ] && mv {fake}/smi.reset {fake}/smi.out\n'
                      f'   exit "$(cat {fake}/reset.rc 2>/dev/null || echo 0)";;'
                      f' esac\n'
                      f'cat {fake}/smi.out; exit "$(cat {fake}/smi.rc)"',
        "docker": f'case "$1" in\n'
                  f'ps) cat {fake}/ps.out ;;\n'
                  f'inspect) cat {fake}/inspect.out 2>/dev/null || true ;;\n'
                  f'exec) cat {fake}/exec.out; exit "$(cat {fake}/exec.rc)" ;;\n'
                  f'*) echo "docker $*" >>{fake}/actions\n'
                  f'   flock -n {tmp_path}/lock true; echo "$?" >>{fake}/lock-free\n'
                  f'   cat {tmp_path}/lock.owner >>{fake}/lock-owner 2>/dev/null ;;\n'
                  f'esac',
        "systemctl": f'case "$1" in\n'
                     f'is-active) rc=$(cat {fake}/fm.rc); '
                     f'[ "$rc" = 0 ] && echo active || echo failed; exit "$rc" ;;\n'
                     f'*) echo "systemctl $*" >>{fake}/actions ;;\n'
                     f'esac',
    }
    for name, body in tools.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    run = tmp_path / "run"
    monkeypatch.setattr(agent_module, "RUN", str(run))
    monkeypatch.setattr(agent_module, "EVENTS", str(tmp_path / "lib/events.jsonl"))
    monkeypatch.setattr(agent_module, "KMSG", str(tmp_path / "kmsg"))
    (tmp_path / "kmsg").write_text("6,1,100,-;Linux version 6.12\n")
    instances = [Ollama(), Ollama()]
    yield Host(tmp_path, fake, instances)
    for inst in instances:
        inst.close()


class Host:
    def __init__(self, root: Path, fake: Path, instances: list[Ollama]) -> None:
        self.root, self.fake, self.instances = root, fake, instances
        self.seq = 10

    def config(self, **overrides) -> dict:
        config = {
            "host": "gpu-1", "interval_s": 1, "gpu_count": 2, "fabricmanager_unit": "",
            "address": "127.0.0.1", "project": "ollama", "stack_dir": "/opt/ollama",
            "lock": str(self.root / "lock"), "heal": True, "allow_reboot": False,
            "max_unavailable": 1, "return_after": 2, "proof_model": "llama3.2:1b",
            "proof_warm": True, "proof_timeout_s": 5, "front_doors": [],
            "instances": [{"name": f"ollama-{n}", "port": inst.port, "gpus": [n]}
                          for n, inst in enumerate(self.instances)]}
        return config | overrides

    def kernel(self, message: str) -> None:
        self.seq += 1
        with open(self.root / "kmsg", "a") as f:
            f.write(f"3,{self.seq},{self.seq * 1000},-;{message}\n SUBSYSTEM=pci\n")

    def actions(self) -> list[str]:
        path = self.fake / "actions"
        return [a for a in path.read_text().splitlines() if not a.startswith("nvidia-smi --")] \
            if path.exists() else []

    def verdict(self) -> dict:
        return json.loads((self.root / "run/verdict.json").read_text())

    def instance(self, name: str) -> dict:
        return next(i for i in self.verdict()["instances"] if i["name"] == name)

    def flagged(self) -> set[str]:
        return {p.name for p in (self.root / "run/out").iterdir()}

    def events(self) -> list[dict]:
        path = self.root / "lib/events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] \
            if path.exists() else []


def checks(agent, count: int = 1) -> None:
    """COUNT cycles, each followed by the end of any healing action it started."""
    for _ in range(count):
        agent.check()
        for _ in range(200):  # bounded: the stand-in actions are instant
            if not agent.busy.locked():
                break
            time.sleep(0.01)
        for future, _ in list(agent.jobs.values()):  # background reads finish
            future.result(timeout=10)


def on_gpu(name="llama3.2:1b", vram=1000):
    return {"name": name, "model": name, "size": 1000, "size_vram": vram}


def test_a_healthy_host_has_every_instance_in_and_no_flag(host):
    agent = agent_module.Agent(host.config())
    checks(agent, 2)
    verdict = host.verdict()
    assert verdict["state"] == "ok" and verdict["host"] == "gpu-1"
    assert [(i["name"], i["state"], i["gpus"]) for i in verdict["instances"]] == [
        ("ollama-0", "ok", ["0"]), ("ollama-1", "ok", ["1"])]
    assert host.flagged() == set()
    assert host.actions() == []


def test_xid79_takes_out_the_instance_on_that_gpu_only_and_a_reboot_waits_for_the_knob(host):
    agent = agent_module.Agent(host.config())
    checks(agent)
    host.kernel("NVRM: Xid (PCI:0000:5e:00): 79, pid=1234, name=ollama, GPU has fallen off "
                "the bus.")
    checks(agent, 2)
    assert host.instance("ollama-1")["state"] == "out"
    assert host.instance("ollama-1")["kind"] == "xid79"
    assert "fallen off the bus" in host.instance("ollama-1")["reason"]
    assert host.instance("ollama-0")["state"] == "ok"
    assert host.flagged() == {"ollama-1"}
    # no reset reaches a GPU off the bus: only a reboot, and the knob is off
    assert "health_allow_reboot is off" in host.instance("ollama-1")["action"]
    assert host.actions() == []
    kinds = [(e["instance"], e["kind"], e["action"], e["result"]) for e in host.events()]
    assert ("ollama-1", "xid79", "evicted", "out of rotation") in kinds
    assert ("ollama-1", "xid79", "reboot", "waits") in kinds


def test_a_double_bit_ecc_error_resets_the_idle_gpu_and_the_instance_returns(host):
    agent = agent_module.Agent(host.config())
    checks(agent)
    host.kernel("NVRM: Xid (PCI:0000:3b:00): 48, pid=1, name=ollama, An uncorrectable double "
                "bit error (DBE) has been detected on GPU in the framebuffer")
    checks(agent, 2)
    assert host.instance("ollama-0")["kind"] == "xid48"
    # idle first: its instance stopped (by the agent: started again, not left to an operator)
    assert host.actions() == ["docker stop -t 10 ollama-0", "nvidia-smi -r -i 0",
                              "docker start ollama-0"]
    host.instances[0].models = [on_gpu()]
    checks(agent, 3)
    assert host.instance("ollama-0")["state"] == "ok"
    assert ("ollama-0", "xid48", "reset-gpu", "done") in [
        (e["instance"], e["kind"], e["action"], e["result"]) for e in host.events()]


def test_an_xid_record_read_after_the_ecc_count_is_the_error_the_reset_clears(host):
    """The driver writes the Xid 48 record and raises the ECC count together; the agent's
    nvidia-smi may see the count after that cycle's read of the kernel log. The record is
    read before the reset, so it is not taken afterwards for a new error: one reset."""
    agent = agent_module.Agent(host.config())
    checks(agent)
    read = agent.kmsg.read
    # the cycle's kernel read came before the record: nothing, until the fault is known
    agent.kmsg.read = lambda: read() if "ollama-0" in agent.faults else []
    host.kernel("NVRM: Xid (PCI:0000:3b:00): 48, pid=1, name=ollama, An uncorrectable double "
                "bit error (DBE) has been detected on GPU in the framebuffer")
    (host.fake / "smi.out").write_text(SMI_OK.replace("3B:00.0, 0,", "3B:00.0, 1,"))
    (host.fake / "smi.reset").write_text(SMI_OK)  # a reset clears the volatile count
    checks(agent, 2)
    assert host.actions() == ["docker stop -t 10 ollama-0", "nvidia-smi -r -i 0",
                              "docker start ollama-0"]
    host.instances[0].models = [on_gpu()]
    checks(agent, 5)
    assert host.instance("ollama-0")["state"] == "ok"
    assert host.actions() == ["docker stop -t 10 ollama-0", "nvidia-smi -r -i 0",
                              "docker start ollama-0"]  # one reset, not a second one
    kinds = [(e["kind"], e["action"]) for e in host.events()]
    assert kinds == [("ecc", "evicted"), ("xid48", "seen"), ("ecc", "reset-gpu"),
                     ("ecc", "returned")], kinds


def test_a_kernel_record_is_acted_on_once_per_boot_even_after_the_agent_restarts(host):
    host.kernel("NVRM: Xid (PCI:0000:3b:00): 48, pid=1, name=x, An uncorrectable double bit "
                "error (DBE) has been detected")
    (host.root / "run").mkdir()
    first = agent_module.KernelLog()
    assert [m for m in first.read() if "Xid" in m]
    again = agent_module.KernelLog()  # a restarted agent: /run kept the last record's number
    assert again.read() == []


def test_nvidia_smi_that_cannot_reach_a_gpu_takes_its_instance_out(host):
    agent = agent_module.Agent(host.config(heal=False))
    checks(agent)
    (host.fake / "smi.out").write_text(
        "0, GPU-aaaa, 00000000:3B:00.0, 0, 4000, 81559\n"
        "Unable to determine the device handle for GPU0000:5E:00.0: Unknown Error\n")
    (host.fake / "smi.rc").write_text("15")
    checks(agent, 2)
    assert host.instance("ollama-1")["state"] == "out"
    assert host.instance("ollama-0")["state"] == "ok"
    assert host.actions() == []  # heal off: detect and evict only


def test_an_ecc_count_that_rises_is_a_fault_of_that_gpu(host):
    agent = agent_module.Agent(host.config(heal=False))
    checks(agent)
    (host.fake / "smi.out").write_text(SMI_OK.replace("3B:00.0, 0,", "3B:00.0, 2,"))
    checks(agent, 2)
    assert host.instance("ollama-0")["kind"] == "ecc"
    assert "2 uncorrected ECC errors" in host.instance("ollama-0")["reason"]


def test_a_host_whose_nvidia_smi_fails_is_out_whole_and_flagged_for_its_nginx(host):
    agent = agent_module.Agent(host.config(heal=False))
    (host.fake / "smi.out").write_text("NVIDIA-SMI has failed because it couldn't communicate "
                                       "with the NVIDIA driver.\n")
    (host.fake / "smi.rc").write_text("9")
    checks(agent, 3)
    verdict = host.verdict()
    assert verdict["state"] == "out" and verdict["kind"] == "nvidia-smi"
    assert "couldn't communicate" in verdict["reason"]
    assert {i["state"] for i in verdict["instances"]} == {"out"}
    assert "host" in host.flagged()


def test_fabric_manager_down_is_restarted_with_the_gpus_reset_in_between(host):
    agent = agent_module.Agent(host.config(fabricmanager_unit="nvidia-fabricmanager"))
    checks(agent)
    (host.fake / "fm.rc").write_text("3")
    checks(agent, 3)
    assert host.verdict()["kind"] == "fm-down"
    # NVIDIA's order: clients stopped, Fabric Manager stopped, GPUs reset, then started
    assert host.actions() == ["docker stop -t 10 ollama-0", "docker stop -t 10 ollama-1",
                              "systemctl stop nvidia-fabricmanager", "nvidia-smi -r",
                              "systemctl start nvidia-fabricmanager", "docker start ollama-0",
                              "docker start ollama-1"]


def test_a_hung_instance_is_out_after_two_checks_and_restarted(host, tmp_path):
    hung = Ollama(hang=True)
    host.instances.append(hung)
    config = host.config()
    config["instances"][1]["port"] = hung.port
    agent = agent_module.Agent(config)
    checks(agent)
    assert host.instance("ollama-1")["state"] == "ok"  # one slow answer is not a hang
    checks(agent)
    assert host.instance("ollama-1")["kind"] == "hang"
    # killed at once (no grace for what answers nothing): the requests it held fail while the
    # front door can still pass them to another host
    assert "docker restart -t 0 ollama-1" in host.actions()


def test_an_instance_on_the_cpu_is_restarted_and_returns_only_after_the_gpu_proof(host):
    slow = host.instances[0]
    slow.models = [on_gpu(vram=0)]
    agent = agent_module.Agent(host.config())
    checks(agent, 2)
    assert host.instance("ollama-0")["kind"] == "cpu"
    assert host.actions() == ["docker restart -t 10 ollama-0"]
    slow.models = [on_gpu()]  # after the restart: on the GPU again
    checks(agent, 5)
    assert host.instance("ollama-0")["state"] == "ok"
    assert slow.generated == [{"model": "llama3.2:1b", "keep_alive": -1}]
    assert ("ollama-0", "returned") in [(e["instance"], e["action"]) for e in host.events()]
    assert host.flagged() == set()


def test_an_instance_that_lost_nvml_is_recreated(host):
    (host.fake / "exec.out").write_text("Failed to initialize NVML: Unknown Error\n")
    (host.fake / "exec.rc").write_text("255")
    agent = agent_module.Agent(host.config())
    checks(agent, 4)
    assert host.instance("ollama-0")["kind"] == "nvml-lost"
    assert ("docker compose --project-directory /opt/ollama -p ollama up -d --force-recreate "
            "--no-deps ollama-0") in host.actions()


def test_while_a_deploy_or_roll_holds_the_lock_nothing_new_is_taken_out(host):
    import fcntl

    lock = host.root / "lock"
    lock.write_text("")
    agent = agent_module.Agent(host.config())
    with open(lock) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        host.instances[0].models = [on_gpu(vram=0)]  # a deploy's own proof restarts it
        checks(agent, 3)
        assert host.flagged() == set() and host.actions() == []
    checks(agent, 2)  # the deploy is done and it is still on the CPU: now it is the agent's
    assert host.instance("ollama-0")["kind"] == "cpu"


def test_an_instance_that_could_not_start_is_started_but_not_while_a_deploy_holds_the_lock(
        host):
    import fcntl

    (host.fake / "ps.out").write_text("ollama-0\texited\nollama-1\trunning\n")
    (host.fake / "inspect.out").write_text("2026-12-06T10:00:00Z error gathering device "
                                           "information\n")
    agent = agent_module.Agent(host.config())
    lock = host.root / "lock"
    lock.write_text("")
    with open(lock) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        checks(agent, 2)
        assert host.flagged() == set() and host.actions() == []  # a deploy is at work here
    checks(agent)
    assert host.instance("ollama-0")["kind"] == "down"
    assert host.actions() == ["docker start ollama-0"]


def test_a_reboot_waits_while_another_host_is_out_at_the_front_door(host):
    class FrontDoor(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = json.dumps({"hosts": {"gpu-1": {"state": "in"},
                                         "gpu-2": {"state": "drained", "cause": "drain"}}})
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

    server = ThreadingHTTPServer(("127.0.0.1", 0), FrontDoor)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/fleet/rotation"
        agent = agent_module.Agent(host.config(allow_reboot=True, front_doors=[url]))
        checks(agent)
        host.kernel("NVRM: Xid (PCI:0000:5e:00): 79, pid=1, name=x, GPU has fallen off the bus.")
        checks(agent, 3)
        # ollama-0 still serves: a reboot would take it out too, and gpu-2 is out already
        assert "1 other host(s) out (gpu-2: drained)" in host.instance("ollama-1")["action"]
        assert not any("reboot" in a for a in host.actions())
        agent.c["max_unavailable"] = 2
        checks(agent)
        assert "systemctl reboot" in host.actions()
    finally:
        server.shutdown()
        server.server_close()


def test_a_host_that_serves_nothing_reboots_whatever_the_bound(host):
    agent = agent_module.Agent(host.config(allow_reboot=True, max_unavailable=0,
                                           front_doors=["http://127.0.0.1:9/none"]))
    (host.fake / "smi.out").write_text("No devices were found\n")
    (host.fake / "smi.rc").write_text("6")
    checks(agent, 3)
    assert "systemctl reboot" in host.actions()


def test_a_restarted_agent_keeps_out_what_it_held_out_until_proven(host):
    slow = host.instances[0]
    slow.models = [on_gpu(vram=0)]
    agent = agent_module.Agent(host.config(heal=False))
    checks(agent, 2)
    assert host.flagged() == {"ollama-0"}
    slow.models = [on_gpu()]
    again = agent_module.Agent(host.config(heal=False))  # a deploy restarted it
    checks(again)
    assert host.flagged() == {"ollama-0"}  # not back before its checks and its proof
    checks(again, 3)
    assert host.flagged() == set()


def test_model_names_compare_as_ollama_reads_them():
    assert agent_module.same_model("Llama3.2", "llama3.2:latest")
    assert not agent_module.same_model("llama3.2:1b", "llama3.2")
    assert agent_module.smi_bus_key("00000000:3B:00.0") == "3b:00"
    assert agent_module.bus_key("3b", "00") == "3b:00"


def test_an_instance_an_operator_stopped_is_out_but_left_to_them(host):
    (host.fake / "ps.out").write_text("ollama-0\texited\nollama-1\trunning\n")
    (host.fake / "inspect.out").write_text("2026-12-06T10:00:00.5Z \n")
    agent = agent_module.Agent(host.config())
    checks(agent, 3)
    assert host.instance("ollama-0")["kind"] == "stopped"
    assert "needs an operator" in [e["result"] for e in host.events()]
    assert host.actions() == []


def test_dockers_own_error_under_a_restart_is_not_a_lost_nvml(host):
    (host.fake / "exec.out").write_text("Error response from daemon: Container 4f2e is "
                                        "restarting, wait until the container is running\n")
    (host.fake / "exec.rc").write_text("1")
    agent = agent_module.Agent(host.config())
    checks(agent, 4)
    assert host.instance("ollama-0")["state"] == "ok"


def test_a_crash_just_now_is_not_an_operators_stop(host):
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000001Z", time.gmtime())
    (host.fake / "ps.out").write_text("ollama-0\texited\nollama-1\trunning\n")
    (host.fake / "inspect.out").write_text(f"{now} \n")
    agent = agent_module.Agent(host.config())
    checks(agent, 2)
    assert host.instance("ollama-0")["kind"] == "down"
    assert "docker start ollama-0" in host.actions()


def test_a_crash_docker_restarted_between_two_checks_is_out_as_a_crash_until_proven(host):
    """Docker's restart policy starts a dead instance again within a second: the agent sees
    it serving, then in its start period. It is out as a crash (an event the operator sees),
    Docker's restart is its first action, and it returns after the GPU proof."""
    for inst in host.instances:
        inst.models = [on_gpu()]
    agent = agent_module.Agent(host.config())
    checks(agent)
    (host.fake / "ps.out").write_text("ollama-0\trunning\tUp 1 second (health: starting)\n"
                                      "ollama-1\trunning\tUp 2 hours (healthy)\n")
    checks(agent)
    assert host.instance("ollama-0")["kind"] == "crash"
    assert host.instance("ollama-1")["state"] == "ok"
    checks(agent, 2)  # still in its start period: the same fault, nothing done to it
    assert host.instance("ollama-0")["kind"] == "crash"
    (host.fake / "ps.out").write_text("ollama-0\trunning\tUp 9 seconds (healthy)\n"
                                      "ollama-1\trunning\tUp 2 hours (healthy)\n")
    checks(agent, 4)
    assert host.instance("ollama-0")["state"] == "ok"
    assert host.actions() == []  # Docker started it: the agent neither started nor restarted
    mine = [(e["instance"], e["kind"], e["action"]) for e in host.events()]
    assert mine == [("ollama-0", "crash", "evicted"), ("ollama-0", "crash", "returned")]


def test_an_instance_in_its_start_period_at_the_agents_start_is_starting_not_a_crash(host):
    (host.fake / "ps.out").write_text("ollama-0\trunning\tUp 1 second (health: starting)\n"
                                      "ollama-1\trunning\tUp 2 hours (healthy)\n")
    agent = agent_module.Agent(host.config())
    checks(agent, 2)
    assert host.instance("ollama-0")["kind"] == "starting"
    assert host.events() == []


def test_a_removed_container_is_out_but_never_recreated_by_the_agent(host):
    (host.fake / "ps.out").write_text("ollama-1\trunning\n")  # ollama-0 is gone
    agent = agent_module.Agent(host.config())
    checks(agent, 3)
    assert host.instance("ollama-0")["kind"] == "missing"
    assert host.actions() == []


def test_a_host_a_roll_holds_out_is_the_rolls_nothing_new_out_no_action(host):
    class FrontDoor(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = json.dumps({"hosts": {"gpu-1": {"state": "held", "cause": "roll"}}})
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

    server = ThreadingHTTPServer(("127.0.0.1", 0), FrontDoor)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/fleet/rotation"
        agent = agent_module.Agent(host.config(front_doors=[url]))
        checks(agent, 2)  # the front door's word arrives
        host.instances[0].models = [on_gpu(vram=0)]  # the roll's new release, proving
        checks(agent, 3)
        assert host.flagged() == set() and host.actions() == []
    finally:
        server.shutdown()
        server.server_close()


def test_an_action_holds_the_run_lock_so_a_deploy_waits_for_it_and_lets_it_go_after(host):
    host.instances[0].models = [on_gpu(vram=0)]
    agent = agent_module.Agent(host.config())
    checks(agent, 2)
    assert host.actions() == ["docker restart -t 10 ollama-0"]
    assert (host.fake / "lock-free").read_text() == "1\n"  # held while docker ran
    owner = (host.fake / "lock-owner").read_text()
    assert owner.startswith("ollama-fleet-health on gpu-1: restart ollama-0 since ")
    assert not (host.root / "lock.owner").exists()  # removed before the lock went
    import fcntl

    with open(host.root / "lock") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again


def test_an_action_whose_lock_a_deploy_took_first_is_not_taken_and_comes_again(host):
    import fcntl

    host.instances[0].models = [on_gpu(vram=0)]
    agent = agent_module.Agent(host.config(heal=False))
    checks(agent, 2)
    agent.c["heal"] = True
    fault = agent.faults["ollama-0"]
    lock = host.root / "lock"
    lock.write_text("")
    with open(lock) as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a deploy took it between the check and the act
        fault.step, fault.action = 0, "restart"
        agent.busy.acquire()
        agent.act("ollama-0", fault, "cpu", "restart")
        assert host.actions() == [] and not agent.busy.locked()
        assert (fault.step, fault.action) == (-1, "")
    checks(agent, 1)
    assert host.actions() == ["docker restart -t 10 ollama-0"]


def test_the_lock_is_never_opened_through_a_link(host, tmp_path):
    target = tmp_path / "precious"
    target.write_text("root only\n")
    (host.root / "lock").symlink_to(target)
    host.instances[0].models = [on_gpu(vram=0)]
    agent = agent_module.Agent(host.config())
    checks(agent, 2)
    assert host.actions() == []  # no lock, no action
    assert target.read_text() == "root only\n"


def test_the_lock_in_a_directory_others_may_write_is_refused(host):
    open_dir = host.root / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    host.instances[0].models = [on_gpu(vram=0)]
    agent = agent_module.Agent(host.config(lock=str(open_dir / "run.lock")))
    checks(agent, 2)
    assert host.actions() == [] and not (open_dir / "run.lock").exists()

"""A host that disappears mid-deploy: the others converge, the run names it, a re-run heals it."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess

import pytest

from tests.conftest import running_lab
from tests.labfleet import PYINFRA, REPO, lab_cli, poll

pytestmark = pytest.mark.lab

NAME = "fleetlab-faults"
FOREIGN = {"default-address-pools": [{"base": "10.202.0.0/16", "size": 24}]}


@pytest.fixture(scope="module")
def fleet():
    # gpu-1 an HGX H100 board (NVSwitch: Fabric Manager), gpu-2 an HGX B200 (Blackwell)
    with running_lab(NAME, "--gpu-hosts", "2", "--gpus-per-host", "1", "--cpu-hosts", "1",
                     "--gpu-model", "H100,B200",
                     "--registry-port", "5054", "--model-scale", "0.25") as lab:
        yield lab


def _driver_installs(fleet, host: str) -> int:
    _, out, _ = fleet.ssh(host, "grep -c ' install nvidia-driver-cuda:' /var/log/dpkg.log || true")
    return int(out.strip() or 0)


def test_host_cut_mid_deploy_fails_alone_and_reconverges(fleet):
    fleet.ssh("gpu-2", f"mkdir -p /etc/docker && echo '{json.dumps(FOREIGN)}' "
                       "> /etc/docker/daemon.json")
    # No _timeout: the SSH connection itself notices the lost host (tasks/engine/connection.py)
    cmd = [PYINFRA, "-y", fleet.inventory, "deploy.py"]
    run = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, stdin=subprocess.DEVNULL, env=dict(os.environ))
    try:
        # gpu-2 is mid-deploy once its Docker engine is installed (driver done, stack not yet)
        # (each try bounded: gpu-2 reboots into its driver on the way)
        poll(lambda: fleet.ssh("gpu-2", "command -v dockerd", timeout=10, check=False)[0] == 0
             or run.poll() is not None, timeout=300, interval=1,
             what="gpu-2 reaching the Docker step")
        assert run.poll() is None, run.stdout.read()
        lab_cli("cut", "gpu-2", name=NAME)
        fleet.forget("gpu-2")
        output, _ = run.communicate(timeout=900)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode != 0, output
    # the lost host is named, with the step it was on, in one line
    failed = re.findall(r'^--> (\S+): failed at step "([^"]+)"', output, re.M)
    assert [host for host, _ in failed] == ["gpu-2"], output[-4000:]
    step_in_log = output.split("[gpu-2] Error")[0].rsplit("--> Starting operation: ", 1)[-1]
    assert step_in_log.startswith(failed[0][1])
    # the others converged: their stacks answer
    lab_cli("restore", "gpu-2", name=NAME)
    for host in ("gpu-1", "cpu-1"):
        _, out, _ = fleet.ssh(host, "curl -sS http://127.0.0.1/api/tags")
        assert "tinyllama:latest" in out, (host, out)

    proc = fleet.pyinfra("deploy.py")
    assert proc.returncode == 0, proc.output[-4000:]
    for host in ("gpu-1", "gpu-2"):
        assert _driver_installs(fleet, host) == 1, f"{host}: driver installed twice"
    _, daemon, _ = fleet.ssh("gpu-2", "cat /etc/docker/daemon.json")
    daemon = json.loads(daemon)
    assert daemon["default-address-pools"] == FOREIGN["default-address-pools"]
    assert "nvidia" in daemon["runtimes"]
    _, out, _ = fleet.ssh("gpu-2", "curl -sS http://127.0.0.1/api/tags")
    assert "tinyllama:latest" in out


STATE = "sha1sum /opt/ollama/compose.yaml /opt/ollama/nginx/ollama.conf; docker ps -q --no-trunc"


def test_a_second_run_on_a_host_stops_at_once_naming_the_first(fleet):
    fleet.ssh("gpu-1", "touch /tmp/hold-lock")
    first = subprocess.Popen([PYINFRA, "-y", "--limit", "gpu-1", fleet.inventory,
                              "tests/lab/deploys/hold_lock.py"], cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
    try:
        # (an earlier run's holder lets go within 0.2 s of its run's end)
        poll(lambda: "a test's long run" in fleet.ssh(
            "gpu-1", "cat /run/ollama-fleet-lock/run.lock.owner", check=False)[1], timeout=120,
            what="the first run holding gpu-1")
        before = fleet.ssh("gpu-1", STATE)[1]
        second = fleet.pyinfra("deploy.py", limit="gpu-1")
        assert second.returncode == 1, second.output[-3000:]
        said = [line for line in second.output.splitlines() if "another run holds" in line]
        assert said and "gpu-1: another run holds this host (" in said[0] \
            and "a test's long run" in said[0], second.output[-3000:]
        assert "--> Beginning operation run" not in second.output  # stopped before any op
        assert fleet.ssh("gpu-1", STATE)[1] == before
        first.kill()  # the first run dies: its lock goes with its connection
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
        fleet.ssh("gpu-1", "rm -f /tmp/hold-lock")
    third = fleet.pyinfra("deploy.py", limit="gpu-1")
    assert third.returncode == 0, third.output[-3000:]


LOCK_DIR = "/run/ollama-fleet-lock"


def test_a_local_user_cannot_block_the_lock_make_a_run_kill_or_redirect_a_write(fleet):
    """The lock is root's alone: a local user's tries at the old world-writable place and
    at the new one change nothing, and a forged owner line makes nothing be killed."""
    fleet.ssh("gpu-1", "id intruder >/dev/null 2>&1 || useradd -M -s /bin/sh intruder")
    fleet.ssh("gpu-1", "printf 'root only\\n' >/root/precious && chmod 600 /root/precious")
    # the user holds the old lock, links its owner file to a root-only file, and tries the
    # new directory (each refused by the kernel, not by our code)
    tries = ("exec 9>>/run/lock/ollama-fleet.lock && flock 9 && "
             "ln -sf /root/precious /run/lock/ollama-fleet.lock.owner && "
             "(mkdir -p /run/ollama-fleet-lock 2>/dev/null; "
             f"ln -s /root/precious {LOCK_DIR}/run.lock.owner 2>&1; "
             f"echo x >>{LOCK_DIR}/run.lock 2>&1; "
             "touch /tmp/intruder-ready; sleep 120)")
    fleet.ssh("gpu-1", "rm -f /tmp/intruder-ready /run/lock/ollama-fleet.lock*; "
                       f"setsid su intruder -c '{tries}' >/tmp/intruder.out 2>&1 </dev/null &")
    holder = None
    try:
        poll(lambda: fleet.ssh("gpu-1", "test -e /tmp/intruder-ready", check=False)[0] == 0,
             timeout=30, what="the local user's tries")
        said = fleet.ssh("gpu-1", "cat /tmp/intruder.out")[1]
        assert said.count("Permission denied") >= 2, said
        # a root process a forged owner line names: only root could write one, and even
        # then hold.sh ends no pid that /proc does not show is the lock's holder
        holder = fleet.ssh("gpu-1", "setsid sleep 300 >/dev/null 2>&1 </dev/null & echo $!")[1]
        holder = holder.strip()
        proc = fleet.pyinfra("deploy.py", limit="gpu-1")  # cannot block
        assert proc.returncode == 0, proc.output[-3000:]
        assert fleet.ssh("gpu-1", "cat /root/precious")[1] == "root only\n"  # not redirected
        assert fleet.ssh("gpu-1", f"stat -c '%u %a' {LOCK_DIR}")[1].strip() == "0 700"
        forged = (f"ops@{os.uname().nodename} pid 1: deploy.py since 2026-12-06T00:00:00Z "
                  f"(holder {holder}, connection 1)")
        fleet.ssh("gpu-1", f"echo '{forged}' >{LOCK_DIR}/run.lock.owner")
        hold = (REPO / "templates/lock/hold.sh").read_text()
        status, _, _ = fleet.ssh(
            "gpu-1", f"sh -c {shlex.quote(hold)} hold.sh break {LOCK_DIR}/run.lock {holder}",
            check=False)
        assert status == 1
        assert fleet.ssh("gpu-1", f"kill -0 {holder}", check=False)[0] == 0, "it was killed"
    finally:
        fleet.ssh("gpu-1", f"pkill -u intruder; rm -f /tmp/intruder-* {LOCK_DIR}/run.lock.owner "
                           "/run/lock/ollama-fleet.lock*; userdel intruder; rm -f /root/precious"
                           + (f"; kill {holder}" if holder else ""), check=False)


def test_a_daemon_json_docker_refuses_never_reaches_a_restart(fleet):
    """dockerd --validate checks the staged file; a failure leaves Docker as it runs."""
    bad = ("python3 -c \"import json; p = '/etc/docker/daemon.json'; d = json.load(open(p)); "
           "d['no-such-directive'] = True; json.dump(d, open(p, 'w'))\"")
    fleet.ssh("cpu-1", bad)
    pid = fleet.ssh("cpu-1", "systemctl show -p MainPID --value docker")[1].strip()
    written = fleet.ssh("cpu-1", "cat /etc/docker/daemon.json")[1]
    try:
        proc = fleet.pyinfra("deploy.py", "--data", "docker_log_max_size=20m", limit="cpu-1")
        assert proc.returncode != 0, proc.output[-3000:]
        assert "dockerd --validate" in proc.output and "the live file is unchanged" in \
            proc.output, proc.output[-3000:]
        assert fleet.ssh("cpu-1", "systemctl show -p MainPID --value docker")[1].strip() == pid
        assert fleet.ssh("cpu-1", "cat /etc/docker/daemon.json")[1] == written
    finally:
        fleet.ssh("cpu-1", bad.replace("d['no-such-directive'] = True",
                                       "d.pop('no-such-directive', None)"))
    proc = fleet.pyinfra("deploy.py", limit="cpu-1")
    assert proc.returncode == 0, proc.output[-3000:]


def test_a_connection_cut_while_daemon_json_changes_leaves_a_whole_file(fleet):
    """Cut as the daemon.json step starts: the live file is the old one or the new one,
    whole, and Docker runs; the next run converges."""
    old = fleet.ssh("cpu-1", "cat /etc/docker/daemon.json")[1]
    cmd = [PYINFRA, "-y", "--limit", "cpu-1", fleet.inventory, "deploy.py",
           "--data", "docker_log_max_size=30m"]
    run = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, stdin=subprocess.DEVNULL)
    try:
        seen = []
        for line in run.stdout:  # ends with the run at the latest
            seen.append(line)
            if "Starting operation: daemon.json" in line:
                break
        assert run.poll() is None, "".join(seen[-40:])
        lab_cli("cut", "cpu-1", name=NAME)
        fleet.forget("cpu-1")
        run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(timeout=30)
        lab_cli("restore", "cpu-1", name=NAME)
    assert run.returncode != 0
    now = fleet.ssh("cpu-1", "cat /etc/docker/daemon.json")[1]
    assert now == old or json.loads(now)["log-opts"]["max-size"] == "30m", now
    fleet.ssh("cpu-1", "docker info --format '{{.ServerVersion}}'")  # Docker answers
    proc = fleet.pyinfra("deploy.py", limit="cpu-1")
    assert proc.returncode == 0, proc.output[-3000:]


# -- the driver on real boards ------------------------------------------------------------

def test_a_blackwell_board_gets_the_open_modules_by_itself(fleet):
    """No flavour was set: the B200 got the open kernel modules (the proprietary ones would
    leave it without a device) and, an HGX B200, its Fabric Manager."""
    _, flavours, _ = fleet.ssh("gpu-2", "dpkg-query -W -f '${Package} ${Status}\\n' "
                                        "nvidia-kernel-open-dkms nvidia-kernel-dkms", check=False)
    installed = {line.split()[0] for line in flavours.splitlines() if "ok installed" in line}
    assert installed == {"nvidia-kernel-open-dkms"}, flavours
    assert fleet.ssh("gpu-2", "nvidia-smi --query-gpu=name --format=csv,noheader")[1] == \
        "NVIDIA B200\n"
    assert fleet.ssh("gpu-2", "systemctl is-active nvidia-fabricmanager")[1] == "active\n"
    # NVLink 5: Fabric Manager runs only with the NVLink Subnet Manager beside it
    assert fleet.ssh("gpu-2", "dpkg-query -W -f '${Status}' nvlsm")[1] == "install ok installed"
    # and the deploy's GPU proof passes on it: with a model to prove with, a model loaded
    # on the CPU would fail the run ("... runs on the CPU")
    proc = fleet.pyinfra("deploy.py", "--data", 'ollama_models=["tinyllama"]', limit="gpu-2")
    assert proc.returncode == 0, proc.output[-3000:]
    assert _instances_on_gpu(fleet, "gpu-2")


STACK = ("docker ps -aq | sort | xargs -r docker inspect -f "
         "'{{.Name}} {{.Config.Image}} {{.State.Status}} {{.State.StartedAt}}'; "
         "md5sum /opt/ollama/compose.yaml")


def test_an_image_with_no_build_for_the_board_is_refused_before_the_stack_changes(fleet):
    """0.6.8 has no CUDA build for compute capability 10.0: on the B200 it would serve from
    the CPU. The deploy stops at the stack step, naming image, GPU and the way out, with
    the running stack untouched (upstream's CMakePresets.json, ollama/ollama#12860)."""
    before = fleet.ssh("gpu-2", STACK)[1]
    proc = fleet.pyinfra("deploy.py", "--data", "ollama_image=ollama/ollama:0.6.8",
                         limit="gpu-2")
    assert proc.returncode == 1, proc.output[-3000:]
    assert ("ollama_image: ollama/ollama:0.6.8 has no CUDA build for compute capability 10.0 "
            "(NVIDIA B200); Ollama would serve from the CPU; use ollama/ollama:0.11.11 or "
            "later") in proc.output, proc.output[-3000:]
    assert '--> gpu-2: failed at step "Compose file and nginx config (checked, then live)"' \
        in proc.output, proc.output[-3000:]
    assert fleet.ssh("gpu-2", STACK)[1] == before


def test_the_proprietary_flavour_on_blackwell_stops_that_host_untouched(fleet):
    before = fleet.ssh("gpu-2", "dpkg-query -W | md5sum; apt-mark showhold | md5sum")[1]
    proc = fleet.pyinfra("deploy.py", "--data", "nvidia_driver_flavour=proprietary",
                         limit="gpu-2")
    assert proc.returncode != 0, proc.output[-3000:]
    assert ("gpu-2: nvidia_driver_flavour: Blackwell GPUs (device 0x2901) run only with the "
            "open kernel modules") in proc.output, proc.output[-3000:]
    assert fleet.ssh("gpu-2", "dpkg-query -W | md5sum; apt-mark showhold | md5sum")[1] == before


def _instances_on_gpu(fleet, host: str) -> bool:
    _, ps, _ = fleet.ssh(host, "curl -sS http://127.0.0.1:11434/api/ps", check=False)
    try:
        models = json.loads(ps)["models"]
    except (ValueError, KeyError):
        return False
    return bool(models) and all(m["size_vram"] == m["size"] for m in models)


def test_fabric_manager_unable_to_start_fails_the_host_naming_it_then_heals(fleet):
    """Without Fabric Manager an NVSwitch board's CUDA does not initialise, and an Ollama
    started then would serve from the CPU for good. So at boot Docker waits for it
    (bounded: 30 s here), each GPU instance then waits for its fabric instead of serving,
    and the deploy stops at Fabric Manager, naming it; once Fabric Manager can start
    again, the next deploy heals the host."""
    cfg = "/usr/share/nvidia/nvswitch/fabricmanager.cfg"
    quick = ("--data", "nvidia_gpu_ready_timeout=30")
    proc = fleet.pyinfra("deploy.py", *quick, limit="gpu-1")
    assert proc.returncode == 0, proc.output[-3000:]
    fleet.ssh("gpu-1", f"cp {cfg} /root/fabricmanager.cfg && echo 'not a setting' >> {cfg}")
    try:
        fleet.reboot("gpu-1")  # Fabric Manager fails at boot
        poll(lambda: "not ready after 30 s: nvidia-fabricmanager.service is failed" in fleet.ssh(
            "gpu-1", "journalctl -b -u ollama-fleet-gpu-ready --no-pager", check=False)[1],
            120, what="the boot's GPU wait giving up")
        poll(lambda: "waiting for the GPUs: GPU fabric not up yet (Fabric State: In Progress; "
             "is Fabric Manager running?)" in fleet.ssh(
                 "gpu-1", "docker logs ollama-0 2>&1", check=False)[1], 120,
             what="ollama-0 waiting for its fabric")
        # nothing serves from the CPU meanwhile
        assert fleet.ssh("gpu-1", "curl -sf http://127.0.0.1:11434/api/version",
                         check=False)[0] != 0
        proc = fleet.pyinfra("deploy.py", *quick, limit="gpu-1")
        assert proc.returncode == 1, proc.output[-3000:]
        assert '--> gpu-1: failed at step "Fabric Manager enabled and started (NVSwitch ' \
               'board)"' in proc.output, proc.output[-3000:]
        assert "nvidia-fabricmanager did not start" in proc.output
    finally:
        fleet.ssh("gpu-1", f"cp /root/fabricmanager.cfg {cfg}")
    proc = fleet.pyinfra("deploy.py", *quick, limit="gpu-1")
    assert proc.returncode == 0, proc.output[-3000:]
    assert fleet.ssh("gpu-1", "systemctl is-active nvidia-fabricmanager")[1] == "active\n"
    assert _instances_on_gpu(fleet, "gpu-1")


def test_a_driver_installed_but_not_loaded_is_rebooted_into(fleet):
    """What a run killed between the install and its reboot leaves: the packages in, no
    module loaded. The next run reboots into it."""
    fleet.ssh("gpu-1", "rm /run/fleetlab/nvidia-driver-loaded")  # as after an rmmod
    assert fleet.ssh("gpu-1", "nvidia-smi", check=False)[0] != 0
    booted = fleet.started_at("gpu-1")
    proc = fleet.pyinfra("deploy.py", limit="gpu-1")
    assert proc.returncode == 0, proc.output[-3000:]
    assert fleet.started_at("gpu-1") != booted
    assert fleet.ssh("gpu-1", "nvidia-smi --query-gpu=driver_version --format=csv,noheader")[
        1] == "590.44.01\n"
    assert _instances_on_gpu(fleet, "gpu-1")

"""Rolling updates through the front door under load: no failed request, canary first.

One lab (4 GPU hosts with 1 GPU, 1 front door), tests in file order: A -> B in batches
of 2, a reload under streams, a release whose image does not exist (stopped before any
drain), then broken releases called by their evidence long before the health timeout:
one that never becomes healthy (with and without --rollback), one whose container exits
at start, one that panics in a restart loop.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading

import httpx
import pytest

from lab.loadgen import LoadGenerator
from tests.conftest import running_lab
from tests.labfleet import REPO, lab_cli

pytestmark = pytest.mark.lab

NAME = "fleetlab-roll"
# A -> B is the upgrade users make: from the release of spring 2025 to the current default
A, B, BAD = "ollama/ollama:0.6.8", "ollama/ollama:0.32.15", "ollama/ollama:0.7.1-bad"
B_VERSION = B.rpartition(":")[2]
EXITS, CRASHES = "ollama/ollama:0.7.2-exits", "ollama/ollama:0.7.3-crashes"
GPU_HOSTS = ["gpu-1", "gpu-2", "gpu-3", "gpu-4"]
# Broken releases are called by Docker's own evidence, not by the health timeout (300 s):
# a short start period makes `unhealthy` come in about 35 s instead of 60 s.
FAST_HEALTH = ("--data", "ollama_health_start_period=5")


@pytest.fixture(scope="module")
def fleet():
    with running_lab(NAME, "--gpu-hosts", "4", "--gpus-per-host", "1", "--lb-hosts", "1",
                     "--registry-port", "5055", "--model-scale", "0.1") as lab:
        lab_cli("ollama-image", "0.7.1-bad", "--fault", "unhealthy", name=NAME)
        lab_cli("ollama-image", "0.7.2-exits", "--fault", "exits", name=NAME)
        lab_cli("ollama-image", "0.7.3-crashes", "--fault", "crashes", name=NAME)
        proc = lab.pyinfra("deploy.py", "--data", f"ollama_image={A}")
        assert proc.returncode == 0, proc.output[-4000:]
        yield lab


def front_door(fleet) -> str:
    return f"http://{fleet.host('lb-1')['address']}"


def roll(fleet, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ollama_fleet", fleet.inventory, "roll", "-y",
                           *args],
                          cwd=REPO, capture_output=True, text=True, timeout=1200,
                          stdin=subprocess.DEVNULL)


def versions(fleet) -> dict[str, str]:
    result = {}
    for host in fleet.hosts("gpu"):
        status, out, _ = fleet.ssh(host["name"], "curl -sS -m 5 http://127.0.0.1:11434/api/version",
                                   check=False)
        answer = json.loads(out) if status == 0 and out else {}
        result[host["name"]] = answer.get("version", answer.get("error", "down"))
    return result


def front_conf(fleet) -> str:
    return fleet.ssh("lb-1", "cat /opt/ollama-front/nginx/front.conf")[1]


def held_out(fleet) -> set[str]:
    """The hosts the front door holds out for an operator (drained) or a roll (held), as its
    rotation view says (read on the front door: it serves it to loopback and the GPU hosts)."""
    _, out, _ = fleet.ssh("lb-1", "curl -sS --max-time 5 http://127.0.0.1:11391/fleet/rotation")
    return {name for name, host in json.loads(out)["hosts"].items()
            if host.get("state") in ("drained", "held")}


def test_front_door_sends_to_every_gpu_host(fleet):
    conf = front_conf(fleet)
    for host in fleet.hosts("gpu"):
        assert f"server {host['address']}:80 " in conf
    assert held_out(fleet) == set()
    answer = httpx.post(f"{front_door(fleet)}/api/generate", timeout=60,
                        json={"model": "tinyllama", "prompt": "hi", "stream": False}).json()
    assert answer["done"] is True


MANIFESTS = ("find \"$(docker volume inspect -f '{{.Mountpoint}}' ollama-models)/manifests\" "
             "-type f -printf '%P %T@\\n' | sort")


def stores(fleet) -> dict[str, tuple[dict[str, str], str]]:
    """Each GPU host's models as its Ollama lists them (name -> digest), and its store's
    manifest files with their times (a model pulled again writes its manifest again)."""
    out = {}
    for host in GPU_HOSTS:
        tags = json.loads(fleet.ssh(host, "curl -sS -m 10 http://127.0.0.1:11434/api/tags")[1])
        out[host] = ({m["name"]: m["digest"] for m in tags["models"]},
                     fleet.ssh(host, MANIFESTS)[1])
    return out


def test_roll_a_to_b_in_batches_of_2_drops_no_request(fleet):
    assert set(versions(fleet).values()) == {"0.6.8"}
    before = stores(fleet)
    assert all("tinyllama:latest" in models for models, _ in before.values()), before
    with LoadGenerator(front_door(fleet), "tinyllama", threads=4, num_predict=40) as load:
        proc = roll(fleet, "--data", f"ollama_image={B}", "--batch-size", "2",
                    "--data", 'ollama_warm_models=["tinyllama"]')
    stats = load.stats
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert stats.sent >= 20, stats.summary()
    assert (stats.failed, stats.streams_cut) == (0, 0), stats.errors
    assert set(versions(fleet).values()) == {B_VERSION}
    # the new release reads the store the old one wrote: the same models, nothing pulled
    assert stores(fleet) == before
    # the warm model loaded again before the front door took each host back, for good
    loads = smoke_loads(proc)
    assert set(loads) == set(GPU_HOSTS) and all(s < LOAD_S for s in loads.values()), loads
    for name in GPU_HOSTS:
        out = fleet.ssh(name, "curl -sS -m 5 http://127.0.0.1:11434/api/ps")[1]
        kept = {m["name"]: m["expires_at"] for m in json.loads(out)["models"]}
        assert kept.get("tinyllama:latest", "")[:4] >= "2200", (name, kept)
    # the canary alone, then 2, then the 1 left, in inventory order
    order = [line.split(": ")[-1] for line in proc.stderr.splitlines()
             if line.startswith("--> roll: canary") or line.startswith("--> roll: batch")]
    assert order == ["gpu-1", "gpu-2, gpu-3", "gpu-4"]
    # each batch's image is downloaded before it is drained from the front door
    steps = [line.split(": ")[1] for line in proc.stderr.splitlines()
             if line.startswith("--> roll: ") and "pyinfra" in line]
    assert steps == ["pull", "drain", "apply", "undrain"] * 3, steps


FINGERPRINT = ("docker ps -aq | sort | xargs -r docker inspect -f "
               "'{{.Name}} {{.Config.Image}} {{.State.Status}} {{.State.StartedAt}}'; "
               "find /opt /etc/docker /etc/nginx -type f -print0 2>/dev/null | sort -z | "
               "xargs -0r md5sum")


def fingerprints(fleet) -> dict[str, str]:
    """Every host's containers (started when, from what) and configuration files."""
    return {h["name"]: fleet.ssh(h["name"], FINGERPRINT)[1] for h in fleet.hosts()}


def test_a_dry_roll_and_a_declined_roll_change_nothing_on_any_host(fleet):
    before = fingerprints(fleet)
    proc = roll(fleet, "--dry", "--data", f"ollama_image={A}", "--batch-size", "100%")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "  canary: gpu-1 (ollama/ollama:0.6.8)" in proc.stderr
    assert ("  batch 2/2: gpu-2 (ollama/ollama:0.6.8), gpu-3 (ollama/ollama:0.6.8), "
            "gpu-4 (ollama/ollama:0.6.8)") in proc.stderr
    # pyinfra's own plan: the operations that would change, and on which hosts
    assert "--> Detected changes:" in proc.stderr, proc.stderr[-3000:]
    assert "4 (gpu-1, gpu-2, gpu-3, gpu-4)" in proc.stderr, proc.stderr[-3000:]
    declined = subprocess.run([sys.executable, "-m", "ollama_fleet", fleet.inventory, "roll",
                               "--data", f"ollama_image={A}"], input="no\n", cwd=REPO,
                              capture_output=True, text=True, timeout=300)
    assert declined.returncode == 1, declined.stderr
    assert "Roll 4 serving hosts? not asked: no terminal to ask on" in declined.stderr
    assert fingerprints(fleet) == before
    assert set(versions(fleet).values()) == {B_VERSION}


def test_roll_output_is_streamed_and_limit_takes_a_glob(fleet):
    cmd = [sys.executable, "-m", "ollama_fleet", fleet.inventory, "roll", "-y",
           "--limit", "gpu-[23]", "--data", f"ollama_image={B}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    lines: list[tuple[str, bool]] = []  # (line, the roll still running when it arrived)
    watchdog = threading.Timer(900, proc.kill)  # bounded, whatever the roll does
    watchdog.start()
    try:
        for line in proc.stderr:
            lines.append((line.rstrip("\n"), proc.poll() is None))
        assert proc.wait(timeout=900) == 0, "\n".join(text for text, _ in lines)[-4000:]
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
    # the child pyinfra's own lines, indented under the roll's: `    <pyinfra's line>`
    pyinfra_lines = [running for text, running in lines
                     if text.startswith("    ") and text.lstrip().startswith("[gpu-2] ")]
    assert pyinfra_lines and all(pyinfra_lines), "pyinfra's output came only at the end"
    order = [text.split(": ")[-1] for text, _ in lines
             if text.startswith(("--> roll: canary", "--> roll: batch"))]
    assert order == ["gpu-2", "gpu-3"]


def test_front_door_reload_does_not_cut_streams(fleet):
    results: list[tuple[int, bool]] = []

    def stream() -> None:
        body = {"model": "tinyllama", "prompt": "lab:tokens=150 a long answer"}
        with httpx.stream("POST", f"{front_door(fleet)}/api/generate", json=body,
                          timeout=120) as response:
            lines = [json.loads(line) for line in response.iter_lines() if line]
        results.append((len(lines), bool(lines) and lines[-1].get("done") is True))

    threads = [threading.Thread(target=stream) for _ in range(4)]
    for t in threads:
        t.start()
    # a config change the front door must reload for, while the streams run
    proc = fleet.pyinfra("deploy.py", "--data", f"ollama_image={B}", "--data",
                         "front_door_max_fails=3", limit="lb_servers")
    for t in threads:
        t.join(timeout=150)
    assert proc.returncode == 0, proc.output[-3000:]
    assert "max_fails=3" in front_conf(fleet)
    assert "Front door running (reloaded, old requests let finish)" in proc.output
    assert len(results) == 4 and all(done and n > 100 for n, done in results), results


def last_line(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.strip().splitlines()[-1]


def test_a_release_that_does_not_exist_stops_the_roll_before_any_drain(fleet):
    before = fingerprints(fleet)
    with LoadGenerator(front_door(fleet), "tinyllama", threads=2, num_predict=20) as load:
        proc = roll(fleet, "--data", "ollama_image=ollama/ollama:0.9.9")
    assert proc.returncode == 1
    last = last_line(proc)
    # Docker's own answer (the lab's mirror lacks the tag, and Docker Hub is out of reach)
    assert last.startswith("roll stopped: gpu-1 failed at step 'pull': ollama/ollama:0.9.9: "
                           "pull failed: Error response from daemon: "), last
    assert "Nothing of this batch was drained or changed; untouched: gpu-1, gpu-2, gpu-3, " \
        "gpu-4; done: none." in last
    assert "--> roll: drain" not in proc.stderr
    assert (load.stats.failed, load.stats.streams_cut) == (0, 0), load.stats.errors
    assert fingerprints(fleet) == before  # no file, no container changed on any host


def test_unhealthy_b_with_rollback_stops_at_canary_and_restores_it(fleet):
    with LoadGenerator(front_door(fleet), "tinyllama", threads=4, num_predict=40) as load:
        proc = roll(fleet, "--data", f"ollama_image={BAD}", *FAST_HEALTH, "--rollback")
    assert proc.returncode == 1
    last = last_line(proc)
    # called by Docker's healthcheck with the last probe's output, not by the timeout
    assert last.startswith("roll stopped: gpu-1 failed at step 'apply': ollama-0: unhealthy: "
                           '"Error: '), last
    assert "untouched: gpu-2, gpu-3, gpu-4" in last
    assert (load.stats.failed, load.stats.streams_cut) == (0, 0), load.stats.errors
    assert f"--> roll: gpu-1 is back on {B} and in the front door" in proc.stderr
    assert versions(fleet) == dict.fromkeys(GPU_HOSTS, B_VERSION)
    assert held_out(fleet) == set()


def stopped_at_canary(fleet, release: str, evidence: str) -> str:
    """Roll RELEASE under load: it must stop at the canary with EVIDENCE, keep the canary
    out of the front door, drop nothing and leave the others untouched; returns the
    roll-back command the last line prints."""
    with LoadGenerator(front_door(fleet), "tinyllama", threads=4, num_predict=40) as load:
        proc = roll(fleet, "--data", f"ollama_image={release}", *FAST_HEALTH)
    assert proc.returncode == 1
    last = last_line(proc)
    assert re.match(rf"roll stopped: gpu-1 failed at step 'apply': {evidence}", last), last
    assert f"--limit gpu-1 --data ollama_image={B}" in last
    assert (load.stats.failed, load.stats.streams_cut) == (0, 0), load.stats.errors
    got = versions(fleet)
    assert got["gpu-2"] == got["gpu-3"] == got["gpu-4"] == B_VERSION and got["gpu-1"] != B_VERSION
    assert held_out(fleet) == {"gpu-1"}
    return last.split("Roll back: ", 1)[1]


def roll_back(fleet, command: str) -> None:
    """Run the roll-back command a stopped roll printed, as the operator would."""
    words = command.split()
    assert words[:2] == ["ollama-fleet", fleet.inventory], command
    proc = roll(fleet, *[w for w in words[2:] if w not in ("roll", "-y")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert versions(fleet) == dict.fromkeys(GPU_HOSTS, B_VERSION)
    assert held_out(fleet) == set()


def test_unhealthy_b_stops_at_canary_and_keeps_it_out(fleet):
    command = stopped_at_canary(fleet, BAD, 'ollama-0: unhealthy: "Error: ')
    roll_back(fleet, command)


def test_a_release_that_exits_at_start_is_called_by_its_exit(fleet):
    command = stopped_at_canary(fleet, EXITS, r"ollama-0: restarting in a loop \(\d+ restarts"
                                r"(, last exit code 1)?\): Error: lab: this build exits at start")
    roll_back(fleet, command)


def test_a_release_that_panics_in_a_loop_is_called_with_the_panic(fleet):
    command = stopped_at_canary(fleet, CRASHES, r"ollama-0: restarting in a loop \(\d+ restarts"
                                r"(, last exit code 2)?\): panic: lab: this build crashes")
    roll_back(fleet, command)


def test_an_apply_past_the_step_timeout_stops_the_roll_with_the_canary_out(fleet):
    # a release that is neither healthy nor called (its start period outlasts the step)
    with LoadGenerator(front_door(fleet), "tinyllama", threads=4, num_predict=40) as load:
        proc = roll(fleet, "--data", f"ollama_image={BAD}", "--step-timeout", "40",
                    "--data", "ollama_health_start_period=600")
    assert proc.returncode == 1
    last = last_line(proc)
    assert last.startswith("roll stopped: gpu-1 failed at step 'apply': pyinfra did not finish "
                           "within 40s (killed"), last
    assert "gpu-1 stays out of the front door; untouched: gpu-2, gpu-3, gpu-4" in last, last
    assert (load.stats.failed, load.stats.streams_cut) == (0, 0), load.stats.errors
    assert held_out(fleet) == {"gpu-1"}
    roll_back(fleet, last.split("Roll back: ", 1)[1])


def fleetctl(fleet, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ollama_fleet", fleet.inventory, *args, "-y"],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)


def test_a_plain_deploy_keeps_what_ollama_fleet_holds_out(fleet):
    proc = fleetctl(fleet, "drain", "gpu-2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert held_out(fleet) == {"gpu-2"}
    # a deploy that knows nothing of the drain (another operator's, during a roll)
    proc = fleet.pyinfra("deploy.py", "--data", f"ollama_image={B}", limit="lb_servers")
    assert proc.returncode == 0, proc.output[-3000:]
    assert held_out(fleet) == {"gpu-2"}
    held = fleet.ssh("lb-1", "cat /opt/ollama-front/held-out")[1].splitlines()
    assert [line.split()[:2] for line in held] == [["gpu-2", "drain"]]  # host, cause, since
    proc = fleetctl(fleet, "undrain", "gpu-2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert held_out(fleet) == set()


def test_front_door_follows_the_inventory(fleet, tmp_path):
    """A host removed from gpu_servers leaves the upstream on the next run (and comes back)."""
    import runpy
    from pathlib import Path

    groups = runpy.run_path(fleet.inventory)
    smaller = [(n, d) for n, d in groups["gpu_servers"] if n != "gpu-3"]
    inventory = Path(fleet.inventory).with_name(f"lab-smaller-{tmp_path.name}.py")
    inventory.write_text(f"gpu_servers = {smaller!r}\nlb_servers = {groups['lb_servers']!r}\n")
    gpu3 = fleet.host("gpu-3")["address"]
    try:
        proc = fleet.pyinfra("deploy.py", "--data", f"ollama_image={B}", limit="lb_servers",
                             inventory=str(inventory))
    finally:
        inventory.unlink()
    assert proc.returncode == 0, proc.output[-3000:]
    assert f"server {gpu3}:80" not in front_conf(fleet)
    proc = fleet.pyinfra("deploy.py", "--data", f"ollama_image={B}", limit="lb_servers")
    assert proc.returncode == 0, proc.output[-3000:]
    assert f"server {gpu3}:80" in front_conf(fleet)


LOAD_S = 0.3  # the stand-in's model load (OLLAMA_LAB_LOAD_SECONDS): reported in load_duration


def smoke_loads(proc: subprocess.CompletedProcess) -> dict[str, float]:
    """Per host, the load_duration of the roll's smoke request (the first after its apply)."""
    return {m[1]: float(m[2]) for m in re.finditer(
        r"^--> roll: (\S+): healthy, answers, version \S+, tinyllama loaded in ([0-9.]+) s$",
        proc.stderr, re.M)}


def test_a_roll_without_warm_models_still_leaves_the_model_loaded(fleet):
    # without warm models, the GPU inference proof still leaves each recreated instance
    # with its first model loaded (for a while) before the host serves again; with them,
    # the first roll (A -> B) showed every host loaded before the front door took it back
    proc = roll(fleet, "--limit", "gpu-1", "--data", f"ollama_image={A}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert smoke_loads(proc)["gpu-1"] < LOAD_S, proc.stderr[-2000:]

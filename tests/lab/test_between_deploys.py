"""What a deploy proves about a GPU host still holds after the things that happen between
deploys, with no deploy run after them: a reboot of an NVSwitch board whose Fabric Manager
takes 20 s to bring the fabric up, and a `systemctl daemon-reload` on a serving host, with
the default toolkit and with an older one pinned.

One converged HGX H100 host with 2 GPUs (one instance per GPU) behind a front door.
Ollama looks for its GPUs once, when it starts (`server/routes.go` `Serve` ->
`discover.GetGPUInfo`): an instance whose log since its last start says it found its
CUDA GPUs, and whose model `/api/ps` shows wholly in GPU memory, answered nothing from the
CPU since then."""

from __future__ import annotations

import json

import pytest

from lab.loadgen import LoadGenerator
from tests.conftest import running_lab
from tests.labfleet import lab_cli, poll

pytestmark = pytest.mark.lab

NAME = "fleetlab-between"
MODEL = "tinyllama"
INSTANCES = {"ollama-0": 11434, "ollama-1": 11435}
FABRIC_SECONDS = 20
DEPLOY = ("deploy.py", "--data", f'ollama_models=["{MODEL}"]')


@pytest.fixture(scope="module")
def fleet():
    with running_lab(NAME, "--gpu-hosts", "1", "--gpus-per-host", "2", "--lb-hosts", "1",
                     "--registry-port", "5064", "--model-scale", "0.1") as lab:
        proc = lab.pyinfra(*DEPLOY)
        assert proc.returncode == 0, proc.output[-4000:]
        yield lab


def on_gpu(fleet, instance: str) -> dict:
    """Load MODEL in INSTANCE (on the host, as the deploy's proof does) and return its
    /api/ps entry."""
    port = INSTANCES[instance]
    fleet.ssh("gpu-1", f"curl -sS --max-time 60 -d '{{\"model\":\"{MODEL}\",\"prompt\":\"hi\","
                       f"\"stream\":false}}' http://127.0.0.1:{port}/api/generate >/dev/null",
              check=False)
    _, out, _ = fleet.ssh("gpu-1", f"curl -sS --max-time 10 http://127.0.0.1:{port}/api/ps")
    models = json.loads(out)["models"]
    assert models, f"{instance}: nothing loaded"
    return models[0]


def health(fleet, instance: str) -> str:
    _, out, _ = fleet.ssh("gpu-1", "docker inspect --format "
                                   f"'{{{{.State.Health.Status}}}}' {instance}", check=False)
    return out.strip()


def discovery_since_start(fleet, instance: str) -> str:
    """What INSTANCE's Ollama logged about its GPUs since the container last started."""
    _, started, _ = fleet.ssh("gpu-1", f"docker inspect --format '{{{{.State.StartedAt}}}}' "
                                       f"{instance}")
    _, log, _ = fleet.ssh("gpu-1", f"docker logs --since {started.strip()} {instance} 2>&1 | "
                                   "grep -E 'inference compute|no compatible GPUs' || true")
    return log


def assert_serving_on_gpus(fleet) -> None:
    for instance in INSTANCES:
        poll(lambda i=instance: health(fleet, i) == "healthy", 180, interval=2,
             what=f"{instance} healthy")
        found = discovery_since_start(fleet, instance)
        # 0.6.8 logs `library=cuda`, 0.32 `library=CUDA`; the CPU alone is `library=cpu`
        assert "library=cuda" in found.lower() and "library=cpu" not in found.lower() \
            and "no compatible GPUs" not in found, (instance, found)
        model = on_gpu(fleet, instance)
        assert model["size_vram"] == model["size"] > 0, (instance, model)


def test_a_reboot_waits_for_the_fabric_and_serves_from_the_gpus(fleet):
    lab_cli("fabric-delay", "gpu-1", str(FABRIC_SECONDS), name=NAME)
    front = f"http://{fleet.host('lb-1')['address']}"
    # a client through the front door all along: a request every half second, bounded
    with LoadGenerator(front, MODEL, threads=1, max_requests=600, max_seconds=300,
                       request_timeout=30, pause=0.5) as load:
        fleet.reboot("gpu-1")
        # the fabric takes its seconds: Docker waits for it, and the instances after Docker
        poll(lambda: all(health(fleet, i) == "healthy" for i in INSTANCES), 240, interval=2,
             what="instances healthy after the reboot")
        served_before = load.stats.sent - load.stats.failed
        poll(lambda: load.stats.sent - load.stats.failed > served_before, 60,
             what=f"the front door answering again ({load.stats.summary()}, "
                  f"{load.stats.errors[-3:]})")
    _, journal, _ = fleet.ssh("gpu-1", "journalctl -b -u ollama-fleet-gpu-ready --no-pager")
    assert "waiting: GPU fabric not ready yet" in journal, journal
    assert "2 GPUs ready after" in journal, journal
    assert_serving_on_gpus(fleet)


def started_at(fleet, instance: str) -> str:
    return fleet.ssh("gpu-1", f"docker inspect --format '{{{{.State.StartedAt}}}}' "
                              f"{instance}")[1].strip()


# Under the toolkit's legacy injection (the prestart hook), a reload cuts running containers
# off their GPUs (NVIDIA/nvidia-container-toolkit#48); the default runtime of 1.18.1 and
# later injects them so that it does not (#1744). lab/UPSTREAM.md has the rows.
@pytest.mark.parametrize(("toolkit", "cut"), [("default", False), ("1.17.8", True)])
def test_a_daemon_reload_leaves_the_instances_on_their_gpus(fleet, toolkit, cut):
    if toolkit != "default":  # an older toolkit pinned by a deploy, before the event
        proc = fleet.pyinfra(*DEPLOY, "--data", f"nvidia_toolkit_version={toolkit}")
        assert proc.returncode == 0, proc.output[-4000:]
        _, version, _ = fleet.ssh("gpu-1", "dpkg-query -W -f '${Version}' "
                                           "nvidia-container-toolkit")
        assert version == f"{toolkit}-1"
        # containers keep the injection they were started with: start them under this one
        fleet.ssh("gpu-1", f"docker restart {' '.join(INSTANCES)} >/dev/null")
    assert_serving_on_gpus(fleet)
    before = {i: started_at(fleet, i) for i in INSTANCES}
    fleet.ssh("gpu-1", "systemctl daemon-reload")
    # systemd rewrites the containers' device rules during the reload itself
    lost = {i for i in INSTANCES
            if fleet.ssh("gpu-1", f"docker exec {i} nvidia-smi -L", check=False)[0] != 0}
    assert lost == (set(INSTANCES) if cut else set())
    for instance in lost:  # the health agent sees it within seconds and recreates it
        poll(lambda i=instance: started_at(fleet, i) not in ("", before[i]), 60, interval=2,
             what=f"{instance} recreated by the health agent")
    assert_serving_on_gpus(fleet)  # back on their GPUs with no operator and no deploy
    _, text, _ = fleet.ssh("gpu-1", "cat /var/lib/ollama-fleet/health/events.jsonl",
                           check=False)
    events = [json.loads(line) for line in text.splitlines()]
    for instance in lost:
        mine = [(e["kind"], e["action"], e["result"]) for e in events
                if e["instance"] == instance]
        assert ("nvml-lost", "evicted", "out of rotation") in mine, events
        assert ("nvml-lost", "recreate", "done") in mine, events
        assert any("Failed to initialize NVML" in e["reason"] for e in events
                   if e["instance"] == instance), events

"""`ollama-fleet INV status` against a deployed lab fleet: what it prints is what the hosts
say; a host cut off the network is marked unreachable and the others are still shown.

Runs after test_deploy.py on the same lab (2 GPU hosts x 2 GPUs, 1 CPU host); alone, it
deploys first.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.labfleet import REPO, lab_cli, poll

pytestmark = pytest.mark.lab

STATUS_TIMEOUT_S = 20  # the command's default per-host bound


def instance_count(host: dict) -> int:
    return max(1, len(host["gpus"]))  # per_gpu with GPUs, one CPU instance without


def every_instance_healthy(fleet) -> bool:
    for host in fleet.hosts():
        names = " ".join(f"ollama-{n}" for n in range(instance_count(host)))
        _, out, _ = fleet.ssh(host["name"], "docker inspect -f '{{.State.Health.Status}}' "
                                            f"{names} 2>/dev/null", check=False)
        if out.split() != ["healthy"] * instance_count(host):
            return False
    return True


@pytest.fixture(scope="module")
def fleet(deploy_lab):
    if not every_instance_healthy(deploy_lab):
        proc = deploy_lab.pyinfra("deploy.py")
        assert proc.returncode == 0, proc.output[-5000:]
    poll(lambda: every_instance_healthy(deploy_lab), timeout=300, interval=2,
         what="every Ollama instance healthy")
    return deploy_lab


def status(fleet, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ollama_fleet", fleet.inventory, "status", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL)


def on_host(fleet, host: str, command: str) -> str:
    return fleet.ssh(host, command)[1].strip()


def nvidia_smi(fleet, host: str) -> list[list[str]]:
    out = on_host(fleet, host, "nvidia-smi --query-gpu=index,memory.used,utilization.gpu,"
                               "driver_version --format=csv,noheader,nounits")
    return [[part.strip() for part in line.split(",")] for line in out.splitlines()]


def test_json_matches_what_each_host_says(fleet):
    proc = status(fleet, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    document = json.loads(proc.stdout)
    assert [h["host"] for h in document] == [h["name"] for h in fleet.hosts()]
    for view in document:
        name, lab_host = view["host"], fleet.host(view["host"])
        assert view["reachable"] is True and view["error"] is None
        assert view["os"] == on_host(fleet, name, ". /etc/os-release && echo $PRETTY_NAME")
        assert view["docker_version"] == on_host(fleet, name,
                                                 "docker version --format '{{.Server.Version}}'")
        # the simulated hardware, as the lab made it
        assert [(g["index"], g["uuid"], g["name"], g["memory_total_mib"]) for g in view["gpus"]
                ] == [(g["index"], g["uuid"], g["name"], g["memory_total_mib"])
                      for g in lab_host["gpus"]]
        if lab_host["gpus"]:
            smi = nvidia_smi(fleet, name)
            assert [[str(g["index"]), str(g["memory_used_mib"]), str(g["utilization_pct"])]
                    for g in view["gpus"]] == [row[:3] for row in smi]
            assert view["driver_version"] == smi[0][3]
        else:
            assert (view["driver_version"], view["gpu_error"]) == (None, None)
        assert len(view["instances"]) == instance_count(lab_host)
        for n, instance in enumerate(view["instances"]):
            port = 11434 + n
            assert (instance["name"], instance["port"]) == (f"ollama-{n}", port)
            assert instance["healthy"] and instance["health"] == "healthy"
            version = json.loads(on_host(fleet, name, f"curl -sS 127.0.0.1:{port}/api/version"))
            assert instance["version"] == version["version"]
            tags = json.loads(on_host(fleet, name, f"curl -sS 127.0.0.1:{port}/api/tags"))
            assert instance["models"] == [m["name"] for m in tags["models"]]
            given = [lab_host["gpus"][n]["uuid"]] if lab_host["gpus"] else []
            assert [g["uuid"] for g in instance["gpus"]] == given
        assert view["nginx"]["ok"] is True and view["nginx"]["status"] == 200


def test_table_shows_every_host_gpu_and_instance(fleet):
    proc = status(fleet)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for host in fleet.hosts():
        at = next(i for i, line in enumerate(lines) if line.split()[0] == host["name"])
        below = []
        for line in lines[at + 1:]:
            if not line.startswith(" "):
                break
            below.append(line.split())
        if host["gpus"]:
            gpu_rows = [row for row in below if row[0] == "GPU"]
            assert [(row[1], row[-1]) for row in gpu_rows] == [
                (str(g["index"]), g["uuid"]) for g in host["gpus"]]
            for row, gpu in zip(gpu_rows, host["gpus"], strict=True):
                assert " ".join(row[2:]).startswith(
                    f"{gpu['name']} ") and f"/ {gpu['memory_total_mib']} MiB" in " ".join(row)
        else:
            assert ["no", "GPU"] in below
        instances = [row for row in below if row[0].startswith("ollama-")]
        assert [row[0] for row in instances] == [f"ollama-{n}"
                                                 for n in range(instance_count(host))]
        assert all(row[3] == "healthy" for row in instances), instances
    assert lines[-1].startswith(f"{len(fleet.hosts())} hosts: {len(fleet.hosts())} answered, "
                                "0 unreachable;")


def test_limit_shows_only_the_named_host(fleet):
    proc = status(fleet, "--json", "--limit", "cpu-1")
    assert proc.returncode == 0, proc.stderr
    assert [h["host"] for h in json.loads(proc.stdout)] == ["cpu-1"]


def test_a_cut_host_is_unreachable_and_the_others_still_show(fleet):
    lab_cli("cut", "gpu-2", name=fleet.name)
    try:
        fleet.forget("gpu-2")
        started = time.monotonic()
        proc = status(fleet)
        elapsed = time.monotonic() - started
        document = json.loads(status(fleet, "--json").stdout)
    finally:
        lab_cli("restore", "gpu-2", name=fleet.name)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert elapsed < STATUS_TIMEOUT_S + 20, f"took {elapsed:.0f}s"
    lines = proc.stdout.splitlines()
    cut = [line for line in lines if line.startswith("gpu-2 ")]
    assert len(cut) == 1 and cut[0].split()[1] == "unreachable:", cut
    for host in ("gpu-1", "cpu-1"):
        assert any(line.split()[0] == host and "unreachable" not in line for line in lines)
    assert sum(line.lstrip().startswith("GPU ") for line in lines) == 2  # gpu-1's two
    by_host = {h["host"]: h for h in document}
    assert set(by_host["gpu-2"]) == {"host", "reachable", "error"}
    assert by_host["gpu-2"]["reachable"] is False and by_host["gpu-2"]["error"]
    assert by_host["gpu-1"]["reachable"] and len(by_host["gpu-1"]["gpus"]) == 2
    assert by_host["cpu-1"]["reachable"]
    # back on the network, it is reported again
    poll(lambda: status(fleet, "--limit", "gpu-2").returncode == 0, timeout=120, interval=1,
         what="gpu-2 reported again after restore")

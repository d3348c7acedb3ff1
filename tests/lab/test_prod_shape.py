"""inventory/prod.py as written, on a lab fleet of its shape: a per-GPU host, a host with
one instance holding both its GPUs, a CPU host and a front door. Each prod host's data
is kept; only what points at the lab changes (addresses, the lab's mirrors, the GPU
count the lab host has, the network fan-out may copy over)."""

from __future__ import annotations

import json
import runpy

import httpx
import pytest

from lab.loadgen import LoadGenerator
from tests.conftest import running_lab
from tests.labfleet import REPO, poll

pytestmark = pytest.mark.lab

NAME = "fleetlab-prod"


@pytest.fixture(scope="module")
def fleet():
    with running_lab(NAME, "--gpu-hosts", "2", "--gpus-per-host", "2", "--cpu-hosts", "1",
                     "--lb-hosts", "1", "--registry-port", "5061",
                     "--model-scale", "0.1") as lab:
        prod = runpy.run_path(str(REPO / "inventory" / "prod.py"))
        labs = runpy.run_path(lab.inventory)
        network = _network(lab)
        groups = {}
        for group in ("gpu_servers", "lb_servers"):
            copied = []
            for (_, prod_data), (name, lab_data) in zip(prod[group], labs[group], strict=True):
                data = {**prod_data, **lab_data}  # the lab's connection, gpu_count, mirrors
                if group == "gpu_servers":
                    data["ollama_fanout_allow"] = [network]
                copied.append((name, data))
            groups[group] = copied
        path = REPO / "inventory" / f"lab-{NAME}-prod.py"
        path.write_text("".join(f"{group} = {hosts!r}\n" for group, hosts in groups.items()))
        lab.prod_inventory = str(path)
        try:
            proc = lab.pyinfra("deploy.py", inventory=lab.prod_inventory)
            assert proc.returncode == 0, proc.output[-4000:]
            yield lab
        finally:
            path.unlink(missing_ok=True)


def _network(lab) -> str:
    """The lab hosts' /16 (fan-out's allow list in group_data names the operator's LAN)."""
    first = lab.hosts()[0]["address"].split(".")
    return f"{first[0]}.{first[1]}.0.0/16"


def instances(fleet, host: str) -> list[dict]:
    _, out, _ = fleet.ssh(host, "docker ps --filter label=com.docker.compose.project=ollama "
                                "--format '{{.Names}}' | grep -v nginx | sort | xargs -r "
                                "docker inspect")
    return json.loads(out) if out.strip() else []


def test_each_host_runs_the_topology_prod_gives_it(fleet):
    per_gpu, shared, cpu = (instances(fleet, h) for h in ("gpu-1", "gpu-2", "cpu-1"))
    assert len(per_gpu) == 2 and len(shared) == 1 and len(cpu) == 1
    _, records, _ = fleet.ssh("gpu-2", "cat /var/lib/fleetlab/gpu-assignments.jsonl")
    mine = [json.loads(r) for r in records.splitlines()
            if json.loads(r)["container_id"] == shared[0]["Id"]]
    assert mine and sorted(mine[-1]["uuids"]) == sorted(g["uuid"] for g in
                                                        fleet.host("gpu-2")["gpus"])


def test_every_request_through_the_front_door_is_answered(fleet):
    front = f"http://{fleet.host('lb-1')['address']}"
    tags = httpx.get(f"{front}/api/tags", timeout=30).json()
    model = tags["models"][0]["name"]
    with LoadGenerator(front, model, threads=3, num_predict=8, max_requests=60,
                       max_seconds=120) as load:
        poll(lambda: load.stats.sent >= 60, timeout=130, what="60 requests sent")
    assert load.stats.sent >= 60, load.stats.summary()
    assert (load.stats.failed, load.stats.streams_cut) == (0, 0), load.stats.errors
    for host in ("gpu-1", "gpu-2", "cpu-1"):  # and each host has what the others serve
        address = fleet.host(host)["address"]
        _, out, _ = fleet.ssh("lb-1", f"curl -sS -m 10 http://{address}/api/tags")
        assert sorted(m["name"] for m in json.loads(out)["models"]) == \
            sorted(m["name"] for m in tags["models"])


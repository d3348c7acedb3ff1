"""`up` is idempotent and cleans up after interrupted runs; `down` leaves nothing behind."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from tests.labfleet import LabFleet, lab_cli

pytestmark = pytest.mark.lab

NAME = "fleetlab-life"
UP = ("up", "--gpu-hosts", "0", "--cpu-hosts", "1", "--registry-port", "5052",
      "--model-scale", "0.01")


def _docker_ls(kind: str) -> list[str]:
    args = ["docker", kind, "ls", "--filter", f"label=fleetlab.lab={NAME}", "--format",
            "{{.Name}}" if kind != "container" else "{{.Names}}"]
    if kind == "container":
        args = ["docker", "ps", "-a", *args[3:]]
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()


def _ids() -> dict:
    out = subprocess.run(["docker", "ps", "-a", "--filter", f"label=fleetlab.lab={NAME}",
                          "--format", "{{.Names}} {{.ID}}"], capture_output=True, text=True,
                         check=True).stdout
    return dict(line.split() for line in out.splitlines())


def test_up_twice_then_interrupted_then_down():
    try:
        lab_cli(*UP, name=NAME)
        fleet = LabFleet(NAME)
        info = fleet.refresh()
        inventory = info["inventory"]
        first_ids, first_inventory = _ids(), open(inventory).read()
        # the services (registries, apt, DNS), the stand-in of ollama.com, and the host
        assert set(first_ids) == {f"{NAME}-services", f"{NAME}-cloud", f"{NAME}-cpu-1"}

        # same arguments: nothing changes
        lab_cli(*UP, name=NAME)
        assert _ids() == first_ids
        assert open(inventory).read() == first_inventory

        # an interrupted run: the state is gone, a host is stopped; `up` starts clean
        state = json.loads(open(f".lab/{NAME}/state.json").read())
        assert state["hosts"][0]["name"] == "cpu-1"
        subprocess.run(["rm", f".lab/{NAME}/state.json"], check=True)
        subprocess.run(["docker", "stop", "-t", "1", f"{NAME}-cpu-1"], check=True,
                       capture_output=True)
        lab_cli(*UP, name=NAME)
        fleet.refresh()
        assert [h["state"] for h in fleet.hosts()] == ["running"]
        assert fleet.ssh("cpu-1", "true")[0] == 0
        fleet.close()
    finally:
        lab_cli("down", name=NAME, check=False)
    for kind in ("container", "network", "volume"):
        assert _docker_ls(kind) == [], f"{kind}s left behind"
    assert not LabFleet(NAME).refresh()["up"]


def test_port_in_use_is_one_line_and_touches_nothing():
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        proc = lab_cli("up", "--gpu-hosts", "0", "--cpu-hosts", "1", "--registry-port", str(port),
                       name="fleetlab-port", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"lab: error: up: --registry-port {port}: 127.0.0.1:{port} is already in use "
        "(Address already in use); pick another port")
    out = subprocess.run(["docker", "ps", "-a", "--filter", "label=fleetlab.lab=fleetlab-port",
                          "-q"], capture_output=True, text=True, check=True).stdout
    nets = subprocess.run(["docker", "network", "ls", "--filter",
                           "label=fleetlab.lab=fleetlab-port", "-q"], capture_output=True,
                          text=True, check=True).stdout
    assert out.strip() == "" and nets.strip() == ""

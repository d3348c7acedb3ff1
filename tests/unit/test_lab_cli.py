"""`python -m lab` rejects bad input with one line and a non-zero exit, before touching Docker."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lab import dns
from lab.fleet import Lab
from tests.labfleet import lab_cli


@pytest.mark.parametrize("args, code, message", [
    (["up", "--gpus", "3"], 2, "unrecognized arguments: --gpus 3"),
    (["up", "--gpu-hosts", "two"], 2, "'two' is not a whole number"),
    (["up", "--gpu-hosts", "-1"], 2, "-1 is negative"),
    (["up", "--gpu-hosts", "0"], 1, "zero hosts"),
    (["up", "--gpu-hosts", "1", "--gpus-per-host", "0"], 1, "--gpus-per-host 0"),
    (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
    (["cut"], 2, "the following arguments are required: host"),
    (["up", "--inventory-names", "--gpu-hosts", "0"], 1, "zero hosts"),
    (["run"], 2, "run: give a command after --"),
    (["run", "--"], 2, "run: give a command after --"),
    (["run", "--", "true"], 1, "no lab named fleetlab-badinput is up"),
    (["fault", "gpu-1", "xid99"], 2, "argument kind: invalid choice: 'xid99'"),
    (["fault", "gpu-1", "hang", "--gpu", "0", "--container", "ollama-0"], 2,
     "fault: give --gpu or --container, not both"),
    (["fault", "gpu-1", "xid79", "--container", "ollama-0"], 2,
     "fault xid79: --container is for nvml-lost, cpu, hang and crash"),
    (["fault", "gpu-1", "xid79"], 1, "no lab named fleetlab-badinput is up"),
    (["reboot", "gpu-1"], 1, "no lab named fleetlab-badinput is up"),
])
def test_bad_input_is_one_line(args, code, message):
    proc = lab_cli(*args, name="fleetlab-badinput", check=False, timeout=60)
    assert proc.returncode == code
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr


def test_no_docker_engine_is_one_line():
    proc = lab_cli("up", "--cpu-hosts", "1", name="fleetlab-noengine", check=False, timeout=60,
                   env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "lab: error: no Docker engine answers (start dockerd, or run `make machine`, which "
        "installs and starts one)"]


def test_a_lab_name_that_is_no_dns_label_is_one_line():
    proc = lab_cli("up", "--cpu-hosts", "1", name="Fleet_Lab", check=False, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "lab: error: --name 'Fleet_Lab': a lab name is also its DNS zone's label: lower-case "
        "letters, digits and '-', at most 63, not starting or ending with '-'"]


def _namespaces_allowed() -> bool:
    probe = ["unshare", "--mount", "--propagation", "private", "true"]
    try:
        return subprocess.run(probe, capture_output=True, check=False).returncode == 0
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not _namespaces_allowed(), reason="no private mount namespace here")
def test_run_sees_the_lab_resolv_conf_and_this_machine_keeps_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETLAB_STATE_DIR", str(tmp_path))
    lab = Lab("fleetlab-runns")
    dns.write_files(lab, "172.29.9.2", [])
    before = Path("/etc/resolv.conf").read_text()
    proc = lab_cli("run", "--", "cat", "/etc/resolv.conf", name=lab.name, timeout=60,
                   env={"FLEETLAB_STATE_DIR": str(tmp_path)})
    assert proc.stdout == dns.resolv_conf(lab.name, "172.29.9.2")
    assert Path("/etc/resolv.conf").read_text() == before
    # CMD's exit status is run's
    proc = lab_cli("run", "--", "sh", "-c", "exit 7", name=lab.name, check=False, timeout=60,
                   env={"FLEETLAB_STATE_DIR": str(tmp_path)})
    assert proc.returncode == 7


@pytest.mark.skipif(not _namespaces_allowed(), reason="no private mount namespace here")
def test_run_says_so_in_one_line_when_the_labs_names_do_not_resolve(tmp_path, monkeypatch):
    """A machine whose resolver does not read resolv.conf (nss-resolve, nscd), or a lab
    whose DNS does not answer: `run` stops before CMD rather than let it miss the names."""
    monkeypatch.setenv("FLEETLAB_STATE_DIR", str(tmp_path))
    lab = Lab("fleetlab-nodns")
    dns.write_files(lab, "127.0.0.1", [])  # no DNS server answers there
    lab.save({"name": lab.name, "services_ip": "127.0.0.1", "hosts": []})
    proc = lab_cli("run", "--", "touch", str(tmp_path / "ran"), name=lab.name, check=False,
                   timeout=90, env={"FLEETLAB_STATE_DIR": str(tmp_path)})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "services.fleetlab-nodns.test does not resolve to 127.0.0.1" in proc.stderr
    assert not (tmp_path / "ran").exists()

"""Between deploys: the GPU instances' start wait and healthcheck (templates/stack/
ollama-gpu.sh) and the boot wait (templates/gpu_ready/gpu-ready.sh), run here with
stand-in nvidia-smi, ollama, docker and systemctl; the units
tasks/steps/gpu_ready.py lays down. The lab tests run them on hosts through a reboot and a
`systemctl daemon-reload` (tests/lab/test_between_deploys.py)."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from ollama_fleet.tasks.kit import distributions
from ollama_fleet.tasks.kit.fleet import Fleet
from ollama_fleet.tasks.kit.scripts import script_command
from ollama_fleet.tasks.kit.settings import settings_for
from ollama_fleet.tasks.steps import gpu_ready, nvidia_driver
from ollama_fleet.tasks.steps.stack import GPU_SCRIPT, plan_instances, stack_files
from tests.unit.stubs import BASE_TOOLS, run_with_stubs

TOOLS = (*BASE_TOOLS, "awk", "date", "echo")
GPUS = [{"index": 0, "uuid": "GPU-0"}, {"index": 1, "uuid": "GPU-1"}]
LIST_2 = ("echo 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'; "
          "echo 'GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-1)'")
NVML_LOST = "echo 'Failed to initialize NVML: Unknown Error'; exit 255"
PS_HEADER = "NAME               ID              SIZE      PROCESSOR    UNTIL"


def smi(listing: str = LIST_2, fabric: str = "Completed") -> str:
    """An nvidia-smi stand-in: -L lists, -q shows each GPU's Fabric section."""
    query = ("printf '==============NVSMI LOG==============\\n\\nGPU 00000000:18:00.0\\n"
             "    Fabric\\n        State                             : %s\\n"
             "        Status                            : Success\\n"
             f"    Persistence Mode                      : Enabled\\n' {shlex.quote(fabric)}")
    return f'case "$1" in -L) {listing} ;; -q) {query} ;; esac\n'


def ollama(ps_rows: str = "", fails: bool = False) -> str:
    if fails:
        return "echo 'Error: could not connect to ollama app, is it running?' >&2; exit 1\n"
    return (f'case "$1" in ps) echo {shlex.quote(PS_HEADER)}; {ps_rows or ":"} ;;'
            ' list) echo NAME ;; serve) echo serving "$@" ;; esac\n')


def health(tmp_path: Path, **stubs: str):
    return run_with_stubs(script_command("stack/ollama-gpu.sh", "health", 2), tmp_path,
                          stubs, TOOLS)


def test_a_healthy_gpu_instance(tmp_path):
    proc = health(tmp_path, **{"nvidia-smi": smi(), "ollama": ollama(
        "echo 'tinyllama:latest  2644915ede35    1.1 GB    100% GPU     Forever'")})
    assert (proc.returncode, proc.stdout) == (0, "ok: 2 GPUs\n"), proc.stderr


def test_an_instance_that_lost_nvml_is_unhealthy_with_the_error(tmp_path):
    proc = health(tmp_path, **{"nvidia-smi": smi(NVML_LOST), "ollama": ollama()})
    assert proc.returncode == 1
    assert proc.stdout == "gpu: nvidia-smi exit 255: Failed to initialize NVML: Unknown Error\n"


def test_an_instance_with_a_gpu_missing_is_unhealthy(tmp_path):
    one = "echo 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'"
    proc = health(tmp_path, **{"nvidia-smi": smi(one), "ollama": ollama()})
    assert (proc.returncode, proc.stdout) == (
        1, "gpu: nvidia-smi lists 1 GPUs, the instance was given 2\n")


def test_a_model_on_the_cpu_is_not_a_gpu_fault(tmp_path):
    # a client may ask for the CPU (num_gpu: 0): no restart for that
    rows = "echo 'tinyllama:latest  2644915ede35    1.1 GB    100% CPU     4 minutes from now'"
    proc = health(tmp_path, **{"nvidia-smi": smi(), "ollama": ollama(rows)})
    assert (proc.returncode, proc.stdout) == (0, "ok: 2 GPUs\n")


def test_an_instance_whose_ollama_does_not_answer_is_unhealthy_without_gpu_prefix(tmp_path):
    proc = health(tmp_path, **{"nvidia-smi": smi(), "ollama": ollama(fails=True)})
    assert proc.returncode == 1
    assert proc.stdout.startswith("Error: could not connect"), proc.stdout


def test_the_start_waits_for_the_fabric_then_runs_ollama(tmp_path):
    flag = tmp_path / "fabric-done"  # the first -q says In Progress, later ones Completed
    stub = ('case "$1" in -L) ' + LIST_2 + ' ;; -q) if [ -f ' + str(flag) + ' ]; then '
            'printf "    Fabric\\n        State : Completed\\n"; else '
            'printf "    Fabric\\n        State : In Progress\\n"; touch ' + str(flag) +
            '; fi ;; esac\n')
    proc = run_with_stubs(script_command("stack/ollama-gpu.sh", "start", 2, 5, "serve"),
                          tmp_path, {"nvidia-smi": stub, "ollama": ollama()},
                          (*TOOLS, "touch"))
    assert proc.returncode == 0, proc.stderr
    assert "waiting for the GPUs: GPU fabric not up yet (Fabric State: In Progress; is " \
        "Fabric Manager running?)" in proc.stderr
    assert proc.stdout == "serving serve\n"


def test_the_start_gives_up_in_time_so_that_docker_restarts_the_instance(tmp_path):
    proc = run_with_stubs(script_command("stack/ollama-gpu.sh", "start", 2, 2, "serve"),
                          tmp_path, {"nvidia-smi": smi(NVML_LOST), "ollama": ollama()}, TOOLS)
    assert proc.returncode == 1
    assert proc.stdout == ""  # Ollama never started
    assert "GPUs not ready after 2 s: nvidia-smi exit 255" in proc.stderr


def test_a_fabric_that_completed_with_an_error_is_not_ready(tmp_path):
    stub = smi().replace("Success", "Failure")
    proc = run_with_stubs(script_command("stack/ollama-gpu.sh", "start", 2, 1, "serve"),
                          tmp_path, {"nvidia-smi": stub, "ollama": ollama()}, TOOLS)
    assert proc.returncode == 1
    assert "GPU fabric failed (Fabric Status: Failure)" in proc.stderr


def test_gpu_ready_waits_for_fabric_manager_and_the_fabric(tmp_path):
    systemctl = 'case "$*" in *--quiet*) exit 3 ;; *is-active*) echo inactive; exit 3 ;; esac\n'
    proc = run_with_stubs(script_command("gpu_ready/gpu-ready.sh", 2, 2,
                                         "nvidia-fabricmanager.service"),
                          tmp_path, {"nvidia-smi": smi(), "systemctl": systemctl}, TOOLS)
    assert proc.returncode == 0  # done waiting: Docker starts, the instances wait on
    assert "not ready after 2 s: nvidia-fabricmanager.service is inactive" in proc.stderr
    proc = run_with_stubs(script_command("gpu_ready/gpu-ready.sh", 2, 2,
                                         "nvidia-fabricmanager.service"),
                          tmp_path, {"nvidia-smi": smi(fabric="In Progress"),
                                     "systemctl": "exit 0\n"}, TOOLS)
    assert "GPU fabric not ready yet (Fabric State: In Progress" in proc.stderr
    proc = run_with_stubs(script_command("gpu_ready/gpu-ready.sh", 2, 2,
                                         "nvidia-fabricmanager.service"),
                          tmp_path, {"nvidia-smi": smi(), "systemctl": "exit 0\n"}, TOOLS)
    assert proc.returncode == 0, proc.stderr
    assert "2 GPUs ready after" in proc.stdout


def compose(data: dict | None = None) -> dict:
    settings = settings_for("gpu-1", {"gpu_count": 2, **(data or {})})
    files = stack_files(settings, plan_instances(settings, GPUS), Fleet())
    return {"compose": yaml.safe_load(files["compose.yaml"]), "files": files}


def test_gpu_instances_start_through_the_wait_and_check_their_gpus():
    out = compose()
    service = out["compose"]["services"]["ollama-0"]
    assert service["entrypoint"] == ["/bin/sh", GPU_SCRIPT, "start", "1", "120"]
    assert service["command"] == ["serve"]
    assert service["runtime"] == "nvidia"  # toolkit 1.18+: CDI injection, kept across reloads
    assert service["healthcheck"]["test"] == ["CMD", "/bin/sh", GPU_SCRIPT, "health", "1"]
    assert f"./ollama-gpu.sh:{GPU_SCRIPT}:ro" in service["volumes"]
    assert service["environment"]["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert out["files"]["ollama-gpu.sh"].startswith("#!/bin/sh")
    shared = compose({"ollama_topology": "shared"})["compose"]["services"]["ollama-0"]
    assert shared["healthcheck"]["test"][-1] == "2"


def test_a_cpu_instance_keeps_the_plain_healthcheck():
    settings = settings_for("cpu-1", {"gpu_count": 0})
    files = stack_files(settings, plan_instances(settings, []), Fleet())
    service = yaml.safe_load(files["compose.yaml"])["services"]["ollama-0"]
    assert "entrypoint" not in service and "runtime" not in service
    assert service["healthcheck"]["test"] == ["CMD", "ollama", "list"]
    assert "ollama-gpu.sh" not in files


def test_the_units_order_docker_after_the_gpu_stack_of_this_board():
    settings = settings_for("gpu-1", {"gpu_count": 2, "nvidia_driver_branch": 590})
    dist = distributions.by_name("debian 13")
    hgx = [{"class": 0x030200, "device": 0x2330}, {"class": 0x068000, "device": 0x22A3}]
    plan = nvidia_driver.driver_plan(dist, settings, "6.12.0-1-amd64", hgx)
    files = gpu_ready.unit_files(settings, plan)
    unit = files["/etc/systemd/system/ollama-fleet-gpu-ready.service"]
    assert "After=nvidia-persistenced.service nvidia-fabricmanager.service" in unit
    assert "Before=docker.service" in unit
    assert ("ExecStart=/usr/local/libexec/ollama-fleet/gpu-ready 2 300 "
            "nvidia-fabricmanager.service") in unit
    drop_in = files["/etc/systemd/system/docker.service.d/ollama-fleet-gpu-ready.conf"]
    assert "After=ollama-fleet-gpu-ready.service" in drop_in
    pcie = nvidia_driver.driver_plan(dist, settings, "6.12.0-1-amd64",
                                     [{"class": 0x030200, "device": 0x26B9}])
    unit = gpu_ready.unit_files(settings, pcie)[f"{gpu_ready.UNITS}/{gpu_ready.READY_UNIT}"]
    assert "ExecStart=/usr/local/libexec/ollama-fleet/gpu-ready 2 300\n" in unit
    assert "fabricmanager" not in unit

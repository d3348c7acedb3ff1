"""The fleet view: recorded host outputs in, host objects and table out; bad input exits 2."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ollama_fleet.fleetctl.inventory import UsageError
from ollama_fleet.fleetctl.status import (
    HostPlan,
    attach_rotation,
    decode_report,
    exit_status,
    failed_view,
    given_gpus,
    host_view,
    instance_view,
    parse_gpus,
    parse_os_release,
    placement,
    plan_hosts,
    pyinfra_config,
    render_events,
    render_table,
    status_script,
)
from ollama_fleet.tasks.kit.fleet import Member
from ollama_fleet.tasks.kit.settings import Settings

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
RECORDED = FIXTURES / "status"

NGINX = "http://127.0.0.1:80/health"
TWO_GPUS = (("ollama-0", 11434), ("ollama-1", 11435))
GPU_1 = HostPlan("gpu-1", ("gpu_servers",), {}, TWO_GPUS, nginx_url=NGINX)
GPU_2 = HostPlan("gpu-2", ("gpu_servers",), {}, TWO_GPUS, nginx_url=NGINX)
CPU_1 = HostPlan("cpu-1", ("gpu_servers",), {}, (("ollama-0", 11434),), nginx_url=NGINX)

REACHABLE_KEYS = {"host", "reachable", "error", "groups", "os", "reboot_required",
                  "driver_version", "gpu_error",
                  "gpus", "docker_version", "docker_error", "instances", "nginx", "health",
                  "events", "rotation_view", "rotation"}
INSTANCE_KEYS = {"name", "port", "state", "health", "healthy", "image", "gpus", "all_gpus",
                 "version", "models", "loaded", "placement", "api_error", "health_reason",
                 "agent"}


def recorded(name: str, plan: HostPlan) -> dict:
    return host_view(plan, decode_report((RECORDED / f"{name}.txt").read_text()))


def smi_fixture(path: Path) -> tuple[str, int | None]:
    """A fixture in tests/unit/fixtures/nvidia-smi's shape: output, then `rc=N` (no line:
    nvidia-smi is not installed)."""
    lines = path.read_text().splitlines()
    rc = next((int(line[3:]) for line in lines if line.startswith("rc=")), None)
    return "\n".join(line for line in lines if not line.startswith("rc=")), rc


def report(**entries: tuple[int, str]) -> dict:
    """A decoded report as status_script's would be: KEY=(exit status, output)."""
    return {"format": 1, **{k.replace("__", ":"): {"rc": rc, "out": out}
                            for k, (rc, out) in entries.items()}}


# -- recorded lab hosts ------------------------------------------------------------


def test_gpu_host_every_gpu_and_instance():
    view = recorded("gpu-host", GPU_1)
    assert set(view) == REACHABLE_KEYS
    assert (view["os"], view["driver_version"], view["docker_version"]) == (
        "Debian GNU/Linux 13 (trixie)", "570.172.08", "26.1.5+dfsg1")
    assert view["gpus"] == [
        {"index": 0, "uuid": "GPU-b0ab98e5-665d-5ac8-a1c3-ee72b1ab259a",
         "name": "NVIDIA H100 80GB HBM3", "memory_used_mib": 2731, "memory_total_mib": 81559,
         "utilization_pct": 37},
        {"index": 1, "uuid": "GPU-4a3ee2ef-9b6d-9c85-902f-a2b980567921",
         "name": "NVIDIA H100 80GB HBM3", "memory_used_mib": 1, "memory_total_mib": 81559,
         "utilization_pct": 0},
    ]
    first, second = view["instances"]
    assert set(first) == INSTANCE_KEYS
    assert first == {"name": "ollama-0", "port": 11434, "state": "running", "agent": None,
                     "health": "healthy", "healthy": True, "image": "ollama/ollama:0.6.8",
                     "gpus": [{"index": 0, "uuid": "GPU-b0ab98e5-665d-5ac8-a1c3-ee72b1ab259a"}],
                     "all_gpus": False, "version": "0.6.8", "models": ["tinyllama:latest"],
                     "loaded": ["tinyllama:latest"],
                     "placement": [{"name": "tinyllama:latest", "size": 2097595,
                                    "size_vram": 2097595, "on": "GPU"}], "api_error": None,
                     "health_reason": None}
    assert second["gpus"] == [{"index": 1, "uuid": "GPU-4a3ee2ef-9b6d-9c85-902f-a2b980567921"}]
    assert second["loaded"] == []
    assert view["nginx"] == {"url": NGINX, "ok": True, "status": 200, "error": None}
    assert exit_status([view]) == 0


@pytest.mark.parametrize("size_vram, on", [(2097595, "GPU"), (0, "CPU"), (None, "CPU"),
                                           (1258557, "60% GPU")])
def test_placement_says_where_a_loaded_model_lives(size_vram, on):
    model = {"name": "tinyllama:latest", "size": 2097595}
    if size_vram is not None:
        model["size_vram"] = size_vram
    assert placement(model) == {"name": "tinyllama:latest", "size": 2097595,
                                "size_vram": size_vram or 0, "on": on}


def test_cpu_host_says_no_gpu():
    view = recorded("cpu-host", CPU_1)
    assert (view["gpus"], view["driver_version"], view["gpu_error"]) == ([], None, None)
    (instance,) = view["instances"]
    assert (instance["gpus"], instance["healthy"], instance["version"]) == ([], True, "0.6.8")
    table = render_table([view])
    assert "\n       no GPU\n" in table
    assert "       ollama-0  :11434  cpu        healthy    0.6.8     models tinyllama:latest" \
        in table


def test_stopped_instance_and_nginx_are_reported_and_fail_the_exit_status():
    view = recorded("gpu-host-degraded", GPU_2)
    healthy, stopped = view["instances"]
    assert healthy["healthy"] and healthy["version"] == "0.6.8"
    assert (stopped["state"], stopped["healthy"], stopped["version"]) == ("exited", False, None)
    assert stopped["api_error"] == ("/api/version: Failed to connect to 127.0.0.1 port 11435 "
                                    "after 0 ms: Could not connect to server")
    assert view["nginx"]["ok"] is False and view["nginx"]["status"] is None
    assert "port 80" in view["nginx"]["error"]
    assert exit_status([view]) == 1
    # a stopped container keeps its last health status: the table shows the state instead
    assert "ollama-1  :11435  gpu:1      exited     -" in render_table([view])


def test_an_expected_instance_without_container_is_missing():
    three = HostPlan("gpu-1", ("gpu_servers",), {}, (*TWO_GPUS, ("ollama-2", 11436)),
                     nginx_url=NGINX)
    view = recorded("gpu-host", three)
    missing = view["instances"][2]
    assert (missing["state"], missing["healthy"], missing["gpus"]) == ("missing", False, [])
    assert exit_status([view]) == 1


# -- nvidia-smi, os-release, Docker's device requests ---------------------------------


def test_gpus_reuse_nvidia_smi_fixture_shapes():
    gpus, driver, error = parse_gpus(*smi_fixture(RECORDED / "nvidia-smi-A100-mig.txt"))
    assert (driver, error) == ("570.172.08", None)
    assert [(g["index"], g["memory_used_mib"], g["utilization_pct"]) for g in gpus] == [
        (0, 61443, 88), (1, 37, None)]
    assert parse_gpus(*smi_fixture(FIXTURES / "nvidia-smi" / "not-installed.txt")) == (
        [], None, None)


@pytest.mark.parametrize("fixture, words", [
    ("query-driver-not-loaded.txt", "nvidia-smi exited 9: NVIDIA-SMI has failed because it "
                                    "couldn't communicate with the NVIDIA driver."),
    ("query-version-mismatch.txt", "nvidia-smi exited 18: Failed to initialize NVML: "
                                   "Driver/library version mismatch"),
])
def test_failing_nvidia_smi_is_an_error_not_a_crash(fixture, words):
    text, rc = smi_fixture(FIXTURES / "nvidia-smi" / fixture)
    gpus, driver, error = parse_gpus(text, rc)
    assert (gpus, driver) == ([], None)
    assert error.startswith(words)
    view = host_view(GPU_1, report(os=(0, ""), nvidia_smi=(rc, text)))
    assert f"GPU  {error}" in render_table([view])


@pytest.mark.parametrize("name, pretty", [
    ("debian-12", "Debian GNU/Linux 12 (bookworm)"), ("debian-13", "Debian GNU/Linux 13 (trixie)"),
    ("ubuntu-22.04", "Ubuntu 22.04.5 LTS"), ("ubuntu-24.04", "Ubuntu 24.04.1 LTS"),
])
def test_os_is_pretty_name(name, pretty):
    assert parse_os_release((FIXTURES / "os-release" / name).read_text()) == pretty


def test_gpus_given_by_uuid_index_or_all():
    gpus = [{"index": 0, "uuid": "GPU-a"}, {"index": 1, "uuid": "GPU-b"}]
    by_uuid = [{"Driver": "nvidia", "Count": 0, "DeviceIDs": ["GPU-b"],
                "Capabilities": [["gpu"]]}]
    assert given_gpus(by_uuid, gpus) == ([{"index": 1, "uuid": "GPU-b"}], False)
    by_index = [{"Driver": "", "Count": 0, "DeviceIDs": ["0"], "Capabilities": [["gpu"]]}]
    assert given_gpus(by_index, gpus) == ([{"index": 0, "uuid": "GPU-a"}], False)
    assert given_gpus([{"Driver": "nvidia", "Count": -1, "DeviceIDs": None,
                        "Capabilities": [["gpu"]]}], gpus) == ([], True)
    assert given_gpus(by_uuid, []) == ([{"index": None, "uuid": "GPU-b"}], False)
    assert given_gpus(None, gpus) == ([], False)


# -- the script itself, run by sh against stand-in commands -----------------------------


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def run_script(tmp_path: Path, plan: HostPlan, stubs: dict[str, str]) -> dict:
    """status_script under sh with only coreutils and STUBS on PATH; its decoded report."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("timeout", "base64", "tr", "cat", "sh"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for name, body in stubs.items():
        _stub(bin_dir, name, body)
    proc = subprocess.run(["/bin/sh", "-c", status_script(plan)], capture_output=True,
                          text=True, env={"PATH": str(bin_dir)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1  # one JSON document, one line
    return decode_report(proc.stdout)


def test_script_on_a_bare_host_reports_what_is_missing(tmp_path):
    raw = run_script(tmp_path, GPU_1, {})
    assert set(raw) == {"format", "os", "reboot"}
    view = host_view(GPU_1, raw)
    assert view["gpus"] == [] and view["docker_error"] == "docker is not installed"
    assert [i["state"] for i in view["instances"]] == ["missing", "missing"]
    assert view["nginx"]["error"] == "curl is not installed on the host"
    assert "no GPU" in render_table([view])


def test_script_output_survives_quotes_backslashes_and_exit_codes(tmp_path):
    smi_text, smi_rc = smi_fixture(FIXTURES / "nvidia-smi" / "query-driver-not-loaded.txt")
    raw = run_script(tmp_path, CPU_1, {
        "nvidia-smi": f"cat <<'EOF'\n{smi_text}\nEOF\nexit {smi_rc}\n",
        "docker": 'case "$1" in version) printf "%s\\n" \'27.3.1 "quoted" \\back\';; '
                  'ps) echo abc123;; inspect) echo \'{"name":"/ollama-0","service":"ollama-0",'
                  '"state":"running","health":"starting","image":"ollama/ollama:0.7.0",'
                  '"devices":null}\';; esac\n',
        "curl": 'for a; do url=$a; done\ncase "$url" in *version) echo \'{"version":"0.7.0"}\';;'
                ' *tags) echo \'{"models":[{"name":"qwen2.5:0.5b"}]}\';; *ps) echo '
                '\'{"models":[]}\';; *health) echo "curl: (7) refused" >&2; printf '
                'http_code=000; exit 7;; esac\n',
    })
    assert raw["nvidia_smi"] == {"rc": 9, "out": smi_text.strip()}
    assert raw["docker"]["out"] == '27.3.1 "quoted" \\back'
    view = host_view(CPU_1, raw)
    assert view["gpu_error"].startswith("nvidia-smi exited 9: NVIDIA-SMI has failed")
    (instance,) = view["instances"]
    assert (instance["health"], instance["healthy"], instance["version"],
            instance["models"]) == ("starting", False, "0.7.0", ["qwen2.5:0.5b"])
    assert view["nginx"] == {"url": NGINX, "ok": False, "status": None, "error": "refused"}


def test_report_is_found_after_login_noise_and_broken_output_is_an_error():
    text = (RECORDED / "cpu-host.txt").read_text()
    assert decode_report("Welcome to the host\n" + text) == decode_report(text)
    with pytest.raises(ValueError):
        decode_report("sudo: a password is required\n")


# -- the table and the document ---------------------------------------------------------


def test_table_has_fixed_columns_and_unreachable_rows():
    views = [recorded("gpu-host", GPU_1),
             failed_view(GPU_2, "Could not connect (timed out)"),
             recorded("cpu-host", CPU_1)]
    lines = render_table(views).splitlines()
    assert lines[0].split() == ["HOST", "OS", "DRIVER", "DOCKER", "NGINX", "/health"]
    assert lines[1].split()[:2] == ["gpu-1", "Debian"] and lines[1].endswith("ok")
    for column in ("DRIVER", "DOCKER"):  # host lines line up under the header
        at = lines[0].index(column)
        assert lines[1][at - 1] == " " and lines[1][at] != " "
    assert lines[2] == ("       GPU 0    NVIDIA H100 80GB HBM3           2731 / 81559 MiB   "
                        "37%  GPU-b0ab98e5-665d-5ac8-a1c3-ee72b1ab259a")
    assert lines[4].startswith("       ollama-0  :11434  gpu:0      healthy    0.6.8     ")
    assert lines[4].endswith("loaded tinyllama:latest (GPU)")
    assert "gpu-2  unreachable: Could not connect (timed out)" in lines
    assert lines[-1] == "3 hosts: 2 answered, 1 unreachable; 3 Ollama instances: 3 healthy"
    assert exit_status(views) == 1


def test_an_unhealthy_instance_shows_why_from_its_health_log():
    lost = ("gpu: nvidia-smi exit 255: Failed to initialize NVML: Unknown Error\n")
    container = {"name": "ollama-0", "state": "running", "health": "unhealthy",
                 "health_log": [{"ExitCode": 0, "Output": "ok: 1 GPUs\n"},
                                {"ExitCode": 1, "Output": lost}]}
    view = instance_view("ollama-0", 11434, container, {}, [])
    assert (view["healthy"], view["health_reason"]) == (False, lost.strip())
    assert instance_view("ollama-0", 11434, {**container, "health": "healthy", "health_log": [
        {"ExitCode": 0, "Output": "ok: 1 GPUs\n"}]}, {}, [])["health_reason"] is None
    table = render_table([{**recorded("gpu-host", GPU_1), "instances": [
        {**recorded("gpu-host", GPU_1)["instances"][0], "health": "unhealthy",
         "healthy": False, "health_reason": lost.strip()}]}])
    assert f"[{lost.strip()}]" in table


def test_a_host_that_must_reboot_says_why(tmp_path):
    raw = run_script(tmp_path, GPU_1, {
        "uname": "echo 6.12.38+deb13-amd64\n",
        "ls": "exit 0\n"})
    assert raw["reboot"]["out"].splitlines()[0] == "running=6.12.38+deb13-amd64"
    report = {"reboot": {"rc": 0, "out": "running=6.12.38+deb13-amd64\n"
                         "kernel=6.12.38+deb13-amd64\nkernel=6.12.41+deb13-amd64\n"
                         "loaded=590.44.01\nlibrary=590.48.01\n"}}
    view = host_view(GPU_1, report)
    assert view["reboot_required"] == [
        "kernel 6.12.41+deb13-amd64 installed, 6.12.38+deb13-amd64 running",
        "NVIDIA module 590.44.01 loaded, driver 590.48.01 installed"]
    table = render_table([view])
    assert "  reboot required: kernel 6.12.41+deb13-amd64 installed" in table
    assert host_view(GPU_1, {})["reboot_required"] == []


def test_json_document_is_stable():
    views = [recorded("gpu-host", GPU_1), failed_view(GPU_2, "Could not connect (timed out)"),
             failed_view(CPU_1, "no answer within 20s (running the status script)",
                         reachable=True)]
    document = json.loads(json.dumps(views))
    assert document[1] == {"host": "gpu-2", "reachable": False,
                           "error": "Could not connect (timed out)"}
    assert set(document[2]) == REACHABLE_KEYS and document[2]["reachable"] is True
    assert "cpu-1  error: no answer within 20s" in render_table(views)


# -- the inventory and the command line --------------------------------------------------


def test_plans_follow_the_settings():
    hosts = [
        Member("gpu-a", ("gpu_servers", "prod"), {"gpu_count": 4},
                  Settings(gpu_count=4, ollama_base_port=12000)),
        Member("gpu-b", ("gpu_servers",), {}, Settings(
            gpu_count=2, ollama_topology="shared", nginx_port=8080,
            ollama_bind_address="0.0.0.0", ollama_bind_unsafe=True)),
        Member("lb-1", ("lb_servers",), {}, Settings(front_door_port=8000)),
    ]
    a, b, lb = plan_hosts(hosts)
    assert a.instances == (("ollama-0", 12000), ("ollama-1", 12001), ("ollama-2", 12002),
                           ("ollama-3", 12003))
    assert (b.instances, b.nginx_url, b.api_address) == (
        (("ollama-0", 11434),), "http://127.0.0.1:8080/health", "127.0.0.1")
    assert (lb.instances, lb.nginx_url) == ((), "http://127.0.0.1:8000/health")
    (v6,) = plan_hosts([Member("gpu-b", ("gpu_servers",), {},
                                  Settings(gpu_count=1, ollama_bind_address="::1"))])
    assert (v6.api_address, a.api_address) == ("[::1]", "127.0.0.1")


def test_script_asks_each_instance_at_its_address_and_nginx_at_its_url(tmp_path):
    plan = HostPlan("gpu-b", ("gpu_servers",), {}, (("ollama-0", 11434), ("ollama-1", 12003)),
                    api_address="[::1]", nginx_url="https://127.0.0.1:8443/health")
    raw = run_script(tmp_path, plan, {"curl": 'for a; do url=$a; done\necho "$url"\n'})
    asked = {key: entry["out"] for key, entry in raw.items() if key not in ("format", "reboot")}
    assert asked == {"os": asked["os"], "nginx": "https://127.0.0.1:8443/health", **{
        f"{what}:{port}": f"http://[::1]:{port}/api/{what}"
        for port in (11434, 12003) for what in ("version", "tags", "ps")}}


def test_config_py_applies_as_in_pyinfra_and_connecting_leaves_time(tmp_path):
    path = tmp_path / "config.py"
    path.write_text("from pyinfra import config\nconfig.CONNECT_TIMEOUT = 5\n"
                    "config.SUDO = True\n")
    config = pyinfra_config(20, str(path))
    assert (config.CONNECT_TIMEOUT, config.SUDO) == (5, True)
    assert pyinfra_config(4, str(path)).CONNECT_TIMEOUT == 3
    assert pyinfra_config(20, str(tmp_path / "none.py")).CONNECT_TIMEOUT == 10  # pyinfra's
    path.write_text("config = undefined_name\n")
    with pytest.raises(UsageError, match="config.py: NameError: name 'undefined_name'"):
        pyinfra_config(20, str(path))


def test_base64_is_what_the_script_uses():
    # the parser decodes what `base64 | tr -d '\n'` makes, long outputs included
    text = "x" * 5000 + "\nü\n"
    encoded = subprocess.run("base64 | tr -d '\\n'", shell=True, input=text.encode(),
                             capture_output=True, check=True).stdout.decode()
    assert base64.b64decode(encoded).decode() == text


# -- the health agent's verdict, the front doors' rotation, the events -------------

VERDICT = {"version": 1, "host": "gpu-1", "checked_at": 1765000000.0, "state": "ok",
           "kind": "", "reason": "", "since": None, "action": "", "instances": [
               {"name": "ollama-0", "state": "ok", "kind": "", "reason": "", "since": None,
                "action": ""},
               {"name": "ollama-1", "state": "out", "kind": "xid79",
                "reason": "GPU 1: NVRM: Xid (PCI:0000:5e:00): 79, GPU has fallen off the bus.",
                "since": 1765000000.0, "action": "waits: a reboot is needed and "
                "health_allow_reboot is off"}]}
ROTATION = {"version": 1, "front_door": "lb-1", "hosts": {
    "gpu-1": {"state": "drained", "cause": "drain", "reason": "", "since": 1765000000.0,
              "instances": {"ollama-0": {"state": "in"}, "ollama-1": {"state": "evicted"}}},
    "gpu-2": {"state": "evicted", "cause": "", "reason": "fm-down: Fabric Manager is not "
              "running", "since": 1765000000.0, "instances": {}}}}
EVENT = {"at": 1765000000.0, "host": "gpu-1", "instance": "ollama-1", "kind": "xid79",
         "action": "evicted", "result": "out of rotation", "reason": "GPU 1 fell off"}


def agent_plan() -> HostPlan:
    return HostPlan("gpu-1", ("gpu_servers",), {}, TWO_GPUS, nginx_url=NGINX,
                    verdict="/run/ollama-fleet/health/verdict.json", events=5)


def test_an_instance_the_agent_holds_out_is_not_healthy_and_says_why():
    view = host_view(agent_plan(), report(health=(0, json.dumps(VERDICT)),
                                          events=(0, json.dumps(EVENT) + "\nbroken\n")))
    one = view["instances"][1]
    assert one["agent"]["state"] == "out" and one["agent"]["kind"] == "xid79"
    assert not one["healthy"]
    assert view["health"]["state"] == "ok"
    assert view["events"] == [EVENT]
    table = render_table([view])
    assert "OUT xid79: GPU 1: NVRM: Xid (PCI:0000:5e:00): 79" in table
    assert "health_allow_reboot is off" in table
    assert exit_status([view]) == 1


def test_a_host_without_a_verdict_says_no_agent_answers():
    view = host_view(agent_plan(), report())
    assert view["health"]["state"] == "unknown"
    assert "health agent: no verdict from the health agent" in render_table([view])


def test_every_front_doors_word_on_a_host_is_shown_under_it():
    gpu = host_view(agent_plan(), report(health=(0, json.dumps(VERDICT))))
    door = host_view(HostPlan("lb-1", ("lb_servers",), {}, (), nginx_url=NGINX,
                              rotation_url="http://127.0.0.1:11391/fleet/rotation"),
                     report(rotation=(0, json.dumps(ROTATION))))
    views = attach_rotation([gpu, door])
    assert gpu["rotation"] == {"lb-1": ROTATION["hosts"]["gpu-1"]}
    table = render_table(views)
    assert "front door lb-1: drained by an operator (drain)" in table
    assert "instances out: ollama-1 evicted" in table


def test_events_are_listed_per_host_and_a_host_that_does_not_answer_is_named():
    gpu = host_view(agent_plan(), report(health=(0, json.dumps(VERDICT)),
                                         events=(0, json.dumps(EVENT))))
    gone = failed_view(GPU_2, "Could not connect")
    text = render_events([gpu, gone])
    assert "gpu-1      ollama-1   xid79      evicted: out of rotation (GPU 1 fell off)" in text
    assert "gpu-2: unreachable: Could not connect" in text


def test_a_verdict_the_agent_stopped_renewing_says_so():
    old = {**VERDICT, "checked_at": 1765000000.0}
    view = host_view(agent_plan(), report(health=(0, json.dumps(old)), now=(0, "1765000060\n")))
    assert view["health"]["state"] == "silent"
    assert "health agent: the health agent's verdict is 60 s old" in render_table([view])

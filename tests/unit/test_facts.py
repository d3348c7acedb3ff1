"""Fact parsers on recorded output (more GPU ones in test_distributions.py), and the facts'
commands run here against stand-ins."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
from pathlib import Path

import pytest

from ollama_fleet.tasks.kit.facts import (
    GPU_FIELDS,
    ComposeContainers,
    ComposeStale,
    ContainerGpus,
    DockerNetwork,
    JsonFile,
    LoadedModels,
    NvidiaGpus,
    SmokeAnswer,
    parse_gpu_csv,
    parse_routes,
)
from tests.unit.stubs import run_with_stubs

FIXTURES = Path(__file__).parent / "fixtures"


def test_docker_network_and_routes_from_proc():
    lines = (FIXTURES / "proc" / "docker-network-ollama-apps").read_text().splitlines()
    found = parse_routes([line.strip() for line in lines])
    assert found["exists"] and found["subnets"] == ["172.31.254.0/24"]
    # the default route is left out: it overlaps every network
    assert found["routes"] == [("172.17.0.0/16", "docker0"), ("172.31.254.0/24", "br-3f1c2a9d7e01"),
                               ("192.0.2.0/24", "eth0")]


def test_no_network_no_routes():
    assert parse_routes([]) == {"exists": False, "subnets": [], "routes": []}
    found = parse_routes(["Iface\tDestination\tGateway", "garbage line here 1 2 3 4 5 6"])
    assert found == {"exists": False, "subnets": [], "routes": []}


# -- the facts' scripts, run here against stand-ins (templates/facts) ----------------------

SMI = FIXTURES / "nvidia-smi"


@pytest.mark.parametrize("fixture", sorted(p.name for p in SMI.glob("*.txt")))
def test_nvidia_gpus_runs_nvidia_smi_as_the_fixtures_record_it(tmp_path, fixture):
    """The script's output, processed, is what the recorded `output + rc=N` gives."""
    recorded = (SMI / fixture).read_text().splitlines()
    rc = next((line[3:] for line in recorded if line.startswith("rc=")), None)
    stubs = {}
    if rc is not None:  # not-installed.txt: no nvidia-smi on the host
        output = "\n".join(line for line in recorded if not line.startswith("rc="))
        stubs["nvidia-smi"] = (f'[ "$1" = --query-gpu={",".join(GPU_FIELDS)} ] || exit 99\n'
                               f"cat <<'EOF'\n{output}\nEOF\nexit {rc}\n")
    proc = run_with_stubs(NvidiaGpus().command(), tmp_path, stubs)
    assert proc.returncode == 0, proc.stderr
    fact = NvidiaGpus().process(proc.stdout.splitlines())
    assert fact == NvidiaGpus().process(recorded)
    assert fact["installed"] is (rc is not None)


def test_gpu_lines_are_read_by_the_fields_asked_for():
    gpus, other = parse_gpu_csv(["0, GPU-a, NVIDIA A100, 61443, 81920, [N/A], 570.1",
                                 "Unable to determine the device handle for GPU1: Unknown",
                                 "x, GPU-b, NVIDIA A100, 1, 2, 3, 570.1"],
                                ("index", "uuid", "name", "memory.used", "memory.total",
                                 "utilization.gpu", "driver_version"))
    assert gpus == [{"index": 0, "uuid": "GPU-a", "name": "NVIDIA A100",
                     "memory_used_mib": 61443, "memory_total_mib": 81920,
                     "utilization_pct": None, "driver_version": "570.1"}]
    assert other == ["Unable to determine the device handle for GPU1: Unknown",
                     "x, GPU-b, NVIDIA A100, 1, 2, 3, 570.1"]


def test_container_gpus_are_uuid_lines_and_the_rest_is_said():
    seen = ContainerGpus().process(["GPU-a", "GPU-b", "rc=0"])
    assert seen == {"rc": 0, "uuids": ["GPU-a", "GPU-b"], "output": "GPU-a GPU-b"}
    broken = ContainerGpus().process(["Failed to initialize NVML: Unknown Error", "rc=255"])
    assert broken == {"rc": 255, "uuids": [],
                      "output": "Failed to initialize NVML: Unknown Error"}
    assert "'it'\"'\"'s'" in ContainerGpus().command("it's")


def test_json_file_reads_any_path_and_says_absent(tmp_path):
    odd = tmp_path / "it's $HOME `x`.json"
    odd.write_text('{"a": 1}\n')
    read = run_with_stubs(JsonFile().command(str(odd)), tmp_path)
    assert JsonFile().process(read.stdout.splitlines()) == {"a": 1}
    absent = run_with_stubs(JsonFile().command(str(tmp_path / "none.json")), tmp_path)
    assert (absent.returncode, JsonFile().process(absent.stdout.splitlines())) == (0, None)


DOCKER = r"""case "$1 $2" in
"ps -a")
    if [ "$3" = --no-trunc ]; then
        [ "$5" = label=com.docker.compose.project=ollama ] || exit 0
        printf 'c0 ollama/ollama:0.6.8\nc1 5f2b3c4d5e6f\n'
        exit 0
    fi
    [ "$4" = label=com.docker.compose.project=ollama ] || exit 0
    printf 'have ollama-0 h0\nhave nginx old\n';;
"inspect -f")
    shift 3
    for id in "$@"; do
        case "$id" in
        c0) printf '%s %s\n' 'inspect c0 ollama-0' \
            '{"Status":"running","Health":{"Status":"healthy","Log":[{"Output":"a b\\n"}]}}';;
        c1) echo 'inspect c1 nginx {"Status":"exited","ExitCode":0}';;
        esac
    done;;
"compose config") printf 'ollama-0 h0\nnginx new\nollama-1 h1\n';;
"network inspect")
    [ "$3" = ollama-apps ] || exit 1
    printf 'exists\nsubnet 172.31.254.0/24\n';;
esac
"""


def test_compose_containers_with_their_health(tmp_path):
    proc = run_with_stubs(ComposeContainers().command("ollama"), tmp_path, {"docker": DOCKER})
    assert proc.returncode == 0, proc.stderr
    assert ComposeContainers().process(proc.stdout.splitlines()) == {
        "ollama-0": {"id": "c0", "state": "running", "health": "healthy",
                     "image": "ollama/ollama:0.6.8"},
        "nginx": {"id": "c1", "state": "exited", "health": "none", "image": "5f2b3c4d5e6f"}}
    bare = run_with_stubs(ComposeContainers().command("ollama"), tmp_path / "bare-host")
    assert (bare.returncode, bare.stdout) == (0, "")


def test_compose_stale_is_what_the_file_wants_and_no_container_has(tmp_path):
    (tmp_path / "stack").mkdir()
    proc = run_with_stubs(ComposeStale().command(str(tmp_path / "stack"), "ollama"), tmp_path,
                          {"docker": DOCKER})
    assert proc.returncode == 0, proc.stderr
    assert ComposeStale().process(proc.stdout.splitlines()) == ["nginx", "ollama-1"]
    gone = run_with_stubs(ComposeStale().command(str(tmp_path / "none"), "ollama"), tmp_path,
                          {"docker": DOCKER})
    assert (gone.returncode, ComposeStale().process(gone.stdout.splitlines())) == (0, [])


def test_docker_network_and_the_hosts_routes(tmp_path):
    proc = run_with_stubs(DockerNetwork().command("ollama-apps"), tmp_path, {"docker": DOCKER})
    assert proc.returncode == 0, proc.stderr
    found = DockerNetwork().process(proc.stdout.splitlines())
    assert found["exists"] and found["subnets"] == ["172.31.254.0/24"]
    other = run_with_stubs(DockerNetwork().command("other"), tmp_path, {"docker": DOCKER})
    assert DockerNetwork().process(other.stdout.splitlines())["exists"] is False


def test_kept_loaded_lists_only_models_loaded_for_good():
    ps = {"models": [
        {"name": "tinyllama:latest", "expires_at": "2318-03-14T05:33:12.000Z"},
        {"name": "qwen2.5:0.5b", "expires_at": "2026-11-30T03:10:00.123456789Z"},
    ]}
    assert [m["name"] for m in LoadedModels().process([json.dumps(ps)]) if m["forever"]] == [
        "tinyllama:latest"]
    assert LoadedModels().process(['{"models":[]}']) == []
    assert LoadedModels().process(["curl: (7) Failed to connect", "__down__"]) is None
    assert LoadedModels().process(["<html>502</html>"]) is None


def test_loaded_models_say_where_they_run():
    ps = {"models": [
        {"name": "a:1b", "size": 1300, "size_vram": 1300, "expires_at": "2026-11-30T03:10:00Z"},
        {"name": "b:1b", "size": 1300, "expires_at": "2026-11-30T03:10:00Z"},
    ]}
    assert LoadedModels().process([json.dumps(ps)]) == [
        {"name": "a:1b", "size": 1300, "size_vram": 1300, "forever": False},
        {"name": "b:1b", "size": 1300, "size_vram": 0, "forever": False}]


class _Nginx(http.server.BaseHTTPRequestHandler):
    """A host's nginx in front of Ollama, as the smoke test sees it."""

    def do_GET(self):  # noqa: N802 (the standard library's name)
        self._answer(200, b'{"version":"0.6.8"}')

    def do_POST(self):  # noqa: N802
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if request["model"] != "tinyllama":
            self._answer(404, b'{"error":"model \'%s\' not found"}' % request["model"].encode())
            return
        self._answer(200, b'{"response":"hi","done":false}\n'
                          b'{"response":"","done":true,"load_duration":1500000000}\n')

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_smoke_answer_is_what_the_hosts_nginx_says_to_a_client():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Nginx)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    def ask(url: str, model: str = "") -> dict:
        out = subprocess.run(["sh", "-c", SmokeAnswer().command(url, model)],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        return SmokeAnswer().process(out.splitlines())

    try:
        assert ask(url) == {"version": '{"version":"0.6.8"}'}
        assert ask(url, "tinyllama") == {
            "version": '{"version":"0.6.8"}', "status": "200",
            "generate": '{"response":"","done":true,"load_duration":1500000000}'}
        missing = ask(url, "nothere")
        assert missing["status"] == "404" and "not found" in missing["generate"]
    finally:
        server.shutdown()
        server.server_close()
    assert ask(url)["error"].startswith("curl: (7)")  # nothing listens any more

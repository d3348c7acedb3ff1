"""tasks.kit.scripts: the shell of templates/<task>/<name>.sh run as one command whose arguments
are never spliced into a program; and the stack's scripts, run here against stand-ins."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from ollama_fleet.tasks.kit.compose import reload_nginx_command, wait_healthy_command
from ollama_fleet.tasks.kit.paths import TEMPLATES
from ollama_fleet.tasks.kit.scripts import interpreter, script_command, script_text
from tests.unit.stubs import BASE_TOOLS, run_with_stubs

SCRIPTS = sorted(p.relative_to(TEMPLATES).as_posix() for p in TEMPLATES.rglob("*.sh"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_says_what_it_does_its_arguments_and_exit_codes(name):
    text = script_text(name)
    assert interpreter(text) in ("/bin/sh", "/bin/bash")
    header = re.match(r"#!.*\n((?:#.*\n)+)", text)
    assert header, f"{name}: no header of comments under its #! line"
    usage = f"# {name.rsplit('/', 1)[1]}"
    assert usage in header.group(1), f"{name}: the header shows no `{usage} ARG...` line"
    assert "# Exit:" in header.group(1), f"{name}: the header says nothing of its exit codes"


def test_the_command_is_the_scripts_text_and_each_argument_quoted():
    command = script_command("backup/paths-present.sh", "/a b", 7, "it's")
    words = shlex.split(command)
    assert words == ["/bin/sh", "-c", script_text("backup/paths-present.sh"),
                     "paths-present.sh", "/a b", "7", "it's"]


def test_arguments_stay_data_whatever_they_hold(tmp_path):
    hostile = ["$(touch pwned)", "`touch pwned`", "'; touch pwned; '", "--", "*"]
    present = [tmp_path / name for name in hostile]
    for path in present:
        path.touch()
    proc = run_with_stubs(f"cd {shlex.quote(str(tmp_path))} && " + script_command(
        "backup/paths-present.sh", *present, tmp_path / "absent", "a\nb", ""), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(p) for p in present]
    assert not (tmp_path / "pwned").exists()


def test_a_script_without_its_interpreter_line_is_refused():
    with pytest.raises(ValueError, match="no `#!/...` line"):
        interpreter("echo hello\n")


# -- the stack's scripts ----------------------------------------------------------------

# `docker` as wait-healthy.sh asks it: each container's state comes from a file
# stub-bin/state/<name> ("<status> <restarts> <exit code> <health>"); a container whose
# file has a second line moves to it (and the next) one inspect of its state at a time.
DOCKER_STATE = r'''d="${0%/*}/state"
case "$1" in
inspect)
    for last; do :; done
    f="$d/$last"
    [ -f "$f" ] || exit 1
    case "$*" in
    *RestartCount*)
        head -n 1 "$f"
        rest=$(tail -n +2 "$f")
        [ -z "$rest" ] || printf '%s\n' "$rest" > "$f"
        ;;
    *Health.Log*) printf '"probe 1"\n"Error: something went wrong\\n"\n\n' ;;  # docker adds \n
    esac ;;
logs) printf 'level=INFO msg=starting\r\npanic: boom\r\n\r\ngoroutine 1 [running]:\r\n'
      printf '\tmain.go:12 +0x1d\r\n' ;;
esac
exit 0
'''


def wait_healthy(tmp_path, states: dict[str, str], timeout: int = 30):
    (tmp_path / "stub-bin" / "state").mkdir(parents=True, exist_ok=True)
    for name, lines in states.items():
        (tmp_path / "stub-bin" / "state" / name).write_text(lines)
    names = list(states)
    return run_with_stubs(wait_healthy_command(names, timeout), tmp_path,
                          {"docker": DOCKER_STATE, "sleep": 'echo slept >> "$0.log"\n'})


def slept(tmp_path) -> int:
    log = tmp_path / "stub-bin" / "sleep.log"
    return log.read_text().count("slept") if log.exists() else 0


def test_wait_healthy_is_done_when_every_container_is_healthy(tmp_path):
    proc = wait_healthy(tmp_path, {"ollama-0": "running 0 0 healthy\n",
                                   "ollama-1": "running 0 0 starting\nrunning 0 0 starting\n"
                                   "running 0 0 healthy\n"})
    assert (proc.returncode, proc.stderr) == (0, "")
    assert slept(tmp_path) == 1


def test_wait_healthy_names_the_containers_that_are_not_in_time(tmp_path):
    proc = wait_healthy(tmp_path, {"ollama-0": "running 0 0 healthy\n",
                                   "ollama-1": "running 0 0 starting\n"}, timeout=7)
    assert proc.returncode == 1
    assert proc.stderr == "not healthy after 7s: ollama-1\n"
    assert slept(tmp_path) == 3  # 7 // 2
    proc = wait_healthy(tmp_path, {"ollama-1": "running 0 0 starting\n"}, timeout=0)
    assert (proc.returncode, proc.stderr) == (1, "not healthy after 0s: ollama-1\n")


def test_wait_healthy_calls_unhealthy_at_once_with_the_last_probe(tmp_path):
    proc = wait_healthy(tmp_path, {"ollama-0": "running 0 0 starting\n",
                                   "ollama-1": "running 0 0 unhealthy\n"}, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr == 'ollama-1: unhealthy: "Error: something went wrong\\n"\n'
    assert slept(tmp_path) == 0


def test_wait_healthy_calls_an_exited_container_with_its_code_and_last_log_line(tmp_path):
    proc = wait_healthy(tmp_path, {"ollama-0": "exited 0 1 starting\n"}, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr == "ollama-0: exited with code 1: panic: boom\n"


def test_wait_healthy_calls_a_restart_loop_counted_from_when_the_wait_began(tmp_path):
    # 5 restarts before the wait (long ago): no loop; then 2 more while waiting: a loop
    proc = wait_healthy(tmp_path, {"ollama-0": "running 5 0 starting\nrunning 5 0 starting\n"
                                   "restarting 6 2 starting\nrestarting 7 2 starting\n"},
                        timeout=300)
    assert proc.returncode == 1
    assert proc.stderr == ("ollama-0: restarting in a loop (2 restarts, last exit code 2): "
                           "panic: boom\n")
    assert slept(tmp_path) == 2


def test_wait_healthy_a_stopped_containers_unhealthy_is_no_verdict_its_loop_is(tmp_path):
    # Docker marks a container that stops `unhealthy` (its probes end, none logged)
    proc = wait_healthy(tmp_path, {"ollama-0": "running 0 0 starting\nrestarting 1 1 unhealthy\n"
                                   "running 1 0 starting\nrestarting 2 1 unhealthy\n"},
                        timeout=300)
    assert proc.returncode == 1
    assert proc.stderr == ("ollama-0: restarting in a loop (2 restarts, last exit code 1): "
                           "panic: boom\n")


def test_wait_healthy_a_healthy_container_that_restarted_is_healthy(tmp_path):
    proc = wait_healthy(tmp_path, {"ollama-0": "running 0 0 starting\nrunning 3 0 healthy\n"})
    assert (proc.returncode, proc.stderr) == (0, "")


def test_wait_healthy_names_a_missing_container(tmp_path):
    proc = run_with_stubs(wait_healthy_command(["ollama-3"], 30), tmp_path,
                          {"docker": DOCKER_STATE, "sleep": "exit 0\n"})
    assert (proc.returncode, proc.stderr) == (1, "ollama-3: no such container\n")


def test_reload_nginx_reloads_in_the_container_and_fails_with_it(tmp_path):
    docker = 'echo "$*" >> "$0.log"\n[ "$2" = ollama-nginx ]\n'
    proc = run_with_stubs(reload_nginx_command("ollama-nginx", 30), tmp_path,
                          {"docker": docker, "sleep": "exit 0\n"})
    # (this machine's own nginx workers, if any, never exit: then it says so, and goes on)
    assert proc.returncode == 0 and proc.stderr in ("", "requests still in flight after 30s; "
                                                        "going on\n")
    assert (tmp_path / "stub-bin" / "docker.log").read_text() == \
        "exec ollama-nginx nginx -s reload\n"
    proc = run_with_stubs(reload_nginx_command("other-nginx", 30), tmp_path,
                          {"docker": docker, "sleep": "exit 0\n"})
    assert proc.returncode == 1


# `docker` as pull-images.sh asks it: a pull of a tag ending in `-missing` fails as the
# registry's "manifest unknown" does; others land in stub-bin/images.
DOCKER_PULL = r'''d="${0%/*}"
case "$1" in
pull)
    case "$3" in
    *-missing) printf 'Error response from daemon: manifest for %s not found: manifest ' "$3"
               printf 'unknown: manifest unknown\n'; exit 1 ;;
    *-lost) exit 0 ;;
    esac
    echo "$3" >> "$d/images"; echo "docker.io/$3" ;;
image) grep -qx "$5" "$d/images" 2>/dev/null ;;
esac
'''


def test_pull_images_pulls_each_and_checks_it_is_there(tmp_path):
    proc = run_with_stubs(script_command("compose/pull-images.sh", 60, "ollama/ollama:0.7.0",
                                         "nginx:1.27"), tmp_path, {"docker": DOCKER_PULL})
    assert (proc.returncode, proc.stderr) == (0, "")
    assert (tmp_path / "stub-bin" / "images").read_text() == "ollama/ollama:0.7.0\nnginx:1.27\n"


def test_pull_images_names_the_image_and_dockers_reason(tmp_path):
    proc = run_with_stubs(script_command("compose/pull-images.sh", 60, "ollama/ollama:9-missing",
                                         "nginx:1.27"), tmp_path, {"docker": DOCKER_PULL})
    assert proc.returncode == 1
    assert proc.stderr == ("ollama/ollama:9-missing: pull failed: Error response from daemon: "
                           "manifest for ollama/ollama:9-missing not found: manifest unknown: "
                           "manifest unknown\n")
    assert not (tmp_path / "stub-bin" / "images").exists()  # stopped at the first
    proc = run_with_stubs(script_command("compose/pull-images.sh", 60, "ollama/ollama:9-lost"),
                          tmp_path, {"docker": DOCKER_PULL})
    assert (proc.returncode, proc.stderr) == (1, "ollama/ollama:9-lost: pull failed: not in "
                                                 "the image store after docker pull\n")


# `curl` as warm.sh asks it: a generate for `broken:latest` fails as Ollama does when a model
# cannot be loaded; /api/ps lists what the log says was loaded.
CURL_OLLAMA = r'''d="${0%/*}"
for last; do :; done
case "$last" in
*/api/generate)
    case "$*" in
    *'"model":"broken:latest"'*) printf '{"error":"llama runner process has terminated"}'
                                 exit 0 ;;
    *'"model":"all-minilm:latest"'*)
        printf '{"error":"\\"all-minilm:latest\\" does not support generate"}'; exit 0 ;;
    esac
    echo "$*" >> "$d/loads"
    printf '{"model":"x","response":"","done":true,"done_reason":"load"}' ;;
*/api/embed)
    echo "$*" >> "$d/loads"
    printf '{"model":"all-minilm:latest","embeddings":[[0.1,0.2]]}' ;;
*/api/ps)
    printf '{"models":['
    grep -o '"model":"[^"]*"' "$d/loads" | sed 's/"model"/{"name"/; s/$/}/' | tr '\n' ',' \
        | sed 's/,$//'
    printf ']}' ;;
esac
'''


def test_warm_loads_each_model_for_good_and_checks_ps(tmp_path):
    proc = run_with_stubs(script_command("models/warm.sh", "http://127.0.0.1:11435", 600, -1,
                                         "tinyllama:latest", "qwen2.5:0.5b"),
                          tmp_path, {"curl": CURL_OLLAMA})
    assert (proc.returncode, proc.stderr) == (0, "")
    loads = (tmp_path / "stub-bin" / "loads").read_text()
    assert '-d {"model":"tinyllama:latest","keep_alive":-1} ' in loads
    assert '-d {"model":"qwen2.5:0.5b","keep_alive":-1} ' in loads


def test_warm_loads_an_embedding_model_with_one_embedding(tmp_path):
    proc = run_with_stubs(script_command("models/warm.sh", "http://127.0.0.1:11434", 600, -1,
                                         "all-minilm:latest"), tmp_path, {"curl": CURL_OLLAMA})
    assert (proc.returncode, proc.stderr) == (0, "")
    loads = (tmp_path / "stub-bin" / "loads").read_text()
    assert '"model":"all-minilm:latest","input":"warm-up","keep_alive":-1' in loads
    assert loads.strip().endswith("/api/embed")


def test_warm_names_the_model_ollama_could_not_load(tmp_path):
    proc = run_with_stubs(script_command("models/warm.sh", "http://127.0.0.1:11434", 600, -1,
                                         "broken:latest"), tmp_path, {"curl": CURL_OLLAMA})
    assert proc.returncode == 1
    assert proc.stderr == ("http://127.0.0.1:11434: broken:latest: not loaded: "
                           '{"error":"llama runner process has terminated"}\n')


def test_warm_with_the_default_keep_alive_names_none(tmp_path):
    proc = run_with_stubs(script_command("models/warm.sh", "http://127.0.0.1:11434", 600,
                                         "default", "tinyllama:latest"),
                          tmp_path, {"curl": CURL_OLLAMA})
    assert (proc.returncode, proc.stderr) == (0, "")
    assert '-d {"model":"tinyllama:latest"} ' in (tmp_path / "stub-bin" / "loads").read_text()


@pytest.mark.parametrize("keep, sent", [("5m", ',"keep_alive":"5m"'),
                                        ("30s", ',"keep_alive":"30s"')])
def test_warm_with_a_duration_keeps_it_that_long(tmp_path, keep, sent):
    proc = run_with_stubs(script_command("models/warm.sh", "http://127.0.0.1:11434", 600,
                                         keep, "tinyllama:latest"),
                          tmp_path, {"curl": CURL_OLLAMA})
    assert (proc.returncode, proc.stderr) == (0, "")
    assert f'-d {{"model":"tinyllama:latest"{sent}}} ' in \
        (tmp_path / "stub-bin" / "loads").read_text()


@pytest.mark.parametrize("keep", ["m5", "5 m", "", "-2", "$(id)"])
def test_warm_refuses_a_keep_alive_it_cannot_send_as_is(tmp_path, keep):
    proc = run_with_stubs(script_command("models/warm.sh", "http://127.0.0.1:11434", 600,
                                         keep, "tinyllama:latest"),
                          tmp_path, {"curl": CURL_OLLAMA})
    assert proc.returncode == 2 and "KEEP_ALIVE" in proc.stderr


# -- room for a model ---------------------------------------------------------------------

def free_space(tmp_path, free_kib: int, *layers: str):
    store = tmp_path / "store"
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    (store / ".fanout").mkdir(exist_ok=True)
    df = ("echo 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
          f"echo \"/dev/x 99999999 1 {free_kib} 1% /\"\n")
    return run_with_stubs(script_command("models/free-space.sh", store, "llama3:8b", 1024,
                                         *layers), tmp_path, {"df": df},
                          tools=(*BASE_TOOLS, "awk"))


def test_free_space_counts_only_what_the_store_lacks(tmp_path):
    (tmp_path / "store/blobs").mkdir(parents=True)
    (tmp_path / "store/blobs/sha256-aa").write_bytes(b"x" * 10)  # there, whole
    (tmp_path / "store/.fanout").mkdir()
    (tmp_path / "store/.fanout/sha256-bb.partial").write_bytes(b"x" * (1 << 20))  # 1 MiB in
    big = 3 << 30  # 3 GiB
    # 3 GiB - 1 MiB more + 1 GiB to spare = 4095 MiB: 4096 MiB free is room enough
    proc = free_space(tmp_path, 4096 * 1024, "aa:10", f"bb:{big}")
    assert (proc.returncode, proc.stderr) == (0, "")
    proc = free_space(tmp_path, 4000 * 1024, "aa:10", f"bb:{big}")
    assert proc.returncode == 1
    assert proc.stderr == (f"llama3:8b: needs 3071 MiB more in {tmp_path}/store (with 1024 "
                           "MiB to spare), 4000 MiB free\n")


# The driver's install: apt-cache answers from stub-bin/policy/<package> (its Candidate
# line) and stub-bin/show/<package> (its record); apt-get's calls land in apt-get.log.
APT_STUBS = {
    "apt-get": 'echo "$*" >> "${0%/*}/apt-get.log"\n',
    "apt-cache": ('d=${0%/*}\ncase "$1" in\n'
                  '  policy) f="$d/policy/$2"; [ -f "$f" ] && cat "$f"; exit 0 ;;\n'
                  '  show) f="$d/show/$3"; [ -f "$f" ] && cat "$f"; exit 0 ;;\nesac\n'),
    "uname": "echo 6.12.48+deb13-amd64\n",
}


def install_driver(tmp_path, *args, policy=None, show=None):
    for kind, entries in (("policy", policy or {}), ("show", show or {})):
        (tmp_path / "stub-bin" / kind).mkdir(parents=True, exist_ok=True)
        for package, text in entries.items():
            (tmp_path / "stub-bin" / kind / package).write_text(text)
    return run_with_stubs(script_command("nvidia_driver/install.sh", *args), tmp_path,
                          APT_STUBS)


def apt_calls(tmp_path) -> list[str]:
    log = tmp_path / "stub-bin" / "apt-get.log"
    return log.read_text().splitlines() if log.exists() else []


def test_install_driver_puts_headers_then_the_pin_then_the_driver(tmp_path):
    proc = install_driver(tmp_path, "linux-headers-6.12.48+deb13-amd64", "linux-headers-amd64",
                          "nvidia-driver-pinning-590", "nvidia-driver-cuda",
                          "nvidia-kernel-open-dkms",
                          policy={"linux-headers-6.12.48+deb13-amd64": "  Candidate: 6.12.48-1\n",
                                  "linux-headers-amd64": "  Candidate: 6.12.48-1\n"})
    assert (proc.returncode, proc.stderr) == (0, "")
    calls = apt_calls(tmp_path)
    assert calls[0] == "update -qq"
    assert [c.rsplit("--allow-change-held-packages ", 1)[1] for c in calls[1:]] == [
        "linux-headers-6.12.48+deb13-amd64", "linux-headers-amd64", "nvidia-driver-pinning-590",
        "nvidia-driver-cuda nvidia-kernel-open-dkms"]
    assert all("--no-install-recommends" in c for c in calls[1:])


def test_install_driver_without_the_flavours_headers_says_so_and_goes_on(tmp_path):
    proc = install_driver(tmp_path, "linux-headers-6.12.48+deb13-amd64", "linux-headers-amd64",
                          "", "nvidia-driver-cuda",
                          policy={"linux-headers-6.12.48+deb13-amd64": "  Candidate: 6.12.48-1\n"})
    assert proc.returncode == 0
    assert proc.stderr.startswith("linux-headers-amd64: not in this host's apt sources; ")
    assert [c.rsplit(" ", 1)[1] for c in apt_calls(tmp_path)[1:]] == [
        "linux-headers-6.12.48+deb13-amd64", "nvidia-driver-cuda"]


@pytest.mark.parametrize("policy", ["  Candidate: (none)\n", None])
def test_install_driver_without_the_kernels_headers_stops_before_installing(tmp_path, policy):
    proc = install_driver(tmp_path, "linux-headers-6.12.48+deb13-amd64", "linux-headers-amd64",
                          "", "nvidia-driver-cuda",
                          policy={"linux-headers-6.12.48+deb13-amd64": policy} if policy else {})
    assert proc.returncode == 1
    assert proc.stderr == ("linux-headers-6.12.48+deb13-amd64: not in this host's apt sources; "
                           "the driver's module cannot be built for the running kernel "
                           "6.12.48+deb13-amd64 (install its headers' source, or boot a "
                           "kernel that has them)\n")
    assert apt_calls(tmp_path) == ["update -qq"]  # nothing installed


def test_install_driver_refuses_a_transitional_branch(tmp_path):
    """Canonical turns a retired -server branch into a package that installs a newer one."""
    proc = install_driver(
        tmp_path, "", "", "", "linux-modules-nvidia-550-server-6.8.0-49-generic",
        "nvidia-headless-no-dkms-550-server", "nvidia-utils-550-server",
        show={"nvidia-headless-no-dkms-550-server":
              "Package: nvidia-headless-no-dkms-550-server\nVersion: 570.172.08-0ubuntu1\n"
              "Depends: nvidia-headless-no-dkms-570-server\n"
              "Description: Transitional package for nvidia-headless-no-dkms-570-server\n"})
    assert proc.returncode == 1
    assert proc.stderr == ("nvidia_driver_branch: nvidia-headless-no-dkms-550-server is a "
                           "transitional package (its branch is retired and it installs a "
                           "newer one); choose a supported branch\n")
    assert apt_calls(tmp_path) == ["update -qq"]


# -- Debian's contrib for the driver ------------------------------------------------------

SOURCES_LIST = ("deb http://deb.example/debian trixie main\n"
                "deb [signed-by=/k.gpg] http://deb.example/debian-security trixie-security main\n"
                "deb http://deb.example/debian trixie-backports main contrib\n"
                "deb [signed-by=/v.gpg] http://vendor.example/repo / \n")
DEBIAN_SOURCES = ("Types: deb\nURIs: http://deb.example/debian\n"
                  "Components: main non-free-firmware\nSuites: trixie trixie-updates\n"
                  "Signed-By: /d.gpg\n\n"
                  "Types: deb\nURIs: http://vendor.example/\nSuites: stable\nComponents: main\n")


def archive_components(tmp_path, mode: str) -> subprocess.CompletedProcess:
    """templates/apt/archive-components.sh on files under TMP_PATH instead of /etc/apt."""
    (tmp_path / "sources.list").write_text(SOURCES_LIST) if mode == "first" else None
    (tmp_path / "debian.sources").write_text(DEBIAN_SOURCES) if mode == "first" else None
    text = script_text("apt/archive-components.sh").replace(
        "/etc/apt/sources.list /etc/apt/sources.list.d/*.sources",
        f"{tmp_path}/sources.list {tmp_path}/*.sources")
    return subprocess.run(["/bin/sh", "-c", text, "archive-components.sh",
                           "apply" if mode != "check" else "check", "trixie", "contrib"],
                          capture_output=True, text=True, timeout=30)


def test_contrib_is_added_to_the_archives_entries_only(tmp_path):
    archive_components(tmp_path, "first")
    assert (tmp_path / "sources.list").read_text() == SOURCES_LIST.replace(
        "trixie main\n", "trixie main contrib\n").replace(
        "trixie-security main\n", "trixie-security main contrib\n")
    assert (tmp_path / "debian.sources").read_text() == DEBIAN_SOURCES.replace(
        "main non-free-firmware\n", "main non-free-firmware contrib\n")
    check = archive_components(tmp_path, "check")
    assert (check.returncode, check.stdout) == (0, "")  # nothing left to add


# -- the GPU inference proof's look at an instance ------------------------------------------

def test_gpu_proof_loads_its_model_on_an_idle_instance_then_shows_ps(tmp_path):
    proc = run_with_stubs(script_command("facts/gpu-proof.sh", "http://127.0.0.1:11434", 600,
                                         "5m", "tinyllama:latest"),
                          tmp_path, {"curl": CURL_OLLAMA})
    assert (proc.returncode, proc.stdout) == (0, '{"models":[{"name":"tinyllama:latest"}]}\n')
    assert '"model":"tinyllama:latest","keep_alive":"5m"' in \
        (tmp_path / "stub-bin" / "loads").read_text()


def test_gpu_proof_loads_nothing_where_a_model_is_loaded(tmp_path):
    (tmp_path / "stub-bin").mkdir(parents=True)
    (tmp_path / "stub-bin" / "loads").write_text('-d {"model":"qwen2.5:0.5b"} /api/generate\n')
    proc = run_with_stubs(script_command("facts/gpu-proof.sh", "http://127.0.0.1:11434", 600,
                                         "-1", "tinyllama:latest"),
                          tmp_path, {"curl": CURL_OLLAMA})
    assert proc.returncode == 0 and '"name":"qwen2.5:0.5b"' in proc.stdout
    assert "tinyllama" not in (tmp_path / "stub-bin" / "loads").read_text()


def test_gpu_proof_says_down_when_the_instance_does_not_answer(tmp_path):
    proc = run_with_stubs(script_command("facts/gpu-proof.sh", "http://127.0.0.1:11434", 600,
                                         "5m", "tinyllama:latest"),
                          tmp_path, {"curl": "exit 7\n"})
    assert (proc.returncode, proc.stdout) == (0, "__down__\n")

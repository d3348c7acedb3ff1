"""tasks.scripts: the shell of templates/<task>/<name>.sh run as one command whose arguments
are never spliced into a program; and the stack's scripts, run here against stand-ins."""

from __future__ import annotations

import re
import shlex

import pytest

from tasks.compose import reload_nginx_command, wait_healthy_command
from tasks.paths import TEMPLATES
from tasks.scripts import interpreter, script_command, script_text
from tests.unit.stubs import run_with_stubs

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

DOCKER_HEALTH = ('case "$*" in *ollama-1*) echo "${HEALTH_1:-healthy}";; *) echo healthy;; '
                 'esac\n')


def test_wait_healthy_is_done_when_every_container_is_healthy(tmp_path):
    proc = run_with_stubs(wait_healthy_command(["ollama-0", "ollama-1"], 30), tmp_path,
                          {"docker": DOCKER_HEALTH, "sleep": "exit 0\n"})
    assert (proc.returncode, proc.stderr) == (0, "")


def test_wait_healthy_names_the_containers_that_are_not_in_time(tmp_path):
    stubs = {"docker": "HEALTH_1=starting\n" + DOCKER_HEALTH,
             "sleep": 'echo slept >> "$0.log"\n'}
    proc = run_with_stubs(wait_healthy_command(["ollama-0", "ollama-1"], 7), tmp_path, stubs)
    assert proc.returncode == 1
    assert proc.stderr == "not healthy after 7s: ollama-1\n"
    assert (tmp_path / "stub-bin" / "sleep.log").read_text().count("slept") == 3  # 7 // 2
    proc = run_with_stubs(wait_healthy_command(["ollama-1"], 0), tmp_path, stubs)
    assert (proc.returncode, proc.stderr) == (1, "not healthy after 0s: ollama-1\n")


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

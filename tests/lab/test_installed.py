"""The built wheel, installed outside any checkout, does what the checkout does.

A new user's way in: the wheel is built from this checkout, installed into a fresh
virtualenv in a temporary folder (and, second, with `pip install --user`), and run from
another temporary folder that holds the operator's inventory and group_data, with
nothing of the checkout on any path. Against the converged lab of test_backup.py
(backup_lab): `check` (a bad knob: exit 2, named), `deploy`, `status`, a roll of the
canary, `backup` and `restore`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.labfleet import REPO, tracked_copy

pytestmark = pytest.mark.lab

MODEL = "qwen2.5:0.5b"  # only the operator's ./group_data names it for every host
NEW_IMAGE = "ollama/ollama:0.7.0"


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 900,
        ) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    source = tracked_copy(tmp_path_factory.mktemp("source") / "ollama-fleet")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                           str(out), str(source)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = out.glob("ollama_fleet-*.whl")
    return built


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """No checkout and no .venv on any path: a user's shell."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            **extra}


@pytest.fixture(scope="module")
def operator_folder(backup_lab, tmp_path_factory) -> Path:
    """The operator's own folder: the lab's inventory, and a group_data of its own whose
    model list only this folder gives (pyinfra reads ./group_data from where it runs)."""
    folder = tmp_path_factory.mktemp("operator")
    shutil.copy(backup_lab.inventory, folder / "fleet.py")
    (folder / "group_data").mkdir()
    for source in (REPO / "inventory" / "group_data").glob("*.py"):
        shutil.copy(source, folder / "group_data" / source.name)
    with open(folder / "group_data" / "all.py", "a") as f:
        f.write(f"\nollama_models = [{MODEL!r}]  # this folder's own choice\n")
    return folder


def install(wheel: Path, where: Path, user: bool) -> tuple[Path, dict[str, str]]:
    """The wheel installed into a fresh virtualenv at WHERE (or, USER, into a user base
    seen by a virtualenv that sees user site-packages); (the command, its environment)."""
    home = where / "home"
    home.mkdir(parents=True)
    venv = where / "venv"
    args = ["--system-site-packages"] if user else []
    subprocess.run(["/usr/bin/python3", "-m", "venv", *args, str(venv)], check=True,
                   timeout=300, capture_output=True)
    env = clean_env(home, PIP_DISABLE_PIP_VERSION_CHECK="1")
    if user:
        env["PYTHONUSERBASE"] = str(where / "userbase")
    proc = run([str(venv / "bin" / "pip"), "install", "-q", *(["--user"] if user else []),
                str(wheel)], cwd=where, env={**env, "PIP_CACHE_DIR": pip_cache()},
               timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    command = (where / "userbase" / "bin" / "ollama-fleet") if user \
        else venv / "bin" / "ollama-fleet"
    assert command.is_file()
    where_from = run([str(venv / "bin" / "python"), "-c", "import ollama_fleet; "
                      "print(ollama_fleet.__file__)"], cwd=where, env=env)
    package = Path(where_from.stdout.strip())
    assert package.is_relative_to(where / ("userbase" if user else "venv")), where_from
    assert not package.resolve().is_relative_to(REPO)
    return command, env


def pip_cache() -> str:
    """This machine's pip cache: a second install need not download the dependencies."""
    return os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip")


def tags(fleet, host: str) -> set[str]:
    _, out, _ = fleet.ssh(host, "curl -sS http://127.0.0.1:11434/api/tags")
    return {m["name"] for m in json.loads(out)["models"]}


def image(fleet, host: str) -> str:
    _, out, _ = fleet.ssh(host, "docker inspect -f '{{.Config.Image}}' ollama-0")
    return out.strip()


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The wheel in a fresh virtualenv: (its ollama-fleet, the environment to run it in)."""
    return install(wheel, tmp_path_factory.mktemp("install"), user=False)


def test_the_installed_wheel_checks_deploys_rolls_backs_up_and_restores(
        backup_lab, installed, operator_folder):
    fleet, folder = backup_lab, operator_folder
    command, env = installed
    cli = [str(command), "fleet.py"]

    proc = run([*cli, "check", "--data", "nginx_timeout=soon"], folder, env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("check: fleet.py: invalid inventory data, no host was "
                                  "changed: gpu-1: nginx_timeout: "), proc.stderr
    proc = run([*cli, "check"], folder, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("fleet.py: 2 hosts valid (2 gpu_servers)")

    proc = run([*cli, "deploy", "-y"], folder, env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert MODEL in tags(fleet, "gpu-1") and MODEL in tags(fleet, "gpu-2")  # ./group_data's

    proc = run([*cli, "status", "--json"], folder, env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    views = {v["host"]: v for v in json.loads(proc.stdout)}
    assert set(views) == {"gpu-1", "gpu-2"} and all(v["reachable"] for v in views.values())

    proc = run([*cli, "roll", "-y", "--limit", "gpu-1", "--data",
                f"ollama_image={NEW_IMAGE}"], folder, env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "canary: gpu-1" in proc.stderr
    assert image(fleet, "gpu-1") == NEW_IMAGE and image(fleet, "gpu-2") != NEW_IMAGE

    proc = run([*cli, "backup", "gpu-2", "--to", "backups"], folder, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tarball = Path(proc.stdout.strip().splitlines()[-1])
    assert tarball.is_relative_to(folder / "backups") and tarball.is_file()
    proc = run([*cli, "restore", "gpu-2", str(tarball), "-y"], folder, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("; nothing changed")  # the same store, restored


def test_a_user_install_finds_its_deploy_and_templates(backup_lab, wheel, operator_folder,
                                                        tmp_path):
    """`pip install --user`: 0.1 looked for the deploy under the user base's share/."""
    command, env = install(wheel, tmp_path / "user", user=True)
    cli = [str(command), "fleet.py"]
    proc = run([*cli, "check"], operator_folder, env)
    assert proc.returncode == 0, proc.stderr
    proc = run([*cli, "deploy", "-y", "--limit", "gpu-2"], operator_folder, env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    proc = run([*cli, "backup", "gpu-2", "--on-host"], operator_folder, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert MODEL in tags(backup_lab, "gpu-2")


def test_an_operators_own_deploy_composes_the_installed_steps(backup_lab, installed,
                                                              operator_folder):
    """The README's example of a deploy of one's own, run by the installed pyinfra from the
    operator's folder: the package's steps are importable and do their work there."""
    readme = (REPO / "README.md").read_text()
    example = readme.split("from ollama_fleet.tasks.kit.distributions import", 1)[1]
    example = "from ollama_fleet.tasks.kit.distributions import" + example.split("```", 1)[0]
    (operator_folder / "my_deploy.py").write_text(example)
    command, env = installed
    pyinfra = command.with_name("pyinfra")
    proc = run([str(pyinfra), "-y", "--limit", "gpu-2", "fleet.py", "my_deploy.py"],
               operator_folder, env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    _, out, _ = backup_lab.ssh("gpu-2", "systemctl is-active docker")
    assert out.strip() == "active"

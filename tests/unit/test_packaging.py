"""The installed product carries what the commands read at run time outside a checkout."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import paths, stack

REPO = Path(__file__).resolve().parents[2]


def test_in_a_checkout_the_files_are_the_checkouts():
    assert paths.project_root() == REPO
    assert stack.TEMPLATES == REPO / "templates" / "stack"


def test_the_wheel_carries_deploy_config_and_every_template():
    """pyproject's data-files name each templates/ directory (a `*` there takes files only)."""
    pyproject = (REPO / "pyproject.toml").read_text()
    data = dict(re.findall(r'^"(share/ollama-fleet[^"]*)" = \[(.*)\]$', pyproject, re.M))
    assert data.pop("share/ollama-fleet") == '"deploy.py", "config.py"'
    directories = sorted(p for p in (REPO / "templates").rglob("*") if p.is_dir())
    assert data == {f"share/ollama-fleet/{d.relative_to(REPO)}":
                    f'"{d.relative_to(REPO)}/*"' for d in directories}


@pytest.mark.install
def test_pip_install_gives_the_command_that_works_from_anywhere(tmp_path):
    """`pip install .` into a fresh virtualenv, then the command run from another directory
    (neither the checkout nor its .venv on any path): help, and a bad inventory's exit 2."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(REPO)],
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    command = str(venv / "bin" / "ollama-fleet")
    proc = subprocess.run([command, "--help"], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in ("roll", "status", "backup", "restore", "drain", "undrain"):
        assert f"    {name} " in proc.stdout, name
    share = venv / "share" / "ollama-fleet"
    assert (share / "deploy.py").is_file() and (share / "templates/stack/ollama.conf.j2").is_file()
    (elsewhere / "fleet.py").write_text("gpu_servers = [('gpu-1', {'gpu_count': 'two'})]\n")
    proc = subprocess.run([command, "fleet.py", "status"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "gpu-1: gpu_count: Input should be a valid integer" in proc.stderr


def test_the_readme_layout_names_every_module_and_template_directory():
    text = (REPO / "README.md").read_text()
    layout = text.split("## Layout", 1)[1].split("```", 2)[1]
    named = {line.split()[0] for line in layout.splitlines() if line.strip()
             and not line.startswith(" ")}
    modules = {p.relative_to(REPO).as_posix() for package in ("tasks", "fleetctl")
               for p in (REPO / package).glob("*.py") if p.name != "__init__.py"}
    directories = {f"{p.relative_to(REPO).as_posix()}/" for p in (REPO / "templates").iterdir()
                   if p.is_dir()}
    assert modules | directories <= named, sorted((modules | directories) - named)
    assert not {n for n in named if not (REPO / n.rstrip("/")).exists()}, "names gone from the tree"

"""The installed product carries what the commands read at run time outside a checkout."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import ollama_fleet
from ollama_fleet.tasks.kit import paths
from ollama_fleet.tasks.steps import stack
from tests.labfleet import tracked_copy

REPO = Path(__file__).resolve().parents[2]


def test_in_a_checkout_the_package_is_the_checkouts_files():
    """ollama_fleet/ links to the top-level rooms: one copy of the code, two ways in."""
    links = {p.name: p.resolve() for p in (REPO / "ollama_fleet").iterdir() if p.is_symlink()}
    assert links == {name: REPO / name for name in ("deploy.py", "config.py", "tasks",
                                                    "fleetctl", "templates")}
    assert paths.TEMPLATES.resolve() == REPO / "templates"
    assert stack.TEMPLATES.resolve() == REPO / "templates" / "stack"
    assert (paths.PACKAGE / "deploy.py").resolve() == REPO / "deploy.py"
    assert paths.CONFIG.resolve() == REPO / "config.py"


def test_the_wheel_names_every_package_of_the_tree():
    """pyproject lists the packages; a new room (a folder with __init__.py) must be in it."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    tree = {"ollama_fleet", *("ollama_fleet." + p.parent.relative_to(REPO).as_posix()
                              .replace("/", ".") for room in ("tasks", "fleetctl")
                              for p in (REPO / room).rglob("__init__.py"))}
    assert listed == tree
    assert pyproject["tool"]["setuptools"]["package-data"] == {"ollama_fleet": ["templates/**/*"]}


def test_no_module_imports_the_rooms_by_their_checkout_names():
    """Installed, only `ollama_fleet.` exists: `import tasks` would work in a checkout alone."""
    bare = re.compile(r"^\s*(from|import) (tasks|fleetctl)\b", re.M)
    offenders = [p.relative_to(REPO).as_posix()
                 for folder in ("tasks", "fleetctl", "lab", "tests", "bench")
                 for p in (REPO / folder).rglob("*.py") if bare.search(p.read_text())]
    offenders += [name for name in ("deploy.py", "config.py")
                  if bare.search((REPO / name).read_text())]
    assert offenders == []


@pytest.mark.install
def test_pip_install_gives_the_command_that_works_from_anywhere(tmp_path):
    """`pip install .` into a fresh virtualenv, then the command run from another directory
    (neither the checkout nor its .venv on any path): help, and a bad inventory's exit 2."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    source = tracked_copy(tmp_path / "source")  # no build/ left in the checkout goes in
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(source)],
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    command = str(venv / "bin" / "ollama-fleet")
    proc = subprocess.run([command, "--help"], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in ("roll", "status", "events", "backup", "restore", "drain", "undrain"):
        assert f"    {name} " in proc.stdout, name
    proc = subprocess.run([command, "--version"], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.strip() == f"ollama-fleet {ollama_fleet.__version__}", proc.stderr
    site = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import ollama_fleet, pathlib; "
                           "print(pathlib.Path(ollama_fleet.__file__).parent)"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    package = Path(site.stdout.strip())
    assert package.is_relative_to(venv), site.stderr  # the wheel's copy, not the checkout
    for name in ("deploy.py", "config.py", "tasks/deploys/pull.py", "tasks/deploys/backup.py",
                 "tasks/deploys/restore.py", "templates/stack/ollama.conf.j2",
                 "templates/front_door/fleet.js"):
        assert (package / name).is_file(), name
    templates = sorted(p.relative_to(REPO / "templates").as_posix()
                       for p in (REPO / "templates").rglob("*") if p.is_file())
    # (pip compiles every .py it installs, the health agent's too: its bytecode aside)
    assert sorted(p.relative_to(package / "templates").as_posix()
                  for p in (package / "templates").rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts) == templates
    # a folder with an invoke tasks.py, a fleetctl.py: names of the checkout, not the package's
    (elsewhere / "tasks.py").write_text("raise SystemExit('the wrong tasks')\n")
    (elsewhere / "fleetctl.py").write_text("raise SystemExit('the wrong fleetctl')\n")
    (elsewhere / "fleet.py").write_text("gpu_servers = [('gpu-1', {'gpu_count': 'two'})]\n")
    for cmd in ([command], [str(venv / "bin" / "python"), "-m", "ollama_fleet"]):
        proc = subprocess.run([*cmd, "fleet.py", "check"], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "gpu-1: gpu_count: Input should be a valid integer" in proc.stderr


def test_the_readme_layout_names_every_module_and_template_directory():
    """`## Layout` has a line for every module of the rooms (tasks/**, fleetctl/), every
    templates folder and the package folder, and names nothing that is gone."""
    text = (REPO / "README.md").read_text()
    layout = text.split("## Layout", 1)[1].split("```", 2)[1]
    named = {line.split()[0] for line in layout.splitlines() if line.strip()
             and not line.startswith(" ")}
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "tasks").rglob("*.py")
               if p.name != "__init__.py"}
    modules |= {p.relative_to(REPO).as_posix() for p in (REPO / "fleetctl").glob("*.py")
                if p.name != "__init__.py"}
    directories = {f"{p.relative_to(REPO).as_posix()}/" for p in (REPO / "templates").iterdir()
                   if p.is_dir()}
    required = modules | directories | {"ollama_fleet/"}
    assert any(m.startswith("tasks/steps/") for m in modules)  # the rooms are searched
    assert required <= named, sorted(required - named)
    assert not {n for n in named if not (REPO / n.rstrip("/")).exists()}, "names gone from the tree"

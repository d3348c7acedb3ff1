"""Shared fixtures. Lab tests deploy to real lab hosts; see lab/ and tests/labfleet.py."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager

import pytest

from lab.state import state_root
from tests.labfleet import LabFleet, lab_cli


@contextmanager
def running_lab(name: str, *args: str) -> Iterator[LabFleet]:
    """A lab started with `python -m lab up ARGS`, always taken down afterwards. Only one
    test process may use a lab at a time: a second one (two xdist workers given the same
    group's tests) stops here, named, instead of deploying to hosts the first one uses."""
    root = state_root()
    root.mkdir(parents=True, exist_ok=True)
    in_use = open(root / f"{name}.in-use", "w")  # noqa: SIM115 (held until the lab is down)
    try:
        fcntl.flock(in_use, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        in_use.close()
        raise RuntimeError(f"lab {name} is in use by another test process") from None
    fleet = None
    try:
        lab_cli("up", *args, name=name)
        fleet = LabFleet(name)
        fleet.refresh()
        yield fleet
    finally:
        if fleet:
            fleet.close()
        lab_cli("down", name=name, check=False)
        in_use.close()


# The shared labs, each taken down as soon as the last test of its group is done
# (pytest_runtest_teardown below), not when the worker's session ends: an idle lab's hosts
# (their health agents, the front door's polls) would slow every lab still working.
_SHARED_UP: dict[str, ExitStack] = {}
_SHARED_DOWN: set[str] = set()


def _shared(name: str, lab: AbstractContextManager[LabFleet]) -> LabFleet:
    if name in _SHARED_DOWN:
        raise RuntimeError(f"{name} was taken down after its group: its tests must run "
                           "together (tests/conftest.py orders them so)")
    stack = _SHARED_UP[name] = ExitStack()
    return stack.enter_context(lab)


def _shared_down(name: str) -> None:
    stack = _SHARED_UP.pop(name, None)
    if stack is not None:
        _SHARED_DOWN.add(name)
        stack.close()


@pytest.fixture(scope="session")
def core_lab():
    """One GPU host with 2 GPUs and one CPU host, shared by the lab's own tests."""
    yield _shared("core_lab", running_lab(
        "fleetlab-core", "--gpu-hosts", "1", "--gpus-per-host", "2", "--cpu-hosts", "1",
        "--registry-port", "5051", "--model-scale", "0.25"))
    _shared_down("core_lab")


@pytest.fixture(scope="session")
def deploy_lab():
    """Two GPU hosts with 2 GPUs and a CPU host, fresh at first: test_deploy.py runs first
    (dry run and bad inventories need fresh hosts), test_deploy_apps.py builds on it."""
    yield _shared("deploy_lab", running_lab(
        "fleetlab-deploy", "--gpu-hosts", "2", "--gpus-per-host", "2", "--cpu-hosts", "1",
        "--registry-port", "5053", "--model-scale", "0.25"))
    _shared_down("deploy_lab")


BACKUP_MODELS = ["tinyllama", "qwen2.5:0.5b"]


@pytest.fixture(scope="session")
def backup_lab():
    """Two GPU hosts with 1 GPU, converged: gpu-1 with BACKUP_MODELS, gpu-2 with none.
    test_backup.py uses it first (it needs gpu-2 empty), then test_installed.py deploys
    to it again from the installed wheel: one converge shared by both."""
    lab = _shared("backup_lab", running_lab(
        "fleetlab-backup", "--gpu-hosts", "2", "--gpus-per-host", "1",
        "--registry-port", "5058", "--model-scale", "0.25"))
    try:
        with ThreadPoolExecutor(2) as pool:
            runs = [pool.submit(lab.pyinfra, "deploy.py", "--data",
                                f"ollama_models={json.dumps(BACKUP_MODELS)}", limit="gpu-1"),
                    pool.submit(lab.pyinfra, "deploy.py", "--data", "ollama_models=[]",
                                limit="gpu-2")]
            for run in runs:
                proc = run.result()
                assert proc.returncode == 0, proc.output[-4000:]
        yield lab
    finally:
        _shared_down("backup_lab")


SHARED_LABS = ("core_lab", "deploy_lab", "backup_lab")
# Seconds each group took in one serial run on the 2-core machine (December 2026): the
# longest start first, so that the workers end together (xdist hands out groups in this
# order with --no-loadscope-reorder; by default it would sort them by their test count).
GROUP_SECONDS = {
    "deploy_lab": 700, "tests.lab.test_health": 650, "tests.lab.test_rolling": 620,
    "tests.lab.test_benches": 400, "tests.lab.test_deploy_faults": 360,
    "backup_lab": 330, "tests.lab.test_models": 300, "tests.lab.test_gate": 200,
    "tests.lab.test_prod_shape": 190, "core_lab": 180, "tests.lab.test_driver_debian12": 120,
    "tests.lab.test_between_deploys": 330, "tests.lab.test_updates_between_deploys": 150,
    "tests.lab.test_secure_boot": 120,
    "tests.lab.test_lab_lifecycle": 80, "tests.lab.test_app_images": 70,
    "tests.lab.test_ollama_standin": 60, "tests.lab.test_modelregistry": 30,
}


def lab_group(item: pytest.Item) -> str | None:
    """The xdist group of a lab test (None for a unit test): its shared lab, else its
    module, whose lab is module-scoped."""
    if item.get_closest_marker("lab") is None:
        return None
    shared = [name for name in SHARED_LABS if name in item.fixturenames]
    return shared[0] if shared else item.module.__name__


def pytest_configure(config):
    if config.getoption("dist", "no") == "loadgroup" and int(pytest.__version__.split(".")[0]) >= 9:
        raise pytest.UsageError("pytest-xdist 3.8 cannot keep --dist loadgroup groups "
                                "together on pytest 9: every lab would be shared by both "
                                "workers (pyproject pins pytest<9)")


_GROUP_TIME: dict[str, float] = {}


def pytest_runtest_logreport(report):
    """Each lab group's time (setup, call and teardown of its tests, run one after another
    in one worker), summed where the reports arrive: for GROUP_SECONDS."""
    if "@" in report.nodeid and "lab" in report.keywords:
        group = report.nodeid.rsplit("@", 1)[1]
        _GROUP_TIME[group] = _GROUP_TIME.get(group, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if _GROUP_TIME:
        terminalreporter.write_sep("=", "seconds each lab group took (GROUP_SECONDS)")
        for group, seconds in sorted(_GROUP_TIME.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"{seconds:7.0f}  {group}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After the last test of a shared lab's group (its tests run one after another, in one
    worker: the order above), that lab is taken down at once."""
    result = yield
    group = lab_group(item)
    if group in SHARED_LABS and (nextitem is None or lab_group(nextitem) != group):
        _shared_down(group)
    return result


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the groups into node ids
def pytest_collection_modifyitems(config, items):
    """With pytest-xdist (`-n 3 --dist loadgroup`, as `make test` runs the lab tests): every
    test of a lab runs in the worker that started that lab, and the longest labs start
    first. A shared lab's modules are one group (the lab is set up once, in one worker);
    every other lab module is a group of its own. Within a group, file order is kept."""
    groups = {id(item): lab_group(item) for item in items}
    for item in items:
        if groups[id(item)] is not None:
            item.add_marker(pytest.mark.xdist_group(groups[id(item)]))
    position = {id(item): n for n, item in enumerate(items)}
    items.sort(key=lambda item: (groups[id(item)] is None,
                                 -GROUP_SECONDS.get(groups[id(item)] or "", 0),
                                 groups[id(item)] or "", position[id(item)]))

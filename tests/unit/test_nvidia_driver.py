"""The driver step's order of work on one host: what it asks pyinfra to do, and how its
reboot is gated (facts in; the operations recorded, not run)."""

from __future__ import annotations

import pytest
from pyinfra.context import ctx_host

from ollama_fleet.tasks.kit.distributions import DEBIAN_13
from ollama_fleet.tasks.kit.settings import Settings
from ollama_fleet.tasks.steps import nvidia_driver
from tests.unit.ophelper import FakeHost

H100_HGX = [{"slot": "0000:18:00.0", "device": 0x2330, "class": 0x030200},
            {"slot": "0000:05:00.0", "device": 0x22A3, "class": 0x068000}]
PACKAGES = ("linux-headers-6.12.48+deb13-amd64", "nvidia-driver-pinning-590",
            "nvidia-driver-cuda", "nvidia-kernel-open-dkms", "nvidia-persistenced",
            "nvidia-fabricmanager")


def smi(version: str | None) -> dict:
    if version is None:
        return {"installed": True, "working": False, "rc": 9, "gpus": [], "error": "no driver"}
    return {"installed": True, "working": True, "rc": 0, "error": "",
            "gpus": [{"index": 0, "uuid": "GPU-1", "name": "NVIDIA H100 80GB HBM3",
                      "memory_total_mib": 81559, "driver_version": version,
                      "persistence_mode": True}]}


class Recorder:
    """Stands for the operations the step calls: records (name, kwargs)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def op(self, name: str, changed: bool = False):
        def call(**kwargs):
            self.calls.append((name, kwargs))
            return _Done(changed)
        return call


class _Done:
    def __init__(self, changed: bool) -> None:
        self.changed = changed

    def did_change(self) -> bool:
        return self.changed


def run_step(monkeypatch, gpus: dict, installed: tuple[str, ...], settings: Settings,
             install_changes: bool = True) -> Recorder:
    rec = Recorder()
    for target, name in ((nvidia_driver.files, "put"), (nvidia_driver.server, "reboot"),
                         (nvidia_driver.systemd, "service"),
                         (nvidia_driver.apt_packages, "repository"),
                         (nvidia_driver.apt_packages, "installed"),
                         (nvidia_driver.apt_packages, "archive_components")):
        monkeypatch.setattr(target, name, rec.op(name))
    for name in ("held", "verify_driver", "fabricmanager_started", "fabricmanager_follows_driver",
                 "persistence_mode_kept", "verify_persistence", "secret_file"):
        monkeypatch.setattr(nvidia_driver, name, rec.op(name))
    monkeypatch.setattr(nvidia_driver, "driver", rec.op("driver", changed=install_changes))
    facts = {"ollama_fleet.tasks.kit.facts.NvidiaHost": {
        "kernel": "6.12.48+deb13-amd64", "devices": H100_HGX, "held": []},
             "ollama_fleet.tasks.kit.facts.NvidiaGpus": gpus,
             "deb.DebPackages": {p: ["590.44.01-1"] for p in installed}}
    with ctx_host.use(FakeHost(facts=facts)):
        nvidia_driver.install_driver(settings, DEBIAN_13)
    return rec


def reboots(rec: Recorder) -> list[dict]:
    return [kwargs for name, kwargs in rec.calls if name == "reboot"]


SETTINGS = Settings(gpu_count=1, nvidia_driver_branch=590)


def test_a_fresh_host_reboots_with_the_others_and_only_if_the_install_changed(monkeypatch):
    rec = run_step(monkeypatch, smi(None), (), SETTINGS)
    (reboot,) = reboots(rec)
    assert "_serial" not in reboot and reboot["reboot_timeout"] == 1200
    assert reboot["_if"]() is True
    rec = run_step(monkeypatch, smi(None), (), SETTINGS, install_changes=False)
    assert reboots(rec)[0]["_if"]() is False


def test_a_serving_host_changing_branch_reboots_one_at_a_time(monkeypatch):
    rec = run_step(monkeypatch, smi("580.95.05"), (), SETTINGS)
    (reboot,) = reboots(rec)
    assert reboot["_serial"] is True
    all_at_once = Settings(gpu_count=1, nvidia_driver_branch=590,
                           nvidia_driver_reboot_all_at_once=True)
    assert "_serial" not in reboots(run_step(monkeypatch, smi("580.95.05"), (), all_at_once))[0]


def test_installed_but_not_loaded_reboots_without_installing(monkeypatch):
    rec = run_step(monkeypatch, smi(None), PACKAGES, SETTINGS, install_changes=False)
    assert reboots(rec)[0]["_if"]() is True


def test_a_working_driver_gets_what_it_lacks_without_a_reboot(monkeypatch):
    """Fabric Manager for a board that needs it since, or nvidia-persistenced: no reboot."""
    rec = run_step(monkeypatch, smi("590.44.01"), PACKAGES[:-1], SETTINGS)
    names = [name for name, _ in rec.calls]
    assert "reboot" not in names and "driver" not in names
    assert dict(rec.calls)["installed"]["packages"] == list(PACKAGES)


def test_no_reboot_allowed_means_no_reboot_step(monkeypatch):
    settings = Settings(gpu_count=1, nvidia_driver_branch=590, nvidia_driver_allow_reboot=False)
    assert reboots(run_step(monkeypatch, smi(None), (), settings)) == []


def test_the_order_of_work(monkeypatch):
    rec = run_step(monkeypatch, smi(None), (), SETTINGS)
    assert [name for name, _ in rec.calls] == [
        "put", "archive_components", "repository", "put", "driver",
        "fabricmanager_follows_driver",
        "reboot", "held", "verify_driver", "fabricmanager_started", "persistence_mode_kept",
        "service", "verify_persistence"]
    # the pin keeps the branch (and lets its own updates through, Fabric Manager's with the
    # driver's): only the pin is held; Fabric Manager follows the driver's version
    assert dict(rec.calls)["held"]["packages"] == ["nvidia-driver-pinning-590"]
    assert "nvidia-fabricmanager" in dict(rec.calls)["held"]["released"]
    # and our own apt preferences keep it on the branch, whatever NVIDIA's pin names
    preferences = [args for name, args in rec.calls if name == "put"][1]
    assert preferences["dest"] == "/etc/apt/preferences.d/ollama-fleet-nvidia-branch"
    assert "Package: nvidia-fabricmanager\nPin: version 590.*\n" in \
        preferences["src"].getvalue()
    assert dict(rec.calls)["fabricmanager_follows_driver"] == {
        "name": "Fabric Manager at the driver's version", "fabricmanager": "nvidia-fabricmanager",
        "driver": "nvidia-driver-cuda"}


@pytest.mark.parametrize("knob", ["never"])
def test_fabric_manager_can_be_turned_off(monkeypatch, knob):
    settings = Settings(gpu_count=1, nvidia_driver_branch=590, nvidia_fabricmanager=knob)
    rec = run_step(monkeypatch, smi(None), (), settings)
    assert "fabricmanager_started" not in [name for name, _ in rec.calls]

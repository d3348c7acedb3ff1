"""The lab's simulated GPU hardware (lab/nvidia/hardware.py): the gpus.json document of a
host (GPUs, board, NVSwitches) and the sysfs PCI tree lab hosts show. No Docker needed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lab.nvidia.hardware import (
    MODELS,
    board_doc,
    gpus_json,
    pci_tree,
    simulated_gpus,
    sysfs_slot,
)

REPO = Path(__file__).resolve().parents[2]
SLOT_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


def test_models_carry_their_pci_id_and_board():
    assert {k: (m["pci_device_id"], m["board"]) for k, m in MODELS.items()} == {
        "H100": (0x2330, "hgx"), "A100": (0x20B2, "hgx"), "L40S": (0x26B9, "pcie"),
        "B200": (0x2901, "hgx"), "B100": (0x2920, "hgx"), "B300": (0x3182, "hgx")}
    assert MODELS["B200"]["name"] == "NVIDIA B200"
    assert MODELS["B200"]["memory_total_mib"] == 183359
    assert MODELS["B300"]["name"] == "NVIDIA B300 SXM6 AC"


def test_models_carry_their_compute_capability_into_gpus_json():
    """What `nvidia-smi --query-gpu=compute_cap` answers (CUDA's compute capability)."""
    assert {k: m["compute_cap"] for k, m in MODELS.items()} == {
        "H100": "9.0", "A100": "8.0", "L40S": "8.9", "B200": "10.0", "B100": "10.0",
        "B300": "10.3"}
    assert {k: m["nvlink"] for k, m in MODELS.items() if m["nvlink"] == 5} == {
        "B200": 5, "B100": 5, "B300": 5}
    for key in MODELS:
        assert {g["compute_cap"] for g in simulated_gpus("g", 2, key)} == {
            MODELS[key]["compute_cap"]}


def test_simulated_gpus_say_their_device_id_as_sysfs_does():
    gpus = simulated_gpus("gpu-1", 2, "A100")
    assert [g["pci_device_id"] for g in gpus] == ["0x20b2", "0x20b2"]
    assert simulated_gpus("g", 1)[0]["pci_device_id"] == "0x2330"
    (b200,) = simulated_gpus("g", 1, "NVIDIA B200")
    assert (b200["name"], b200["memory_total_mib"], b200["pci_device_id"]) == (
        "NVIDIA B200", 183359, "0x2901")


@pytest.mark.parametrize("model, board, switches", [
    ("H100", "hgx", ["0x22a3"] * 4),
    ("A100", "hgx", ["0x1af1"] * 6),
    ("B200", "hgx", []),  # HGX B200's NVSwitches are not PCI devices of the host
    ("B100", "hgx", []),
    ("B300", "hgx", []),
    ("L40S", "pcie", []),
])
def test_board_doc(model, board, switches):
    doc = board_doc("gpu-1", 8, model)
    assert set(doc) == {"gpus", "board", "nvswitches"}
    assert doc["gpus"] == simulated_gpus("gpu-1", 8, model)
    assert doc["board"] == board
    assert [s["device"] for s in doc["nvswitches"]] == switches
    slots = [s["slot"] for s in doc["nvswitches"]]
    assert all(SLOT_RE.match(s) for s in slots)
    gpu_slots = {sysfs_slot(g["pci_bus_id"]) for g in doc["gpus"]}
    assert len(set(slots)) == len(slots) and gpu_slots.isdisjoint(slots)
    assert json.loads(gpus_json("gpu-1", 8, model)) == doc
    assert gpus_json("gpu-1", 8, model).endswith("}\n")


def test_board_doc_never_collides_and_a_host_without_gpus_has_no_switches():
    for count in (1, 2, 8, 16, 40):
        doc = board_doc("gpu-9", count, "A100")
        slots = [s["slot"] for s in doc["nvswitches"]]
        slots += [sysfs_slot(g["pci_bus_id"]) for g in doc["gpus"]]
        assert len(slots) == len(set(slots)) == count + 6
    empty = board_doc("cpu-1", 0)
    assert (empty["gpus"], empty["nvswitches"]) == ([], [])
    assert board_doc("gpu-1", 2, "H100")["nvswitches"][0] == {"slot": "0000:05:00.0",
                                                              "device": "0x22a3"}
    with pytest.raises(ValueError):
        board_doc("h", 1, "RTX 9999")


def test_sysfs_slot():
    assert sysfs_slot("00000000:18:00.0") == "0000:18:00.0"
    assert sysfs_slot("00000000:2A:00.0") == "0000:2a:00.0"
    with pytest.raises(ValueError):
        sysfs_slot("18")


def _nvidia(tree: dict[str, str]) -> dict[str, tuple[str, str]]:
    slots = {path.split("/")[0] for path in tree}
    return {s: (tree[f"{s}/device"], tree[f"{s}/class"]) for s in slots
            if tree[f"{s}/vendor"] == "0x10de\n"}


def test_pci_tree_of_an_hgx_h100():
    doc = board_doc("gpu-1", 8, "H100")
    tree = pci_tree(doc)
    assert all(re.match(r"^[0-9a-f:.]+/(vendor|device|class)$", p) for p in tree)
    assert all(SLOT_RE.match(p.split("/")[0]) for p in tree)
    nvidia = _nvidia(tree)
    gpus = {s: v for s, v in nvidia.items() if v[1] == "0x030200\n"}
    switches = {s: v for s, v in nvidia.items() if v[1] == "0x068000\n"}
    assert len(nvidia) == 12
    assert sorted(gpus) == sorted(sysfs_slot(g["pci_bus_id"]) for g in doc["gpus"])
    assert set(gpus.values()) == {("0x2330\n", "0x030200\n")}
    assert sorted(switches) == [s["slot"] for s in doc["nvswitches"]]
    assert set(switches.values()) == {("0x22a3\n", "0x068000\n")}
    assert tree["0000:18:00.0/vendor"] == "0x10de\n"
    assert tree["0000:18:00.0/device"] == "0x2330\n"
    assert tree["0000:18:00.0/class"] == "0x030200\n"
    assert tree["0000:2a:00.0/device"] == "0x2330\n"  # lower-case hex, as sysfs writes it
    # and a device that is not NVIDIA's, which a reader must skip
    assert tree["0000:00:00.0/vendor"] != "0x10de\n"


@pytest.mark.parametrize("model, device, switches", [
    ("A100", "0x20b2\n", 6), ("B200", "0x2901\n", 0), ("B100", "0x2920\n", 0),
    ("B300", "0x3182\n", 0), ("L40S", "0x26b9\n", 0)])
def test_pci_tree_of_other_boards(model, device, switches):
    nvidia = _nvidia(pci_tree(board_doc("gpu-1", 2, model)))
    assert sorted(v for v in nvidia.values() if v[1] == "0x030200\n") == [
        (device, "0x030200\n")] * 2
    assert len([v for v in nvidia.values() if v[1] == "0x068000\n"]) == switches


def test_pci_tree_of_an_old_document_and_of_a_cpu_host():
    old = {"gpus": [{k: v for k, v in g.items() if k != "pci_device_id"}
                    for g in simulated_gpus("gpu-1", 2, "L40S")]}
    assert set(_nvidia(pci_tree(old)).values()) == {("0x26b9\n", "0x030200\n")}
    assert _nvidia(pci_tree(board_doc("cpu-1", 0))) == {}
    assert _nvidia(pci_tree({"gpus": []})) == {}


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs sh")
@pytest.mark.parametrize("model, needs, nvlsm", [
    ("H100", True, False), ("A100", True, False), ("B200", True, True), ("B100", True, True),
    ("B300", True, True), ("L40S", False, False)])
def test_the_deploy_reads_the_tree_as_the_hook_reads_the_document(tmp_path, model, needs,
                                                                   nvlsm):
    """The tree, written out, read by the deploy's own fact script and parser, tells the
    same board apart as the NVIDIA stand-ins do from gpus.json: an NVSwitch board, and an
    NVLink 5 one whose Fabric Manager needs NVLSM."""
    script = REPO / "templates/facts/nvidia-host.sh"
    facts = pytest.importorskip("ollama_fleet.tasks.kit.facts")
    driver = pytest.importorskip("ollama_fleet.tasks.steps.nvidia_driver")
    if not script.exists() or not hasattr(facts, "parse_nvidia_host"):
        pytest.skip("the deploy's nvidia-host fact is not there")
    doc = board_doc("gpu-1", 4, model)
    for path, text in pci_tree(doc).items():
        (tmp_path / "devices" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "devices" / path).write_text(text)
    copy = tmp_path / "nvidia-host.sh"
    copy.write_text(script.read_text().replace("/sys/bus/pci/devices",
                                               str(tmp_path / "devices")))
    out = subprocess.run(["sh", str(copy)], capture_output=True, text=True, check=True,
                         timeout=30).stdout
    found = facts.parse_nvidia_host(out.splitlines())
    assert len(found["devices"]) == 4 + len(doc["nvswitches"])
    assert driver.needs_fabricmanager(found["devices"]) is needs
    assert driver.needs_nvlsm(found["devices"]) is nvlsm
    common = _standins_common()
    board = {"gpus": doc["gpus"], "board": doc["board"], "nvswitches": doc["nvswitches"]}
    assert common.board_needs_fabricmanager(board) is needs
    assert common.board_needs_nvlsm(board) is nvlsm


def _standins_common():
    import importlib.util
    path = REPO / "lab/nvidia/standins/fleetlab_common.py"
    spec = importlib.util.spec_from_file_location("fleetlab_common_for_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

"""Simulated GPU hardware for lab hosts.

The lab writes :func:`gpus_json` (the document :func:`board_doc` makes) as
``/etc/fleetlab/gpus.json`` on every GPU host; the NVIDIA stand-ins read it::

    {"gpus": [{"index", "uuid", "name", "memory_total_mib", "pci_bus_id",
               "pci_device_id", "compute_cap", "serial"}, ...],
     "board": "hgx" | "pcie",
     "nvswitches": [{"slot": "0000:05:00.0", "device": "0x22a3"}, ...]}

:func:`pci_tree` is the same hardware as sysfs shows it under /sys/bus/pci/devices
(vendor, device and class of every NVIDIA function, plus the host bridge), which is
what a deploy reads of a fresh server to tell an NVSwitch (HGX) board from a PCIe one.

Nothing here is real hardware: names, memory sizes and PCI ids are those the real
data-centre cards report (NVIDIA's supportedchips tables, pci.ids, the Fabric Manager
user guide). NVSwitch boards: HGX A100 has six NVSwitch chips (0x1af1), HGX H100/H200
four (0x22a3), all PCI bridges (class 0x0680) on the host; HGX B100/B200/B300's NVSwitches
are not PCI devices on the host at all (their SXM GPUs say the board is one, and an NVLink 5
one: Fabric Manager needs NVLSM there). The lab
models every H100/A100 host as an (8-GPU) HGX board whatever its GPU count: real
4-GPU HGX boards have no NVSwitch.
"""

from __future__ import annotations

import hashlib
import json

NVIDIA_VENDOR = 0x10DE
GPU_CLASS = 0x030200  # display controller, 3D controller
NVSWITCH_CLASS = 0x068000  # bridge, other bridge

# Model key -> what nvidia-smi and sysfs report for the card, the board it sits on, its
# compute capability (nvidia-smi --query-gpu=compute_cap) and its NVLink generation.
# Device ids as pci.ids names them: 2330 GH100 [H100 SXM5 80GB], 20b2 GA100 [A100 SXM4
# 80GB], 26b9 AD102GL [L40S], 2901 GB100 [B200], 2920 GB100 [TS4 / B100], 29bc GB102
# [B100], 3182 (B300 SXM6 AC). NVLink 5 (HGX B100/B200/B300) boards need NVLSM with
# Fabric Manager.
MODELS: dict[str, dict] = {
    "H100": {"name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559,
             "pci_device_id": 0x2330, "board": "hgx", "compute_cap": "9.0", "nvlink": 4},
    "A100": {"name": "NVIDIA A100-SXM4-80GB", "memory_total_mib": 81920,
             "pci_device_id": 0x20B2, "board": "hgx", "compute_cap": "8.0", "nvlink": 3},
    "L40S": {"name": "NVIDIA L40S", "memory_total_mib": 46068,
             "pci_device_id": 0x26B9, "board": "pcie", "compute_cap": "8.9", "nvlink": 0},
    "B200": {"name": "NVIDIA B200", "memory_total_mib": 183359,
             "pci_device_id": 0x2901, "board": "hgx", "compute_cap": "10.0", "nvlink": 5},
    "B100": {"name": "NVIDIA B100", "memory_total_mib": 183359,
             "pci_device_id": 0x2920, "board": "hgx", "compute_cap": "10.0", "nvlink": 5},
    "B300": {"name": "NVIDIA B300 SXM6 AC", "memory_total_mib": 275040,
             "pci_device_id": 0x3182, "board": "hgx", "compute_cap": "10.3", "nvlink": 5},
}

# Model key -> (NVSwitch PCI device id, how many) on its HGX board, where they are PCI
# devices of the host. B100/B200/B300: none on PCI; L40S: a PCIe card, no NVSwitch.
NVSWITCHES: dict[str, tuple[int, int]] = {
    "H100": (0x22A3, 4),  # GH100 [H100 NVSwitch]
    "A100": (0x1AF1, 6),  # GA100 [A100 NVSwitch]
}

# PCI bus ids of the eight GPUs of a typical HGX board, in nvidia-smi order.
_HGX_BUSES = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)
# First bus of the NVSwitch bridges (below every GPU's bus).
_NVSWITCH_FIRST_BUS = 0x05
# The host bridge every PC has: not NVIDIA's, so whoever reads sysfs must filter.
_HOST_BRIDGE = ("0000:00:00.0", 0x1022, 0x1480, 0x060000)  # AMD EPYC root complex


def _model_key(model: str) -> str:
    wanted = model.strip().upper()
    for key, info in MODELS.items():
        if wanted == key or wanted == info["name"].upper():
            return key
    for key in MODELS:
        if key in wanted:
            return key
    raise ValueError(f"unknown GPU model {model!r}; known: {', '.join(MODELS)}")


def _bus_id(index: int) -> str:
    if index < len(_HGX_BUSES):
        bus = _HGX_BUSES[index]
    else:
        bus = 0xDB + index - len(_HGX_BUSES) + 1
    if bus > 0xFF:
        raise ValueError("too many simulated GPUs for one PCI domain")
    return f"00000000:{bus:02X}:00.0"


def sysfs_slot(pci_bus_id: str) -> str:
    """nvidia-smi's bus id (``00000000:18:00.0``) as sysfs names it (``0000:18:00.0``)."""
    domain, _, rest = pci_bus_id.strip().partition(":")
    if not rest:
        raise ValueError(f"not a PCI bus id: {pci_bus_id!r}")
    return f"{int(domain, 16):04x}:{rest.lower()}"


def gpu_uuid(host_name: str, index: int) -> str:
    """Stable GPU UUID (``GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx``) for a host's GPU."""
    h = hashlib.sha256(f"fleetlab-gpu:{host_name}:{index}".encode()).hexdigest()
    return f"GPU-{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def simulated_gpus(host_name: str, count: int, model: str = "H100") -> list[dict]:
    """The GPUs of a simulated host: stable UUIDs and serials, real names, memory, PCI ids."""
    if count < 0:
        raise ValueError("count must be >= 0")
    info = MODELS[_model_key(model)]
    gpus = []
    for index in range(count):
        digest = hashlib.sha256(f"fleetlab-serial:{host_name}:{index}".encode()).digest()
        serial = "1650" + f"{int.from_bytes(digest[:8], 'big') % 10**9:09d}"
        gpus.append({
            "index": index,
            "uuid": gpu_uuid(host_name, index),
            "name": info["name"],
            "memory_total_mib": info["memory_total_mib"],
            "pci_bus_id": _bus_id(index),
            "pci_device_id": f"0x{info['pci_device_id']:04x}",
            "compute_cap": info["compute_cap"],
            "serial": serial,
        })
    return gpus


def board_doc(host_name: str, count: int, model: str = "H100") -> dict:
    """The whole ``/etc/fleetlab/gpus.json`` document of a host: its GPUs, the board they
    sit on (``hgx`` for SXM parts, ``pcie``) and the board's NVSwitch chips as the host's
    PCI bus sees them (none for HGX B200, whose NVSwitches are not on the host's PCI bus,
    none for PCIe cards, none on a host without GPUs)."""
    key = _model_key(model)
    gpus = simulated_gpus(host_name, count, key)
    nvswitches = []
    if count > 0 and key in NVSWITCHES:
        device, how_many = NVSWITCHES[key]
        gpu_buses = {int(g["pci_bus_id"].split(":")[1], 16) for g in gpus}
        bus = _NVSWITCH_FIRST_BUS
        while len(nvswitches) < how_many:
            if bus in gpu_buses:  # never with the buses above; kept safe all the same
                bus += 1
                continue
            nvswitches.append({"slot": f"0000:{bus:02x}:00.0", "device": f"0x{device:04x}"})
            bus += 1
    return {"gpus": gpus, "board": MODELS[key]["board"], "nvswitches": nvswitches}


def gpus_json(host_name: str, count: int, model: str = "H100") -> str:
    """The text of ``/etc/fleetlab/gpus.json`` for a host (:func:`board_doc`)."""
    return json.dumps(board_doc(host_name, count, model), indent=2) + "\n"


def _hex_id(value) -> int:
    return value if isinstance(value, int) else int(str(value), 16)


def pci_tree(doc: dict) -> dict[str, str]:
    """What /sys/bus/pci/devices shows of a host described by ``doc`` (a :func:`board_doc`
    document; an old ``{"gpus": [...]}`` one works too): relative path -> file content,
    ``<slot>/vendor`` (``0x10de``), ``<slot>/device`` and ``<slot>/class`` (``0x030200``
    for a GPU, ``0x068000`` for an NVSwitch bridge) for every NVIDIA function, and the
    same three files for the host bridge, which is not NVIDIA's. Slots are sysfs's
    (``0000:18:00.0``), lower-case hex as the kernel writes them."""
    functions: list[tuple[str, int, int, int]] = [_HOST_BRIDGE]
    for gpu in doc.get("gpus") or []:
        device = gpu.get("pci_device_id")
        if device is None:
            device = MODELS[_model_key(gpu["name"])]["pci_device_id"]
        functions.append((sysfs_slot(gpu["pci_bus_id"]), NVIDIA_VENDOR, _hex_id(device),
                          GPU_CLASS))
    for switch in doc.get("nvswitches") or []:
        functions.append((switch["slot"].lower(), NVIDIA_VENDOR, _hex_id(switch["device"]),
                          NVSWITCH_CLASS))
    tree: dict[str, str] = {}
    for slot, vendor, device, klass in functions:
        if f"{slot}/vendor" in tree:
            raise ValueError(f"two PCI functions in slot {slot}")
        tree[f"{slot}/vendor"] = f"0x{vendor:04x}\n"
        tree[f"{slot}/device"] = f"0x{device:04x}\n"
        tree[f"{slot}/class"] = f"0x{klass:06x}\n"
    return tree

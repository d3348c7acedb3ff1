"""Simulated GPU hardware for lab hosts.

The lab writes the result of :func:`simulated_gpus` as ``/etc/fleetlab/gpus.json``
(``{"gpus": [...]}``) on every GPU host; the NVIDIA stand-ins read it. Nothing here
is real hardware: names and memory sizes are those real data-centre cards report.
"""

from __future__ import annotations

import hashlib
import json

# Model key -> what nvidia-smi reports for the card.
MODELS: dict[str, dict] = {
    "H100": {"name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559},
    "A100": {"name": "NVIDIA A100-SXM4-80GB", "memory_total_mib": 81920},
    "L40S": {"name": "NVIDIA L40S", "memory_total_mib": 46068},
}

# PCI bus ids of the eight GPUs of a typical HGX board, in nvidia-smi order.
_HGX_BUSES = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)


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


def gpu_uuid(host_name: str, index: int) -> str:
    """Stable GPU UUID (``GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx``) for a host's GPU."""
    h = hashlib.sha256(f"fleetlab-gpu:{host_name}:{index}".encode()).hexdigest()
    return f"GPU-{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def simulated_gpus(host_name: str, count: int, model: str = "H100") -> list[dict]:
    """The GPUs of a simulated host: stable UUIDs and serials, real names and memory."""
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
            "serial": serial,
        })
    return gpus


def gpus_json(host_name: str, count: int, model: str = "H100") -> str:
    """The text of ``/etc/fleetlab/gpus.json`` for a host."""
    return json.dumps({"gpus": simulated_gpus(host_name, count, model)}, indent=2) + "\n"

"""A lab's state on this machine and the addresses of its services: what `lab.fleet`
(which makes the lab), `lab.dns` and `lab.inventory` (which write its files) share.

It imports no other lab module, so each of them can import it: none of them imports
another one back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REGISTRY_PORT = 5000  # inside the services container
APT_PORT = 8080
MODEL_REGISTRY_PORT = 8081


def state_root() -> Path:
    return Path(os.environ.get("FLEETLAB_STATE_DIR", REPO / ".lab"))


class LabState:
    """One named lab's state directory: its state file and SSH key (`lab.fleet.Lab` is
    the lab itself: network, services container and hosts)."""

    def __init__(self, name: str = "fleetlab", log=print) -> None:
        self.name = name
        self.log = log
        self.dir = state_root() / name
        self.state_file = self.dir / "state.json"

    # -- state -----------------------------------------------------------
    def load(self) -> dict | None:
        if not self.state_file.exists():
            return None
        return json.loads(self.state_file.read_text())

    def save(self, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_file)

    @property
    def key_path(self) -> Path:
        return self.dir / "id_ed25519"


def endpoints(services_ip: str, registry_port: int) -> dict:
    apt = f"http://{services_ip}:{APT_PORT}"
    return {
        "image_registry": {"mirror": f"http://{services_ip}:{REGISTRY_PORT}",
                           "push": f"127.0.0.1:{registry_port}"},
        "model_registry": f"http://{services_ip}:{MODEL_REGISTRY_PORT}",
        "apt_repository": {
            "base": apt,
            "nvidia_container_toolkit": f"{apt}/libnvidia-container",
            "nvidia_container_toolkit_gpgkey": f"{apt}/libnvidia-container/gpgkey",
            # `{distro}` as in NVIDIA's own URL: debian12 and debian13, each with its key
            "cuda": f"{apt}/compute/cuda/repos/{{distro}}/x86_64",
        },
    }

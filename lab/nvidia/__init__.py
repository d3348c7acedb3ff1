"""Lab stand-ins for NVIDIA's driver and container toolkit, and their apt repositories.

- :mod:`lab.nvidia.hardware`: simulated GPUs (``simulated_gpus``) for /etc/fleetlab/gpus.json
- :mod:`lab.nvidia.standins`: the stand-in programs (nvidia-smi, nvidia-ctk, ...)
- :mod:`lab.nvidia.packages`: the .deb packages, real names and versions
- :mod:`lab.nvidia.repo`: signed flat apt repositories laid out like NVIDIA's (``build_repos``)
"""

from lab.nvidia.hardware import MODELS, gpu_uuid, gpus_json, simulated_gpus
from lab.nvidia.packages import DRIVER_BRANCHES, TOOLKIT_VERSIONS, deb_version

__all__ = ["DRIVER_BRANCHES", "MODELS", "TOOLKIT_VERSIONS", "build_repos", "deb_version",
           "gpu_uuid", "gpus_json", "simulated_gpus"]


def build_repos(*args, **kwargs):
    """See :func:`lab.nvidia.repo.build_repos`."""
    from lab.nvidia.repo import build_repos as _build_repos

    return _build_repos(*args, **kwargs)

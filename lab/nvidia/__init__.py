"""Lab stand-ins for NVIDIA's driver and container toolkit, and their apt repositories.

- :mod:`lab.nvidia.hardware`: simulated GPUs (``simulated_gpus``) for /etc/fleetlab/gpus.json
- :mod:`lab.nvidia.standins`: the stand-in programs (nvidia-smi, nvidia-ctk, ...)
- :mod:`lab.nvidia.packages`: the .deb packages, real names and versions
- :mod:`lab.nvidia.repo`: signed flat apt repositories laid out like NVIDIA's (``build_repos``)

The package re-exports only what hardware and packages define: ``repo`` imports
``packages``, so the package importing ``repo`` back would make a circle; import
``build_repos`` from :mod:`lab.nvidia.repo`.
"""

from lab.nvidia.hardware import MODELS, gpu_uuid, gpus_json, simulated_gpus
from lab.nvidia.packages import DRIVER_BRANCHES, TOOLKIT_VERSIONS, deb_version

__all__ = ["DRIVER_BRANCHES", "MODELS", "TOOLKIT_VERSIONS", "deb_version", "gpu_uuid",
           "gpus_json", "simulated_gpus"]

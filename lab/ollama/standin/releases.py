"""Which upstream release a behaviour follows, by the version the image carries.

The lab publishes stand-in images of three lines of Ollama: 0.6.8, 0.7.x and 0.32.15.
A behaviour read at v0.32.15 applies from 0.32.0 on (the lab has no image between 0.7
and 0.32: where exactly upstream changed each one between them is not modelled).
"""

from __future__ import annotations

import re

# Behaviours read at v0.32.15 (server/routes.go GenerateRoutes, server/cloud_proxy.go,
# server/model_list_cache.go, discover/runner.go ...) hold from this version on.
CURRENT = (0, 32, 0)

# The CUDA architectures each release's Linux builds carry (CMAKE_CUDA_ARCHITECTURES):
# v0.6.8 CMakePresets.json "CUDA 12"; llama/server/CMakePresets.json
# llama_cuda_v12_linux and llama_cuda_v13_linux of v0.32.0/v0.32.1 and of v0.32.2 on
# (v0.32.15 the same): cuda_v12 builds sm_100 only from v0.32.2 (ollama/ollama#17025).
# "-virtual" is PTX only.
CUDA_ARCHS_0_6 = {"cuda_v12": "50;60;61;70;75;80;86;87;89;90;90a;120"}
_CUDA_V13 = ("75-virtual;80-virtual;86-virtual;87-virtual;89-virtual;90-virtual;"
             "90a-virtual;100-virtual;103-virtual;110-virtual;120-virtual;121-virtual")
CUDA_ARCHS_0_32_0 = {
    "cuda_v12": "50-virtual;52-virtual;60;61;70;75;80;86;89;90;90a;120",
    "cuda_v13": _CUDA_V13,
}
CUDA_ARCHS_0_32 = {
    "cuda_v12": "50-virtual;52-virtual;60;61;70;75;80;86;89;90;90a;100;120",
    "cuda_v13": _CUDA_V13,
}


def version_tuple(version: str) -> tuple[int, int, int]:
    nums = [int(x) for x in re.findall(r"\d+", version.split("-")[0])[:3]]
    return tuple((nums + [0, 0, 0])[:3])  # type: ignore[return-value]


def version_at_least(version: str, want: tuple[int, ...]) -> bool:
    return version_tuple(version) >= tuple(want)


def is_current(version: str) -> bool:
    """Whether VERSION gets the behaviours read at v0.32.15."""
    return version_at_least(version, CURRENT)


def cuda_archs(version: str) -> dict[str, str]:
    """The CUDA library directories of VERSION's image and the architectures each was
    built for (what the image recipe writes to /usr/lib/ollama/lab-cuda-archs)."""
    if not is_current(version):
        return dict(CUDA_ARCHS_0_6)
    return dict(CUDA_ARCHS_0_32 if version_at_least(version, (0, 32, 2)) else CUDA_ARCHS_0_32_0)

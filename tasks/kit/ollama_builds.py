"""Which GPUs an Ollama image can run on: its CUDA builds, by release.

An Ollama image carries one GPU library per CUDA major version (`/lib/ollama/cuda_v12`,
`cuda_v13`), each compiled for a list of compute capabilities. At start Ollama tries
every library it has and keeps the GPUs one of them initialises; a GPU no library was
built for is left out, and the instance serves from the CPU while every check that
only asks "does it answer" stays green (ollama/ollama#12860: B200 boards on the CPU in
Docker). So the deploy refuses such an image before the stack starts.

The lists are upstream's `CMAKE_CUDA_ARCHITECTURES` for Linux at each release that
changed them (`CMakePresets.json`; from v0.30 `llama/server/CMakePresets.json`), and
which libraries the image's Dockerfile ships:

- v0.6.0: "CUDA 11" (50..86) and "CUDA 12" (50..90a, 120: no 100, so no B200);
- v0.9.3: CUDA 12 alone;
- v0.11.11: "CUDA 13" joins it (PTX only: 75..121 `-virtual`, no 103), which needs a 580
  driver;
- v0.12.4: discovery initialises each GPU with `GGML_CUDA_INIT=1` and drops one whose
  capability is not among the library's compiled architectures, exactly
  (`discover/runner.go`, ggml's `ggml_cuda_has_arch`); from v0.30 the same rule is in
  `discover/llama_server.go` ("skipping CUDA device — compute capability not in compiled
  architectures");
- v0.12.6: CUDA 12 gains 52; v0.12.7: CUDA 12 loses 87, CUDA 13 gains 103 (B300);
- v0.30.0: CUDA 12's 50..61 become PTX, CUDA 13 loses 87; v0.30.11: CUDA 13 has 87 again;
- v0.31.2: CUDA 12's 60 and 61 are binaries again;
- v0.32.2 (ollama/ollama#17025): CUDA 12 gains 100 (B200 with a driver older than 580).

Before v0.12.4 the deploy counts a plain entry for its capability and later minors of the
same major (CUDA's binary compatibility; `90a` for 9.0 alone) and a `-virtual` one for
any later capability. That is stricter than the CUDA runtime, which could also JIT the
PTX a plain entry carries, and agrees with what upstream reports (B200 boards on the CPU
with 0.6.8's images, ollama/ollama#12860). From v0.12.4 only the exact match counts
(`90a` and `90-virtual` are both 9.0). Upstream publishes one image per release for
NVIDIA GPUs on x86_64 and arm64 (every CUDA library in it; Ollama picks among them at
start), and a `-rocm` variant that has no CUDA library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Version = tuple[int, int, int]


@dataclass(frozen=True)
class CudaBuild:
    library: str  # the directory under /lib/ollama
    min_driver: int  # the driver branch its CUDA runtime needs
    archs: tuple[str, ...]  # CMAKE_CUDA_ARCHITECTURES, as upstream writes them
    exact: bool = False  # Ollama keeps only GPUs whose capability is listed (v0.12.4 on)


def _archs(text: str) -> tuple[str, ...]:
    return tuple(text.split(";"))


_V11 = _archs("50;52;53;60;61;70;75;80;86")
_V12 = _archs("50;60;61;70;75;80;86;87;89;90;90a;120")
_V12_0126 = _archs("50;52;60;61;70;75;80;86;87;89;90;90a;120")
_V12_0127 = _archs("50;52;60;61;70;75;80;86;89;90;90a;120")
_V12_0300 = _archs("50-virtual;52-virtual;60-virtual;61-virtual;70;75;80;86;89;90;90a;120")
_V12_0312 = _archs("50-virtual;52-virtual;60;61;70;75;80;86;89;90;90a;120")
_V12_0322 = _archs("50-virtual;52-virtual;60;61;70;75;80;86;89;90;90a;100;120")
_V13 = _archs("75-virtual;80-virtual;86-virtual;87-virtual;89-virtual;90-virtual;90a-virtual;"
              "100-virtual;110-virtual;120-virtual;121-virtual")
_V13_0127 = _archs("75-virtual;80-virtual;86-virtual;87-virtual;89-virtual;90-virtual;"
                   "90a-virtual;100-virtual;103-virtual;110-virtual;120-virtual;121-virtual")
_V13_0300 = tuple(a for a in _V13_0127 if a != "87-virtual")


def _cuda(v12: tuple[str, ...], v13: tuple[str, ...] | None = None, exact: bool = True
          ) -> tuple[CudaBuild, ...]:
    builds = [CudaBuild("cuda_v12", 525, v12, exact)]
    if v13:
        builds.append(CudaBuild("cuda_v13", 580, v13, exact))
    return tuple(builds)


# (first release, its CUDA builds), oldest first: a release has the builds of the newest
# entry at or before it.
RELEASES: tuple[tuple[Version, tuple[CudaBuild, ...]], ...] = (
    ((0, 0, 0), (CudaBuild("cuda_v11", 450, _V11), CudaBuild("cuda_v12", 525, _V12))),
    ((0, 9, 3), _cuda(_V12, exact=False)),
    ((0, 11, 11), _cuda(_V12, _V13, exact=False)),
    ((0, 12, 4), _cuda(_V12, _V13)),
    ((0, 12, 6), _cuda(_V12_0126, _V13)),
    ((0, 12, 7), _cuda(_V12_0127, _V13_0127)),
    ((0, 30, 0), _cuda(_V12_0300, _V13_0300)),
    ((0, 30, 11), _cuda(_V12_0300, _V13_0127)),
    ((0, 31, 2), _cuda(_V12_0312, _V13_0127)),
    ((0, 32, 2), _cuda(_V12_0322, _V13_0127)),
)

_TAG = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(.*)$")


def image_release(image: str) -> tuple[Version, str] | None:
    """`ollama/ollama:0.32.15-rocm` -> ((0, 32, 15), "-rocm"); None when the image is not
    upstream's (another repository) or its tag names no release (`latest`, a digest)."""
    name, _, tag = image.partition("@")[0].rpartition(":")  # a digest pins the tag's image
    if "/" in tag or name.split("/")[-2:] != ["ollama", "ollama"]:
        return None
    m = _TAG.match(tag)
    if not m:
        return None
    return (int(m[1]), int(m[2]), int(m[3])), m[4]


def cuda_builds(version: Version) -> tuple[CudaBuild, ...]:
    return [builds for first, builds in RELEASES if first <= version][-1]


def _capability(text: str) -> tuple[int, int] | None:
    m = re.fullmatch(r"(\d+)\.(\d+)", text.strip())
    return (int(m[1]), int(m[2])) if m else None


def build_runs(build: CudaBuild, capability: tuple[int, int]) -> bool:
    """Whether BUILD has code for a GPU of CAPABILITY (major, minor)."""
    for arch in build.archs:
        number, virtual = arch.removesuffix("-virtual"), arch.endswith("-virtual")
        specific = number.endswith("a")
        number = number.removesuffix("a")
        target = (int(number[:-1]), int(number[-1]))
        if build.exact:
            if capability == target:
                return True
            continue
        if specific and capability == target:
            return True
        if virtual and capability >= target:
            return True
        if not virtual and not specific and capability[0] == target[0] \
                and capability[1] >= target[1]:
            return True
    return False


def unsupported_gpus(image: str, gpus: list[dict]) -> str | None:
    """Why IMAGE cannot run on GPUS (nvidia-smi's, with `compute_cap`, `name` and
    `driver_version`), in one line; None when every GPU has a build, or when the image is
    not a release of upstream's that this table knows (nothing to tell)."""
    release = image_release(image)
    if release is None:
        return None
    version, variant = release
    if variant.startswith("-rocm"):
        return (f"{image} is Ollama's ROCm (AMD) build, with no CUDA library for this "
                f"host's NVIDIA GPUs; use ollama/ollama:{'.'.join(map(str, version))}")
    for gpu in gpus:
        capability = _capability(str(gpu.get("compute_cap", "")))
        if capability is None:
            continue  # a driver that cannot tell: Ollama's own start says
        driver = int(str(gpu.get("driver_version", "0")).split(".")[0] or 0)
        builds = cuda_builds(version)
        if any(build_runs(b, capability) and driver >= b.min_driver for b in builds):
            continue
        cc = f"{capability[0]}.{capability[1]}"
        name = gpu.get("name", "GPU")
        built = [b for b in builds if build_runs(b, capability)]
        if built:
            return (f"{image} has compute capability {cc} ({name}) only in {built[0].library}, "
                    f"which needs NVIDIA driver {built[0].min_driver} or newer (loaded: "
                    f"{gpu.get('driver_version')}); Ollama would serve from the CPU")
        first = first_release_for(capability, driver)
        hint = f"use ollama/ollama:{first} or later" if first else "no Ollama release has one"
        return (f"{image} has no CUDA build for compute capability {cc} ({name}); Ollama "
                f"would serve from the CPU; {hint}")
    return None


def first_release_for(capability: tuple[int, int], driver: int) -> str | None:
    """The first release from which every release in the table has a build for CAPABILITY
    under DRIVER, or None when the newest has none."""
    first = None
    for version, builds in reversed(RELEASES):
        if not any(build_runs(b, capability) and driver >= b.min_driver for b in builds):
            break
        first = ".".join(map(str, version))
    return first

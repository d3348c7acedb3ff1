"""GPU discovery (discover/gpu.go, discover/gpu_info_nvcuda.c, discover/types.go of
v0.6.0 to v0.7.1: the same lines in every one of them; discover/llama_server.go,
discover/types.go of v0.32.15 for images from 0.32 on).

A GPU whose compute capability no CUDA build of the image carries is left out, and with
none left the server runs on the CPU, as upstream's does (the image's builds:
/usr/lib/ollama/lab-cuda-archs, else the release's list in releases.py).

The container's GPUs come from the files the lab's NVIDIA hook writes (every path
prefixed with $FLEETLAB_ROOT when that is set, as the NVIDIA stand-ins do).
"""

from __future__ import annotations

import json
import os

from .envconfig import LAB_DIR, log
from .goformat import human_bytes2
from .releases import cuda_archs, is_current

FLEETLAB_GPUS_JSON = "/etc/fleetlab/gpus.json"
FLEETLAB_CUDA_JSON = "/etc/fleetlab/cuda.json"
FLEETLAB_DRIVER = "/run/fleetlab/nvidia-driver-loaded"
# The host's live view for this container (the NVIDIA stand-ins keep it): GPU_ACCESS=lost
# once a `systemctl daemon-reload` took the container's device nodes away.
FLEETLAB_LIVE = "/etc/fleetlab/live.env"
# CUresult of cuCtxCreate when the device nodes can no longer be opened
# (CUDA_ERROR_NOT_PERMITTED), as the refresh in discover/gpu_info_nvcuda.c reports it
CUDA_ERROR_NOT_PERMITTED = 800
# The cudart library Ollama bundles (lib/ollama/cuda_v12), tried after libcuda fails.
BUNDLED_CUDART = "/usr/lib/ollama/cuda_v12/libcudart.so.12.8.90"
# gpu_info_nvcuda.h
CUDA_ERROR_INSUFFICIENT_DRIVER = 35
CUDA_ERROR_NO_DEVICE = 100
CUDA_ERROR_SYSTEM_DRIVER_MISMATCH = 803
CUDA_ERROR_UNKNOWN = 999
# cuDeviceGetAttribute(COMPUTE_CAPABILITY_MAJOR/MINOR) of the simulated cards
_COMPUTE = {"NVIDIA H100 80GB HBM3": "9.0", "NVIDIA H200": "9.0",
            "NVIDIA A100-SXM4-80GB": "8.0", "NVIDIA L40S": "8.9", "NVIDIA B200": "10.0",
            "NVIDIA B100": "10.0", "NVIDIA B300 SXM6 AC": "10.3", "NVIDIA B300": "10.3"}
# The CUDA runtime a library directory needs of the driver (cudaDriverGetVersion):
# cuda_v13 does not load on a driver older than CUDA 13.0 (branch 580).
_LIB_MIN_DRIVER = {"cuda_v12": (12, 0), "cuda_v13": (13, 0)}
# cuDriverGetVersion by driver branch (the CUDA version a branch ships with)
_CUDA_BY_BRANCH = {535: "12.2", 550: "12.4", 560: "12.6", 565: "12.7", 570: "12.8",
                   575: "12.9", 580: "13.0", 590: "13.1"}
# What a CUDA context takes of a GPU's memory before anything is loaded.
_CONTEXT_MIB = 512
MIB = 1024 * 1024


def _nvidia_visible() -> bool:
    v = os.environ.get("NVIDIA_VISIBLE_DEVICES", "").strip().lower()
    return v not in ("", "void", "none")


def _gpu_count() -> int:
    v = os.environ.get("NVIDIA_VISIBLE_DEVICES", "").strip().lower()
    if v in ("", "void", "none"):
        return 0
    if v == "all":
        return 1
    return max(1, len([x for x in v.split(",") if x.strip()]))


def _fleetlab_path(path: str) -> str:
    return os.path.join(os.environ.get("FLEETLAB_ROOT") or "/", path.lstrip("/"))


def _fleetlab_json(path: str):
    try:
        with open(_fleetlab_path(path), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


_LIVE_CACHE: dict = {"key": None, "values": {}}


def live_values() -> dict[str, str]:
    """The host's live view for this container (/etc/fleetlab/live.env, KEY=VALUE lines),
    read again whenever the file changes: the host side changes it while the server runs."""
    path = _fleetlab_path(FLEETLAB_LIVE)
    try:
        st = os.stat(path)
    except OSError:
        return {}
    key = (st.st_ino, st.st_mtime_ns, st.st_size)
    if _LIVE_CACHE["key"] != key:
        values = {}
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    k, eq, v = line.partition("=")
                    if eq and k.strip():
                        values[k.strip()] = v.strip()
        except OSError:
            return {}
        _LIVE_CACHE.update(key=key, values=values)
    return _LIVE_CACHE["values"]


def gpu_access_lost() -> bool:
    """Whether the container lost access to its GPU device nodes."""
    return live_values().get("GPU_ACCESS") == "lost"


def fabric_down() -> bool:
    """An NVSwitch board whose Fabric Manager is not running: a runner started now cannot
    initialise CUDA (CUDA_ERROR_SYSTEM_NOT_READY, 802)."""
    live = live_values()
    return live.get("FM_REQUIRED") == "1" and live.get("FM_RUNNING") != "1"


def gpu_fault(uuid: str | None) -> str | None:
    """What the GPU UUID suffers now: "lost" (it fell off the bus, Xid 79), "ecc" (a
    double-bit ECC error waits for a GPU reset, Xid 48), or None."""
    if not uuid:
        return None
    live = live_values()
    if uuid in (live.get("GPU_LOST") or "").split(","):
        return "lost"
    if uuid in (live.get("GPU_RESET_REQUIRED") or "").split(","):
        return "ecc"
    return None


def log_refresh_failure(gpus: list[dict]) -> None:
    """GetGPUInfo's refresh of free VRAM (discover/gpu.go, v0.6.8) once the device nodes are
    gone: the CUDA library is already initialised in the server, but nvcuda_get_free's
    cuCtxCreate fails; gpu_info_nvcuda.c prints that to stderr without a newline, then
    gpu.go:434 warns, and the GPU keeps the free memory of its last refresh."""
    for _ in gpus:
        log("WARN", "gpu.go:434", "error looking up nvidia GPU memory",
            _raw=f"cuda driver library failed to get device context {CUDA_ERROR_NOT_PERMITTED}")


def image_cuda_archs(version: str) -> dict[str, str]:
    """The CUDA builds the image carries, as its recipe wrote them (`lib=archs` lines),
    else the release's own list."""
    try:
        with open(os.path.join(LAB_DIR, "lab-cuda-archs"), encoding="utf-8") as f:
            pairs = [line.strip().partition("=") for line in f if "=" in line]
        archs = {k.strip(): v.strip() for k, _, v in pairs if k.strip()}
        if archs:
            return archs
    except OSError:
        pass
    return cuda_archs(version)


def _arch_numbers(archs: str) -> list[str]:
    """What llama-server's system_info reports as ARCHS: each compiled architecture as
    __CUDA_ARCH_LIST__ numbers it (`90a`, `100-virtual` -> 900, 1000)."""
    out = []
    for a in archs.split(";"):
        digits = a.strip().partition("-")[0].rstrip("af")
        if digits.isdigit() and f"{digits}0" not in out:
            out.append(f"{digits}0")
    return out


def _cuda_driver_version(driver: str) -> str:
    try:
        branch = int(driver.split(".")[0])
    except ValueError:
        return "12.4"
    if branch in _CUDA_BY_BRANCH:
        return _CUDA_BY_BRANCH[branch]
    known = [b for b in sorted(_CUDA_BY_BRANCH) if b <= branch]
    return _CUDA_BY_BRANCH[known[-1]] if known else "12.2"


class Discovery:
    """What GetGPUInfo finds when the server starts: the CUDA GPUs, or none (CPU)."""

    def __init__(self, version: str = "0.0.0"):
        self.visible = _nvidia_visible()
        self.current = is_current(version)
        self.archs = image_cuda_archs(version)
        self.init_error = 0
        self.gpus: list[dict] = []
        self.skipped: list[dict] = []  # GPUs no build of the image supports
        self.driver = ""
        if not self.visible:
            return
        cuda = _fleetlab_json(FLEETLAB_CUDA_JSON)
        if isinstance(cuda, dict):
            try:
                self.init_error = int(cuda.get("init_error") or 0)
            except (TypeError, ValueError):
                self.init_error = 0
        try:
            with open(_fleetlab_path(FLEETLAB_DRIVER), encoding="utf-8") as f:
                self.driver = f.read().strip()
        except OSError:
            self.driver = ""
        if self.init_error:
            return
        doc = _fleetlab_json(FLEETLAB_GPUS_JSON)
        gpus = doc.get("gpus") if isinstance(doc, dict) else doc
        cuda_version = _cuda_driver_version(self.driver) if self.driver else "12.4"
        driver_cuda = tuple(int(x) for x in cuda_version.split("."))
        libs = {lib: a for lib, a in self.archs.items()
                if driver_cuda >= _LIB_MIN_DRIVER.get(lib, (0, 0))}
        for g in gpus if isinstance(gpus, list) else []:
            try:
                total = int(g["memory_total_mib"]) * MIB
                name = str(g.get("name", ""))
                compute = str(g.get("compute_cap") or _COMPUTE.get(name, "8.9"))
                lib = _library_for(libs, compute)
                gpu = {
                    "id": str(g["uuid"]), "library": "cuda", "variant": "v12",
                    "compute": compute, "driver": cuda_version, "name": name,
                    "total": human_bytes2(total), "total_bytes": total,
                    "available": human_bytes2(max(0, total - _CONTEXT_MIB * MIB)),
                    "libdir": lib or "", "pci_id": str(g.get("pci_bus_id") or "")}
            except (KeyError, TypeError, ValueError):
                continue
            (self.gpus if lib else self.skipped).append(gpu)
        if not self.gpus and not self.skipped:  # no description of the GPUs: a generic one
            self.gpus.append({"id": "GPU-lab-0", "library": "cuda", "variant": "v12",
                              "compute": "8.9", "driver": "12.4",
                              "name": "Lab stand-in GPU", "total": "23.6 GiB",
                              "total_bytes": 24 * 1024 * MIB, "libdir": "cuda_v12",
                              "pci_id": "", "available": "23.2 GiB"})

    @property
    def on_gpu(self) -> bool:
        return bool(self.gpus)

    def libcuda(self) -> str:
        """The driver's libcuda as FindGPULibs finds it (symlinks resolved)."""
        return f"/usr/lib/x86_64-linux-gnu/libcuda.so.{self.driver or '1'}"

    def log(self) -> None:
        """The INFO lines GetGPUInfo and LogDetails write (after "looking for ...")."""
        if self.visible and self.init_error:
            lib, err = self.libcuda(), self.init_error
            msg = f"cuda driver library init failure: {err}"  # gpu_info_nvcuda.c nvcuda_init
            if err in (CUDA_ERROR_INSUFFICIENT_DRIVER, CUDA_ERROR_SYSTEM_DRIVER_MISMATCH):
                log("WARN", "gpu.go:599", "version mismatch between driver and cuda driver "
                    f"library - reboot or upgrade may be required: library {lib}")
            elif err == CUDA_ERROR_NO_DEVICE:
                log("INFO", "gpu.go:602", f"no nvidia devices detected by library {lib}")
            elif err == CUDA_ERROR_UNKNOWN:
                log("WARN", "gpu.go:605", f"unknown error initializing cuda driver library "
                    f"{lib}: {msg}. see https://github.com/ollama/ollama/blob/main/docs/"
                    "troubleshooting.md for more information")
            else:
                log("INFO", "gpu.go:612", f"Unable to load cudart library {lib}: {msg}")
            # then the bundled cudart: cudaSetDevice fails the same way (a debug line)
            log("DEBUG", "gpu.go:574", f"Unable to load cudart library {BUNDLED_CUDART}: "
                f"cudart init failure: {err}")
        if self.current:
            self._log_current()
            return
        if self.gpus:
            for g in self.gpus:
                log("INFO", "types.go:130", "inference compute", **_v06_fields(g))
            return
        log("INFO", "gpu.go:377", "no compatible GPUs were discovered")
        log("INFO", "types.go:130", "inference compute", id="0", library="cpu", variant="",
            compute="", driver="0.0", name="", total="7.6 GiB", available="6.9 GiB")

    def total_vram(self) -> int:
        """What Serve sums for the default context: every GPU's total memory (less
        OLLAMA_GPU_OVERHEAD, 0 by default)."""
        return sum(int(g.get("total_bytes") or 0) for g in self.gpus)

    def _log_current(self) -> None:
        """v0.32.15: discover/llama_server.go skips a CUDA device whose capability is not
        among a build's ARCHS; discover/types.go LogDetails then writes one line per GPU
        kept, or the CPU line."""
        for g in self.skipped:
            for lib in sorted(self.archs):
                arch = "".join(g["compute"].split(".")[:2]) + "0"
                log("INFO", "llama_server.go:299", "skipping CUDA device \u2014 compute "
                    "capability not in compiled architectures", device=g["name"], cc=arch,
                    archs="[" + " ".join(_arch_numbers(self.archs[lib])) + "]",
                    libDirs=f"[/usr/lib/ollama /usr/lib/ollama/{lib}]")
        for i, g in enumerate(self.gpus):
            log("INFO", "types.go:32", "inference compute", id=str(i), filter_id="",
                library="CUDA", compute=g["compute"], name=f"CUDA{i}", description=g["name"],
                libdirs=f"ollama,{g['libdir']}", driver=g["driver"], pci_id=g["pci_id"],
                type="discrete", total=g["total"], available=g["available"])
        if not self.gpus:
            log("INFO", "types.go:50", "inference compute", id="cpu", library="cpu",
                compute="", name="cpu", description="cpu", libdirs="ollama", driver="",
                pci_id="", type="", total="7.6 GiB", available="6.9 GiB")


def _library_for(libs: dict[str, str], compute: str) -> str | None:
    """The newest build whose ARCHS hold the capability exactly (llama_server.go:
    `cudaArchSet[cc.arch]`, cc.arch = major, minor, 0)."""
    arch = "".join(compute.split(".")[:2]) + "0"
    for lib in sorted(libs, reverse=True):
        if arch in _arch_numbers(libs[lib]):
            return lib
    return None


def _v06_fields(g: dict) -> dict:
    """LogDetails of v0.6/v0.7: id, library, variant, compute, driver, name, total,
    available."""
    return {k: g[k] for k in ("id", "library", "variant", "compute", "driver", "name", "total",
                              "available")}

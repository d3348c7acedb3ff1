"""GPU discovery (discover/gpu.go, discover/gpu_info_nvcuda.c, discover/types.go of
v0.6.0 to v0.7.1: the same lines in every one of them).

The container's GPUs come from the files the lab's NVIDIA hook writes (every path
prefixed with $FLEETLAB_ROOT when that is set, as the NVIDIA stand-ins do).
"""

from __future__ import annotations

import json
import os

from .envconfig import log
from .goformat import human_bytes2

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
_COMPUTE = {"NVIDIA H100 80GB HBM3": "9.0", "NVIDIA A100-SXM4-80GB": "8.0",
            "NVIDIA L40S": "8.9", "NVIDIA B200": "10.0"}
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


def gpu_access_lost() -> bool:
    """Whether the container lost access to its GPU device nodes (read at each use: the
    host side changes it while the server runs)."""
    try:
        with open(_fleetlab_path(FLEETLAB_LIVE), encoding="utf-8") as f:
            return any(line.strip() == "GPU_ACCESS=lost" for line in f)
    except OSError:
        return False


def log_refresh_failure(gpus: list[dict]) -> None:
    """GetGPUInfo's refresh of free VRAM (discover/gpu.go, v0.6.8) once the device nodes are
    gone: the CUDA library is already initialised in the server, but nvcuda_get_free's
    cuCtxCreate fails; gpu_info_nvcuda.c prints that to stderr without a newline, then
    gpu.go:434 warns, and the GPU keeps the free memory of its last refresh."""
    for _ in gpus:
        log("WARN", "gpu.go:434", "error looking up nvidia GPU memory",
            _raw=f"cuda driver library failed to get device context {CUDA_ERROR_NOT_PERMITTED}")


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

    def __init__(self):
        self.visible = _nvidia_visible()
        self.init_error = 0
        self.gpus: list[dict] = []
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
        for g in gpus if isinstance(gpus, list) else []:
            try:
                total = int(g["memory_total_mib"]) * MIB
                self.gpus.append({
                    "id": str(g["uuid"]), "library": "cuda", "variant": "v12",
                    "compute": _COMPUTE.get(g.get("name", ""), "8.9"),
                    "driver": cuda_version, "name": str(g.get("name", "")),
                    "total": human_bytes2(total),
                    "available": human_bytes2(max(0, total - _CONTEXT_MIB * MIB))})
            except (KeyError, TypeError, ValueError):
                continue
        if not self.gpus:  # no description of the container's GPUs: the old generic one
            self.gpus.append({"id": "GPU-lab-0", "library": "cuda", "variant": "v12",
                              "compute": "8.9", "driver": "12.4",
                              "name": "Lab stand-in GPU", "total": "23.6 GiB",
                              "available": "23.2 GiB"})

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
        if self.gpus:
            for g in self.gpus:
                log("INFO", "types.go:130", "inference compute", **g)
            return
        log("INFO", "gpu.go:377", "no compatible GPUs were discovered")
        log("INFO", "types.go:130", "inference compute", id="0", library="cpu", variant="",
            compute="", driver="0.0", name="", total="7.6 GiB", available="6.9 GiB")

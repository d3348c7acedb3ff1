"""Which GPUs an Ollama release can run on (tasks/kit/ollama_builds.py), from upstream's
CUDA architecture lists; the deploy refuses an image with no build for the host's GPUs."""

from __future__ import annotations

import pytest

from ollama_fleet.tasks.kit.ollama_builds import (
    build_runs,
    cuda_builds,
    image_release,
    unsupported_gpus,
)


def gpu(name: str, cc: str, driver: str = "590.48.01") -> dict:
    return {"index": 0, "name": name, "compute_cap": cc, "driver_version": driver}


B200, H100, L40S = gpu("NVIDIA B200", "10.0"), gpu("NVIDIA H100 80GB HBM3", "9.0"), \
    gpu("NVIDIA L40S", "8.9")


@pytest.mark.parametrize(("image", "release"), [
    ("ollama/ollama:0.6.8", ((0, 6, 8), "")),
    ("docker.io/ollama/ollama:0.32.15-rocm", ((0, 32, 15), "-rocm")),
    ("ollama/ollama:0.7.1-bad", ((0, 7, 1), "-bad")),
    ("ollama/ollama:latest", None),  # names no release: nothing to tell
    ("ollama/ollama@sha256:" + "a" * 64, None),
    ("ollama/ollama:0.32.15@sha256:" + "a" * 64, ((0, 32, 15), "")),  # still checked
    ("registry.example/team/ollama:0.6.8", None),  # not upstream's image
])
def test_the_release_an_image_names(image, release):
    assert image_release(image) == release


def test_a_b200_has_no_build_in_0_6_8_and_one_in_the_current_default():
    assert unsupported_gpus("ollama/ollama:0.6.8", [H100, L40S]) is None
    assert unsupported_gpus("ollama/ollama:0.6.8", [H100, B200]) == (
        "ollama/ollama:0.6.8 has no CUDA build for compute capability 10.0 (NVIDIA B200); "
        "Ollama would serve from the CPU; use ollama/ollama:0.11.11 or later")
    assert unsupported_gpus("ollama/ollama:0.32.15", [B200, gpu("NVIDIA B300", "10.3")]) is None


def test_the_hint_names_a_release_from_which_every_later_one_has_a_build():
    # 0.11.11's CUDA 13 PTX would run a B300, but 0.12.4 to 0.12.6 drop it (no 103)
    assert unsupported_gpus("ollama/ollama:0.6.8", [gpu("NVIDIA B300", "10.3")]).endswith(
        "use ollama/ollama:0.12.7 or later")


def test_a_build_needs_the_driver_its_cuda_runtime_needs():
    old_driver = gpu("NVIDIA B200", "10.0", "570.195.03")
    assert "only in cuda_v13, which needs NVIDIA driver 580 or newer (loaded: 570.195.03)" in \
        unsupported_gpus("ollama/ollama:0.20.0", [old_driver])
    assert unsupported_gpus("ollama/ollama:0.32.2", [old_driver]) is None  # CUDA 12 has 100


def test_the_rocm_variant_is_refused_on_nvidia_gpus_naming_the_cuda_one():
    assert unsupported_gpus("ollama/ollama:0.32.15-rocm", [H100]) == (
        "ollama/ollama:0.32.15-rocm is Ollama's ROCm (AMD) build, with no CUDA library for "
        "this host's NVIDIA GPUs; use ollama/ollama:0.32.15")


def test_binaries_serve_later_minors_ptx_serves_later_majors_and_90a_only_hopper():
    v12 = cuda_builds((0, 6, 8))[1]
    assert build_runs(v12, (8, 9)) and build_runs(v12, (9, 0)) and build_runs(v12, (12, 1))
    assert not build_runs(v12, (10, 0)) and not build_runs(v12, (3, 5))
    v13 = cuda_builds((0, 32, 15))[1]
    assert build_runs(v13, (10, 3)) and build_runs(v13, (7, 5)) and not build_runs(v13, (7, 0))


def test_a_gpu_whose_capability_nvidia_smi_cannot_tell_is_left_to_ollama():
    assert unsupported_gpus("ollama/ollama:0.6.8", [gpu("GPU", "[N/A]")]) is None


def test_from_0_30_ollama_keeps_only_gpus_whose_capability_a_build_lists_exactly():
    # v0.32.15 `discover/llama_server.go`: a B300 (10.3) is not served by CUDA 12's sm_100
    b300_old_driver = gpu("NVIDIA B300", "10.3", "570.195.03")
    assert "only in cuda_v13, which needs NVIDIA driver 580" in \
        unsupported_gpus("ollama/ollama:0.32.15", [b300_old_driver])
    # before v0.30 the CUDA runtime ran sm_100 code on 10.3 (binary compatibility)
    v12_0_11 = cuda_builds((0, 11, 11))[0]
    assert not v12_0_11.exact and not build_runs(v12_0_11, (10, 3))  # it had no sm_100
    # from v0.12.4 (GGML_CUDA_INIT validation) the exact rule: no 103 until v0.12.7
    dropped = unsupported_gpus("ollama/ollama:0.12.4", [gpu("NVIDIA B300", "10.3")])
    assert dropped and "has no CUDA build for compute capability 10.3" in dropped
    assert unsupported_gpus("ollama/ollama:0.12.7", [gpu("NVIDIA B300", "10.3")]) is None
    v12 = cuda_builds((0, 32, 15))[0]
    assert v12.exact and build_runs(v12, (10, 0)) and not build_runs(v12, (10, 3))
    assert build_runs(v12, (9, 0)) and not build_runs(v12, (8, 7))

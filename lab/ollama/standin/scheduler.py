"""The scheduler (server/sched.go): loaded models, keep-alive, parallelism, queue.

A container can lose its GPU device nodes while the server runs (a `systemctl
daemon-reload` under Docker's systemd cgroup driver, NVIDIA/nvidia-container-toolkit#48;
the lab's NVIDIA stand-ins set GPU_ACCESS=lost in /etc/fleetlab/live.env). As v0.6.8 does
then: a runner already loaded keeps its open device files and goes on answering (the
device cgroup is checked when a device is opened). A new load refreshes the GPU list
(GetGPUInfo): the refresh fails (`cuda driver library failed to get device context 800`,
WARN gpu.go:434) but the GPUs stay listed with their old free memory, so the model is
placed on them; the new runner process cannot initialise CUDA (`ggml_cuda_init: failed
to initialize CUDA: unknown error`) and runs the model on the CPU, while the server keeps
its estimate: `/api/ps` reports size_vram as for a GPU load (`ollama ps`: 100% GPU). An
unload waits for the VRAM to come back (waitForVRAMRecovery), which it never does: WARN
sched.go:655 after 5 s, and a load that waits for that unload waits as long. A runner that
starts while an NVSwitch board's Fabric Manager is not running cannot initialise CUDA
either (802): it too computes on the CPU.

A loaded model sits on one of the container's GPUs (the one its models use least, as the
scheduler picks the GPU with the most free memory). When that GPU breaks (the lab's faults:
fallen off the bus, Xid 79; a double-bit ECC error, Xid 48, until a GPU reset), the runner's
next computation hits a CUDA error and the runner aborts: the request being served ends
with "an error was encountered while running the model: ..." (a streamed one with an
error line, another with HTTP 500), and a new runner on that GPU fails to start ("llama
runner process has terminated: ..."). What the runners hold of each GPU is written to
/tmp/.fleetlab-gpu-usage.json in the container, which the host's nvidia-smi reads.

Lab only: SIGUSR1 puts the server on the CPU until its process ends (its runners reload on
the CPU: size_vram 0, tokens OLLAMA_LAB_CPU_SLOWDOWN times slower); SIGUSR2 ends that.
"""

from __future__ import annotations

import json
import os
import threading
import time

from .apierror import ApiError
from .discover import (
    _fleetlab_path,
    _nvidia_visible,
    fabric_down,
    gpu_access_lost,
    gpu_fault,
    log_refresh_failure,
)
from .envconfig import env_float, log, log_raw
from .goformat import FOREVER_NS, go_time
from .releases import is_current
from .store import ModelInfo

ERR_MAX_QUEUE = "server busy, please try again.  maximum pending requests exceeded"
# The GPU memory this server's runners hold, for the host's nvidia-smi (fleetlab_common.py
# CONTAINER_GPU_USAGE, gpu_processes); a runner's CUDA context beside its model
GPU_USAGE_FILE = "/tmp/.fleetlab-gpu-usage.json"
CUDA_CONTEXT_MIB = 512
MIB = 1 << 20
# cudaGetErrorString of what a broken GPU answers: off the bus, a double-bit ECC error
CUDA_ERRORS = {"lost": "unknown error", "ecc": "uncorrectable ECC error encountered"}


def runner_error(version: str, fault: str) -> str:
    """The error of a request whose runner aborted on a CUDA error: ggml_cuda_error prints
    `CUDA error: MSG` and ggml_abort `FILE:LINE: CUDA error`; v0.6.8's StatusWriter keeps
    the last line with an error prefix, v0.32's appends them (the abort line first: ggml's
    own log lines go through llama-server's log thread)."""
    if is_current(version):
        return ("an error was encountered while running the model: CUDA error\n"
                f"CUDA error: {CUDA_ERRORS[fault]}")
    return "an error was encountered while running the model: CUDA error"


def load_error(version: str, fault: str) -> str:
    """The error of a load whose new runner aborts on a CUDA error (SIGABRT) before it is
    ready: WaitUntilRunning (v0.6.8) / waitUntilRunning (v0.32: the exit error of a signal,
    then the captured lines)."""
    if is_current(version):
        return ("llama-server process has terminated: signal: aborted: CUDA error\n"
                f"CUDA error: {CUDA_ERRORS[fault]}")
    return "llama runner process has terminated: CUDA error"


def log_runner(line: str) -> None:
    """A line the runner subprocess writes to its stderr, which the server passes on."""
    log_raw(line + "\n")


class Runner:
    def __init__(self, info: ModelInfo, num_parallel: int):
        self.info = info
        self.sem = threading.Semaphore(max(1, num_parallel))
        self.refs = 0
        self.session_ns: int | None = None  # set by the request that loads it
        self.expires_ns: int | None = None
        self.unload_requested = False
        self.loaded_ns = time.time_ns()
        # the runner process could not initialise CUDA: it computes on the CPU, although
        # the server placed the model on the GPUs
        self.cuda_failed = False
        self.num_ctx = 0  # the context it was loaded with (v0.32: /api/ps context_length)
        self.gpu: str | None = None  # the GPU (UUID) its model sits on; None: on the CPU
        self.cpu = False  # loaded on the CPU by the server itself: size_vram 0
        self.dead = False  # aborted on a CUDA error: the next request reloads it

    @property
    def slow(self) -> bool:
        """It computes on the CPU."""
        return self.cpu or self.cuda_failed


class Scheduler:
    def __init__(self, num_parallel: int, max_queue: int, max_loaded: int, keep_alive_ns: int):
        self.num_parallel = max(1, num_parallel)
        self.max_queue = max_queue
        self.max_loaded = max(1, max_loaded)
        self.default_keep_alive = keep_alive_ns
        self.cond = threading.Condition()
        self.runners: dict[str, Runner] = {}
        self.pending = 0
        self.on_gpu = _nvidia_visible()  # set from GPU discovery when the server starts
        self.gpus: list[dict] = []  # the GPUs discovery found (set with on_gpu)
        # v0.32 images: the default context (Serve's VRAM tier) and /api/ps context_length
        self.default_num_ctx: int | None = None
        self.vram_wait_until = 0.0  # monotonic: an unload's VRAM recovery wait ends
        self.version = "0.0.0"  # the release it behaves as (set by the server state)
        self.cpu_fallback = False  # lab: on the CPU until the process ends (SIGUSR1)

    def acquire(self, info: ModelInfo, keep_alive_ns: int | None,
                num_ctx: int | None = None) -> Runner:
        # A request without keep_alive leaves a loaded model's duration as it is; a load
        # without one takes OLLAMA_KEEP_ALIVE (server/sched.go: useLoadedRunner, load).
        key = info.runner_key()
        with self.cond:
            if self.pending >= self.max_queue:
                raise ApiError(503, ERR_MAX_QUEUE)
            self.pending += 1
        try:
            with self.cond:
                while True:
                    self._reap_locked()
                    r = self.runners.get(key)
                    if r is not None and r.dead and r.refs == 0:  # needsReload: Ping fails
                        self._unload_locked(r)
                        r = None
                    if r is not None:
                        break
                    if len(self.runners) < self.max_loaded:
                        r = self._load_locked(info, num_ctx)
                        break
                    idle = [x for x in self.runners.values() if x.refs == 0]
                    if idle:
                        victim = min(idle, key=lambda x: x.expires_ns or 0)
                        self._unload_locked(victim)
                        # processPending waits for the unloaded event, which comes after
                        # the VRAM recovery wait
                        while time.monotonic() < self.vram_wait_until:
                            self.cond.wait(self.vram_wait_until - time.monotonic())
                        continue
                    self.cond.wait(0.25)
                r.refs += 1
                if keep_alive_ns is not None:
                    r.session_ns = keep_alive_ns
                elif r.session_ns is None:  # loaded by this request
                    r.session_ns = self.default_keep_alive
                r.unload_requested = False
            r.sem.acquire()
            return r
        finally:
            with self.cond:
                self.pending -= 1

    def _load_locked(self, info: ModelInfo, num_ctx: int | None) -> Runner:
        """Start a runner for INFO (the scheduler's lock held, as upstream loads one at a
        time); ApiError when the runner aborts on its GPU before it is ready."""
        lost = self.on_gpu and gpu_access_lost()
        no_fabric = self.on_gpu and not lost and fabric_down()
        if lost:  # the GetGPUInfo refresh before the load
            log_refresh_failure(self.gpus)
        time.sleep(env_float("OLLAMA_LAB_LOAD_SECONDS", 0.3))  # the load
        r = Runner(info, self.num_parallel)
        r.num_ctx = num_ctx or _model_num_ctx(info) or self.default_num_ctx or 0
        if self.on_gpu and self.cpu_fallback:
            r.cpu = True
        elif lost or no_fabric:  # the runner process's ggml-cuda (its stderr, as is)
            r.cuda_failed = True
            log_runner("ggml_cuda_init: failed to initialize CUDA: " +
                       ("unknown error" if lost else "system not yet initialized"))
        elif self.on_gpu:
            r.gpu = self._pick_gpu_locked()
            fault = gpu_fault(r.gpu)
            if fault:  # the runner's first CUDA call on the broken GPU: it aborts
                log_runner(f"CUDA error: {CUDA_ERRORS[fault]}")
                log_runner("//ml/backend/ggml/ggml/src/ggml-cuda/ggml-cuda.cu:75: CUDA error")
                log("ERROR", "sched.go:457", "error loading llama server",
                    error=load_error(self.version, fault))
                raise ApiError(500, load_error(self.version, fault))
        self.runners[info.runner_key()] = r
        log("INFO", "sched.go:788", "loaded lab runner",
            model=info.short, parallel=self.num_parallel,
            library="cuda" if self.on_gpu and not r.cpu else "cpu")
        self._publish_usage_locked()
        return r

    def _pick_gpu_locked(self) -> str | None:
        """The container GPU the loaded models use least (the scheduler's pick: the GPU
        with the most free memory for a model that fits one)."""
        ids = [str(g.get("id") or "") for g in self.gpus if g.get("id")]
        if not ids:
            return None
        held = {i: 0 for i in ids}
        for x in self.runners.values():
            if x.gpu in held and not x.dead:
                held[x.gpu] += x.info.manifest.size()
        return min(ids, key=lambda i: (held[i], ids.index(i)))

    def runner_fault(self, r: Runner) -> str | None:
        """The error of a computation on R now: None while its GPU works; else the runner
        aborts (it is dead: the next request reloads it) and the request fails."""
        if r.dead:
            return runner_error(self.version, "lost")
        fault = gpu_fault(r.gpu)
        if fault is None:
            return None
        with self.cond:
            if not r.dead:
                r.dead = True
                log_runner(f"CUDA error: {CUDA_ERRORS[fault]}")
                log_runner("//ml/backend/ggml/ggml/src/ggml-cuda/ggml-cuda.cu:75: CUDA error")
                r.gpu = None  # its process is gone, and what it held
                self._publish_usage_locked()
        return runner_error(self.version, fault)

    def set_cpu_fallback(self, on: bool) -> None:
        """Lab: the server falls back to the CPU (its runners reload there) until its
        process ends, or (ON false) goes back to its GPUs for the next loads."""
        with self.cond:
            if on == self.cpu_fallback:
                return
            self.cpu_fallback = on
            if on and self.on_gpu:
                log("WARN", "sched.go:0", "lab: the server falls back to the CPU until it "
                    "restarts (python -m lab fault ... cpu)")
                for r in self.runners.values():
                    r.cpu, r.gpu = True, None
            elif self.on_gpu:  # the lab's undo: its runners back where they were
                for r in self.runners.values():
                    if r.cpu:
                        r.cpu, r.gpu = False, self._pick_gpu_locked()
            self._publish_usage_locked()

    def publish_usage(self) -> None:
        with self.cond:
            self._publish_usage_locked()

    def _publish_usage_locked(self) -> None:
        """/tmp/.fleetlab-gpu-usage.json: the MiB this process's runners hold per GPU, with
        the process's pid and start time, so that a file of an earlier process counts for
        nothing."""
        if not self.on_gpu:
            return
        gpus: dict[str, int] = {}
        for r in self.runners.values():
            if r.gpu and not r.dead:
                mib = -(-r.info.manifest.size() // MIB) + CUDA_CONTEXT_MIB
                gpus[r.gpu] = gpus.get(r.gpu, 0) + mib
        doc = {"pid": os.getpid(), "starttime": _start_time(), "name": "/usr/bin/ollama",
               "gpus": gpus}
        path = _fleetlab_path(GPU_USAGE_FILE)
        try:
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                json.dump(doc, f)
            os.replace(path + ".tmp", path)
        except OSError:
            pass  # no writable /tmp: the host's nvidia-smi sees nothing held

    def release(self, r: Runner) -> None:
        r.sem.release()
        with self.cond:
            r.refs -= 1
            if r.refs <= 0:
                r.refs = 0
                if r.session_ns == 0 or r.unload_requested:
                    self._unload_locked(r)
                else:
                    r.expires_ns = time.time_ns() + min(r.session_ns, FOREVER_NS // 2)
                    if r.session_ns >= FOREVER_NS:
                        r.expires_ns = None
            self.cond.notify_all()

    def expire(self, info: ModelInfo) -> None:
        with self.cond:
            r = self.runners.get(info.runner_key())
            if r is None:
                return
            if r.refs == 0:
                self._unload_locked(r)
            else:
                r.unload_requested = True

    def _unload_locked(self, r: Runner) -> None:
        for k, v in list(self.runners.items()):
            if v is r:
                del self.runners[k]
                log("DEBUG", "sched.go:401", "runner expired and unloaded", model=r.info.short)
                if self.on_gpu and gpu_access_lost():
                    self.vram_wait_until = time.monotonic() + 5.0
                    threading.Thread(target=self._vram_recovery, args=(r,), daemon=True).start()
                self._publish_usage_locked()
        self.cond.notify_all()

    def _vram_recovery(self, r: Runner) -> None:
        """waitForVRAMRecovery (server/sched.go, v0.6.8) with the GPUs gone: a refresh as the
        baseline, one every 250 ms, no convergence; after 5 s the timeout warning, which its
        loop repeats at the next two ticks before it blocks for good."""
        start = time.monotonic()
        log_refresh_failure(self.gpus)
        warned = 0
        while warned < 3:
            time.sleep(0.25)
            if time.monotonic() - start > 5.0:
                log("WARN", "sched.go:655", "gpu VRAM usage didn't recover within timeout",
                    seconds=round(time.monotonic() - start, 9), model=r.info.model_path)
                warned += 1
            log_refresh_failure(self.gpus)

    def _reap_locked(self) -> None:
        now = time.time_ns()
        for r in list(self.runners.values()):
            if r.refs == 0 and r.expires_ns is not None and r.expires_ns <= now:
                self._unload_locked(r)

    def reap(self) -> None:
        with self.cond:
            self._reap_locked()

    def snapshot(self) -> list[dict]:
        vram = self.on_gpu
        now = time.time_ns()
        out = []
        with self.cond:
            self._reap_locked()
            for r in self.runners.values():
                if r.refs > 0 or r.expires_ns is None:
                    exp = now + r.session_ns if r.session_ns < FOREVER_NS else now + FOREVER_NS
                else:
                    exp = r.expires_ns
                size = r.info.manifest.size()
                out.append({
                    "name": r.info.short,
                    "model": r.info.short,
                    "size": size,
                    "digest": r.info.manifest.digest,
                    "details": r.info.details(),
                    "expires_at": exp,
                    "size_vram": size if vram and not r.cpu else 0,
                })
                if self.default_num_ctx is not None:
                    out[-1]["context_length"] = r.num_ctx
        out.sort(key=lambda m: m["expires_at"], reverse=True)
        for m in out:
            m["expires_at"] = go_time(m["expires_at"])
        return out


def _start_time() -> int | None:
    """This process's start time, in clock ticks since boot (/proc/self/stat field 22)."""
    try:
        with open("/proc/self/stat", encoding="utf-8") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _model_num_ctx(info: ModelInfo) -> int:
    """num_ctx of the model's own parameters (its params layer), 0 when it sets none."""
    v = (info.params or {}).get("num_ctx")
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0

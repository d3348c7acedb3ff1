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
sched.go:655 after 5 s, and a load that waits for that unload waits as long.
"""

from __future__ import annotations

import threading
import time

from .apierror import ApiError
from .discover import _nvidia_visible, gpu_access_lost, log_refresh_failure
from .envconfig import env_float, log, log_raw
from .goformat import FOREVER_NS, go_time
from .store import ModelInfo

ERR_MAX_QUEUE = "server busy, please try again.  maximum pending requests exceeded"


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
                    if r is not None:
                        break
                    if len(self.runners) < self.max_loaded:
                        lost = self.on_gpu and gpu_access_lost()
                        if lost:  # the GetGPUInfo refresh before the load
                            log_refresh_failure(self.gpus)
                        time.sleep(env_float("OLLAMA_LAB_LOAD_SECONDS", 0.3))  # the load
                        r = Runner(info, self.num_parallel)
                        r.num_ctx = num_ctx or _model_num_ctx(info) or self.default_num_ctx or 0
                        if lost:  # the runner process's ggml-cuda (its stderr, as is)
                            r.cuda_failed = True
                            log_runner("ggml_cuda_init: failed to initialize CUDA: unknown error")
                        self.runners[key] = r
                        log("INFO", "sched.go:788", "loaded lab runner",
                            model=info.short, parallel=self.num_parallel,
                            library="cuda" if self.on_gpu else "cpu")
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
                    "size_vram": size if vram else 0,
                })
                if self.default_num_ctx is not None:
                    out[-1]["context_length"] = r.num_ctx
        out.sort(key=lambda m: m["expires_at"], reverse=True)
        for m in out:
            m["expires_at"] = go_time(m["expires_at"])
        return out


def _model_num_ctx(info: ModelInfo) -> int:
    """num_ctx of the model's own parameters (its params layer), 0 when it sets none."""
    v = (info.params or {}).get("num_ctx")
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0

"""The scheduler (server/sched.go): loaded models, keep-alive, parallelism, queue."""

from __future__ import annotations

import threading
import time

from .apierror import ApiError
from .discover import _nvidia_visible
from .envconfig import env_float, log
from .goformat import FOREVER_NS, go_time
from .store import ModelInfo

ERR_MAX_QUEUE = "server busy, please try again.  maximum pending requests exceeded"


class Runner:
    def __init__(self, info: ModelInfo, num_parallel: int):
        self.info = info
        self.sem = threading.Semaphore(max(1, num_parallel))
        self.refs = 0
        self.session_ns: int | None = None  # set by the request that loads it
        self.expires_ns: int | None = None
        self.unload_requested = False
        self.loaded_ns = time.time_ns()


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

    def acquire(self, info: ModelInfo, keep_alive_ns: int | None) -> Runner:
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
                        time.sleep(env_float("OLLAMA_LAB_LOAD_SECONDS", 0.3))  # the load
                        r = Runner(info, self.num_parallel)
                        self.runners[key] = r
                        log("INFO", "sched.go:788", "loaded lab runner",
                            model=info.short, parallel=self.num_parallel,
                            library="cuda" if self.on_gpu else "cpu")
                        break
                    idle = [x for x in self.runners.values() if x.refs == 0]
                    if idle:
                        victim = min(idle, key=lambda x: x.expires_ns or 0)
                        self._unload_locked(victim)
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
        self.cond.notify_all()

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
        out.sort(key=lambda m: m["expires_at"], reverse=True)
        for m in out:
            m["expires_at"] = go_time(m["expires_at"])
        return out

"""The running server's state: its store, GPU discovery, scheduler and settings.

``serve`` makes it once, as STATE; the handlers read it there (``state.STATE``).
"""

from __future__ import annotations

import os

from .discover import Discovery, _gpu_count
from .envconfig import (
    LAB_DIR,
    env_bool,
    env_uint,
    env_var,
    keep_alive_default_ns,
    lab_version,
    models_dir,
)
from .releases import is_current
from .scheduler import Scheduler
from .store import Store


class ServerState:
    def __init__(self):
        self.version = lab_version()
        self.current = is_current(self.version)  # the behaviours read at v0.32.15
        self.store = Store(models_dir())
        self.discovery = Discovery(self.version)
        # defaultModelsPerGPU (3) per GPU; on CPU the one CPU "GPU" of GetGPUInfo
        gpus = _gpu_count() if self.discovery.on_gpu else 0
        self.sched = Scheduler(
            num_parallel=env_uint("OLLAMA_NUM_PARALLEL", 1) or 1,
            max_queue=env_uint("OLLAMA_MAX_QUEUE", 512),
            max_loaded=env_uint("OLLAMA_MAX_LOADED_MODELS", 0) or 3 * max(1, gpus),
            keep_alive_ns=keep_alive_default_ns(),
        )
        self.sched.on_gpu = self.discovery.on_gpu
        self.sched.gpus = self.discovery.gpus
        self.sched.version = self.version
        self.default_num_ctx = default_num_ctx(self.discovery.total_vram())
        if self.current:
            self.sched.default_num_ctx = self.default_num_ctx
        self.unhealthy_env = env_bool("OLLAMA_LAB_UNHEALTHY")
        self.loopback = True
        self.origins = _allowed_origins()

    def unhealthy(self) -> bool:
        return self.unhealthy_env or os.path.exists(os.path.join(LAB_DIR, "lab-unhealthy"))


STATE: ServerState | None = None

GIB = 1 << 30


def default_num_ctx(total_vram: int) -> int:
    """server/routes.go Serve (v0.32.15): the default context by the GPUs' total memory,
    with thresholds a little under 48 and 24 GiB; OLLAMA_CONTEXT_LENGTH, when set, is
    used instead (envconfig.ContextLength)."""
    configured = env_uint("OLLAMA_CONTEXT_LENGTH", 0)
    if configured:
        return configured
    if total_vram >= 47 * GIB:
        return 262144
    if total_vram >= 23 * GIB:
        return 32768
    return 4096


def _allowed_origins() -> list[str]:
    origins = [o.strip() for o in env_var("OLLAMA_ORIGINS").split(",") if o.strip()]
    for h in ("localhost", "127.0.0.1", "0.0.0.0"):
        origins += [f"http://{h}", f"https://{h}", f"http://{h}:*", f"https://{h}:*"]
    origins += ["app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"]
    return origins

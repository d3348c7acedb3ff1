"""``ollama serve``: the listener, the start (and the lab's broken starts), the reaper
of expired models, signals."""

from __future__ import annotations

import errno
import ipaddress
import os
import signal
import socket
import sys
import threading
import time
from http.server import ThreadingHTTPServer

from . import cloud, state
from .envconfig import LAB_DIR, env_bool, env_var, log, parse_ollama_host
from .goformat import human_bytes2
from .routes import Handler
from .scheduler import Scheduler
from .state import ServerState


class LabHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


def _bind(host: str, port: int) -> LabHTTPServer:
    if host in ("", "::"):
        try:
            class V6(LabHTTPServer):
                address_family = socket.AF_INET6

                def server_bind(self):
                    self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                    super().server_bind()

            return V6(("::", port), Handler)
        except OSError:
            if host == "::":
                raise
            return LabHTTPServer(("0.0.0.0", port), Handler)
    if ":" in host:
        class V6Only(LabHTTPServer):
            address_family = socket.AF_INET6
        return V6Only((host, port), Handler)
    return LabHTTPServer((host, port), Handler)


def _reaper(sched: Scheduler, stop: threading.Event) -> None:
    while not stop.wait(0.2):
        sched.reap()


def _lab_crash_after() -> float | None:
    try:
        with open(os.path.join(LAB_DIR, "lab-crash-after")) as f:
            return float(f.read().strip() or "3")
    except (OSError, ValueError):
        return None


def _crash(after_s: float) -> None:
    """A Go panic: the message, a goroutine trace on stderr, exit status 2, no cleanup."""
    time.sleep(after_s)
    sys.stderr.write(f"panic: lab: this build crashes in GPU discovery {after_s:g}s after "
                     "start\n\n"
                     "goroutine 1 [running]:\nmain.main()\n"
                     "\t/go/src/github.com/ollama/ollama/main.go:12 +0x1d\n")
    sys.stderr.flush()
    os._exit(2)


def serve() -> int:
    scheme, host, port_s = parse_ollama_host()
    state.STATE = ServerState()
    st = state.STATE
    env_keys = ["CUDA_VISIBLE_DEVICES", "OLLAMA_DEBUG", "OLLAMA_HOST", "OLLAMA_KEEP_ALIVE",
                "OLLAMA_MAX_LOADED_MODELS", "OLLAMA_MAX_QUEUE", "OLLAMA_MODELS",
                "OLLAMA_NOPRUNE", "OLLAMA_NUM_PARALLEL", "OLLAMA_ORIGINS"]
    if st.current:
        env_keys += ["OLLAMA_CONTEXT_LENGTH", "OLLAMA_NO_CLOUD"]
        env_keys.sort()
    env_map = {k: env_var(k) for k in env_keys}
    env_map["OLLAMA_HOST"] = f"{scheme}://{host}:{port_s}"
    env_map["OLLAMA_MODELS"] = st.store.root
    if st.current:
        cloud.init()  # cloud_proxy.go's init(), before Serve
    log("INFO", "routes.go:1205", "server config",
        env="map[" + " ".join(f"{k}:{v}" for k, v in env_map.items()) + "]")
    if st.current:
        log("INFO", "routes.go:1952", f"Ollama cloud disabled: {str(cloud.disabled()).lower()}")
        cloud.ensure_key()  # cmd.go RunServer: initializeKeypair
    if os.path.exists(os.path.join(LAB_DIR, "lab-exit-at-start")):
        sys.stderr.write("Error: lab: this build exits at start (a deliberately broken "
                         "release)\n")
        return 1
    try:
        st.store.ensure_dirs()
    except OSError as e:
        sys.stderr.write(f"Error: mkdir {st.store.root}: {e.strerror or e}\n")
        return 1
    if not env_bool("OLLAMA_NOPRUNE"):
        st.store.prune()
    try:
        httpd = _bind(host, int(port_s))
    except OSError as e:
        reason = "address already in use" if e.errno == errno.EADDRINUSE else (e.strerror or e)
        sys.stderr.write(f"Error: listen tcp {host}:{port_s}: bind: {reason}\n")
        return 1
    bound = httpd.server_address
    bhost, bport = bound[0], bound[1]
    try:
        st.loopback = ipaddress.ip_address(bhost).is_loopback
    except ValueError:
        st.loopback = False
    shown = f"[{bhost}]:{bport}" if ":" in bhost else f"{bhost}:{bport}"
    log("INFO", "routes.go:1258", f"Listening on {shown} (version {st.version})")
    if st.unhealthy():
        log("WARN", "routes.go:1259", "lab: this build is deliberately unhealthy; every request "
            "will fail with HTTP 500")
    log("INFO", "gpu.go:217", "looking for compatible GPUs")
    crash_after = _lab_crash_after()
    if crash_after is not None:
        _crash(crash_after)  # as a panic in GPU discovery: bound, never answering
    st.discovery.log()
    if st.current:
        log("INFO", "routes.go:2058", "vram-based default context",
            total_vram=human_bytes2(st.discovery.total_vram()),
            default_num_ctx=st.default_num_ctx)
    stop = threading.Event()
    threading.Thread(target=_reaper, args=(st.sched, stop), daemon=True).start()
    st.sched.publish_usage()  # nothing held yet: a file of an earlier process is void

    def _on_signal(signum, frame):
        stop.set()
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    def _on_cpu(signum, frame):  # lab only (`python -m lab fault HOST cpu`, and its clear)
        threading.Thread(target=st.sched.set_cpu_fallback, args=(signum == signal.SIGUSR1,),
                         daemon=True).start()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGUSR1, _on_cpu)
    signal.signal(signal.SIGUSR2, _on_cpu)
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()
    return 0

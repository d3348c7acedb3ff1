"""Environment (envconfig semantics) and logging (slog text handler + gin).

The variables are read with upstream's names and semantics (envconfig/config.go); the log
lines are slog's text handler and gin's access log, at the level OLLAMA_DEBUG sets. The
two are one room: a variable that does not parse is logged, and the log reads its level
from the environment.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import math
import os
import sys
import threading
import time

from .goformat import FOREVER_NS, DurationError, _tz_suffix, go_duration_str, parse_go_duration

DEFAULT_PORT = 11434
LAB_DIR = "/usr/lib/ollama"


def env_var(key: str) -> str:
    """envconfig.Var: trimmed, surrounding quotes removed."""
    return os.environ.get(key, "").strip().strip("\"'")


def env_bool(key: str) -> bool:
    """envconfig.Bool: unset/empty is false, unparsable is true."""
    s = env_var(key)
    if not s:
        return False
    if s in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if s in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return True


def env_uint(key: str, default: int) -> int:
    s = env_var(key)
    if not s:
        return default
    try:
        n = int(s, 10)
        if n < 0:
            raise ValueError
        return n
    except ValueError:
        log("WARN", "envconfig.go:139", "invalid environment variable, using default",
            key=key, value=s, default=default)
        return default


def env_float(key: str, default: float) -> float:
    s = env_var(key)
    if not s:
        return default
    try:
        v = float(s)
        return v if math.isfinite(v) and v >= 0 else default
    except ValueError:
        return default


def lab_version() -> str:
    v = env_var("OLLAMA_LAB_VERSION")
    if v:
        return v
    try:
        with open(os.path.join(LAB_DIR, "lab-version"), encoding="utf-8") as f:
            v = f.read().strip()
    except OSError:
        v = ""
    return v or "0.0.0"


def models_dir() -> str:
    d = env_var("OLLAMA_MODELS")
    if d:
        return d
    return os.path.join(os.path.expanduser("~"), ".ollama", "models")


def parse_ollama_host() -> tuple[str, str, str]:
    """envconfig.Host(): returns (scheme, host, port); host may be ''."""
    default_port = str(DEFAULT_PORT)
    s = env_var("OLLAMA_HOST")
    scheme, sep, hostport = s.partition("://")
    if not sep:
        scheme, hostport = "http", s
    elif scheme == "http":
        default_port = "80"
    elif scheme == "https":
        default_port = "443"
    hostport = hostport.split("/", 1)[0]
    host, port = _split_host_port(hostport)
    if host is None:
        host, port = "127.0.0.1", default_port
        bare = hostport.strip("[]")
        try:
            host = str(ipaddress.ip_address(bare))
        except ValueError:
            if hostport:
                host = hostport
    try:
        n = int(port)
        if n < 0 or n > 65535:
            raise ValueError
    except ValueError:
        port = default_port
    return scheme, host, port


def _split_host_port(hp: str) -> tuple[str | None, str]:
    """net.SplitHostPort; (None, '') when there is no port."""
    if hp.startswith("["):
        end = hp.find("]")
        if end < 0 or not hp[end + 1:].startswith(":"):
            return None, ""
        return hp[1:end], hp[end + 2:]
    if hp.count(":") != 1:
        return None, ""
    host, _, port = hp.partition(":")
    return host, port


def keep_alive_default_ns() -> int:
    """envconfig.KeepAlive."""
    ka = 5 * 60 * 1_000_000_000
    s = env_var("OLLAMA_KEEP_ALIVE")
    if s:
        try:
            ka = parse_go_duration(s)
        except DurationError:
            try:
                ka = int(s, 10) * 1_000_000_000
            except ValueError:
                pass
    return FOREVER_NS if ka < 0 else ka


# ---------------------------------------------------------------------------
# logging (slog text handler + gin)
# ---------------------------------------------------------------------------

_LOG_LOCK = threading.Lock()
_LEVELS = {"DEBUG": 10, "INFO": 20, "WARN": 30, "ERROR": 40}


def _log_level() -> int:
    return 10 if env_bool("OLLAMA_DEBUG") else 20


def _slog_value(v) -> str:
    s = v if isinstance(v, str) else json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    if s == "" or any(c in s for c in ' ="\\') or not s.isprintable():
        return json.dumps(s, ensure_ascii=False)
    return s


def log(level: str, source: str, msg: str, _raw: str = "", **attrs) -> None:
    """One slog line; _RAW is what a C library printed to stderr just before it, without
    a newline, so that it starts the same line."""
    if _LEVELS[level] < _log_level():
        return
    now = datetime.datetime.now().astimezone()
    ts = now.strftime("%Y-%m-%dT%H:%M:%S") + f".{now.microsecond // 1000:03d}" + _tz_suffix(now)
    parts = [f"time={ts}", f"level={level}", f"source={source}", f"msg={_slog_value(msg)}"]
    parts += [f"{k}={_slog_value(v)}" for k, v in attrs.items()]
    line = _raw + " ".join(parts) + "\n"
    with _LOG_LOCK:
        try:
            sys.stderr.write(line)
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


def log_raw(text: str) -> None:
    """Text another program (a runner subprocess) wrote to stderr, passed on as it is."""
    with _LOG_LOCK:
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


def gin_log(status: int, latency_ns: int, client_ip: str, method: str, path: str) -> None:
    ts = time.strftime("%Y/%m/%d - %H:%M:%S")
    line = (f"[GIN] {ts} | {status:3d} | {go_duration_str(latency_ns):>13} | {client_ip:>15} |"
            f" {method:<7}  {json.dumps(path)}\n")
    with _LOG_LOCK:
        try:
            sys.stderr.write(line)
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

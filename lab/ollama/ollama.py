#!/usr/bin/env python3
"""Lab stand-in for the ``ollama`` binary (server and CLI).

No image registry is reachable from the lab, so the fleet images carry this
single stdlib-only file as ``/usr/bin/ollama`` instead of the real Go binary.
It follows upstream Ollama's documented REST API and CLI (docs/api.md,
server/routes.go, types/model/name.go, server/images.go, server/download.go of
the 0.6 series) closely enough that code tested against it also works against
real Ollama: same routes, field names, status codes, error texts, model-name
rules, on-disk store layout and pull protocol. Inference is fake: replies are
deterministic words derived from the prompt and embeddings are unit vectors
derived from a hash of the input.

The OpenAI-compatible routes (``/v1/chat/completions``, ``/v1/completions``,
``/v1/embeddings``, ``/v1/models``, ``/v1/models/{model}``) work as upstream's
middleware in openai/openai.go (0.7 series) does: the OpenAI request is translated
into the native one, the native handler runs unchanged (model lookup, load,
keep-alive, tokens), and its answer is translated back, streamed as Server-Sent
Events when asked, errors as ``{"error": {"message", "type", "param", "code"}}``.

Commands (as real ``ollama``)::

    ollama serve                   HTTP server on $OLLAMA_HOST
    ollama list | ls               NAME ID SIZE MODIFIED table (also the container healthcheck)
    ollama ps                      NAME ID SIZE PROCESSOR UNTIL table
    ollama pull [--insecure] NAME  progress on stderr, "Error: ..." and exit 1 on failure
    ollama rm NAME...              unload, then delete
    ollama cp SRC DST | show NAME | stop NAME | run NAME [PROMPT]
    ollama --version | -v          "ollama version is X" (warnings when no server answers)

Environment read with upstream's names and semantics:

    OLLAMA_HOST               listen / connect address, ``host:port``, ``:port`` or
                              ``http://host:port``; default 127.0.0.1:11434
    OLLAMA_MODELS             store directory; default ~/.ollama/models
    OLLAMA_KEEP_ALIVE         default keep-alive (5m; Go durations or seconds; <0 = forever)
    OLLAMA_NUM_PARALLEL       concurrent requests per loaded model (default 1; others wait)
    OLLAMA_MAX_QUEUE          waiting requests before 503 "server busy" (default 512)
    OLLAMA_MAX_LOADED_MODELS  loaded models before idle ones are evicted (default 3 per GPU)
    OLLAMA_NOPRUNE            when unset, unreferenced blobs (and -partial files) are
                              removed at startup and after a pull replaces a model
    OLLAMA_DEBUG              debug logging
    OLLAMA_ORIGINS            extra allowed CORS origins
    NVIDIA_VISIBLE_DEVICES    set (not empty/void/none): GPU discovery finds the container's
                              GPUs and loaded models report size_vram=size, unless CUDA
                              fails to initialise (see /etc/fleetlab/cuda.json below)

Lab-only settings (set by the lab's image recipe, never by deploy files):

    OLLAMA_LAB_VERSION        version reported by /api/version and --version; default is
                              the content of /usr/lib/ollama/lab-version, else "0.0.0";
                              behaviours that changed between releases follow it (the
                              0.9 think check, the 0.18 OpenAI error types)
    OLLAMA_LAB_UNHEALTHY      "1" (or the file /usr/lib/ollama/lab-unhealthy existing):
                              the server listens but answers every request with HTTP 500
                              {"error":"lab: this build is deliberately unhealthy"}, so
                              ``ollama list`` fails and the instance never becomes healthy
    /usr/lib/ollama/lab-exit-at-start   (file) ``serve`` fails before it listens, as a
                              fatal start error does: ``Error: ...`` on stderr, exit 1
    /usr/lib/ollama/lab-crash-after     (file holding seconds) ``serve`` binds its port,
                              then panics that many seconds later in GPU discovery, before
                              it answers anything, as a Go program does: a ``panic: ...``
                              line, a goroutine trace, exit status 2
    OLLAMA_LAB_REGISTRY       base URL (e.g. http://10.20.0.2:8081) used instead of
                              https://registry.ollama.ai for names on the default host
    OLLAMA_LAB_TOKEN_DELAY    seconds before each generated token (default 0.02)
    OLLAMA_LAB_LOAD_SECONDS   seconds a model takes to load when it is not loaded yet
                              (default 0.3; reported in load_duration, as Ollama reports
                              its load); one load at a time, as Ollama's scheduler does
    OLLAMA_LAB_TOKENS         tokens per reply when options.num_predict is not given (16)
    OLLAMA_LAB_PART_SCALE     multiplies upstream's download part sizes (100 MB to 1000 MB,
                              a sixteenth of the blob; default 1, upstream's own)

Simulated GPUs (written into the container by the lab's NVIDIA hook; every path is
prefixed with $FLEETLAB_ROOT when that is set, as the NVIDIA stand-ins do):

    /etc/fleetlab/gpus.json   the container's GPUs: GPU discovery reports each one in an
                              ``inference compute`` line (name, memory)
    /etc/fleetlab/cuda.json   what cuInit answers: {"init_error": 802, ...} (no Fabric
                              Manager on an NVSwitch board) makes GPU discovery fail as
                              discover/gpu.go (v0.6.x, v0.7.x) does: the init failure is
                              logged, the server runs on CPU and every loaded model has
                              size_vram 0 ("100% CPU"). Read once, at start: a running
                              server stays on CPU until it restarts, as upstream's does.
    /run/fleetlab/nvidia-driver-loaded  the driver version (libcuda.so's name, CUDA version)

Store layout is upstream's: ``manifests/<host>/<namespace>/<model>/<tag>`` holds
the manifest as Ollama re-encodes it (json.Marshal of its Manifest struct: compact,
its own field order, unknown fields dropped; the file's sha256 is the model ID that
``/api/tags`` and ``ollama list`` show), ``blobs/sha256-<hex>`` the blobs. A pull
works as server/download.go (v0.6.8 to v0.7.1) does: HEAD the registry's blob URL
(following redirects) for the size; cut it in parts (a sixteenth, 100 MB to 1000 MB);
create ``sha256-<hex>-partial`` at its full size and one ``-partial-N`` JSON file per
part (what resumes a pull); GET the registry's blob URL following redirects only while
the host name stays the same, and take the ``Location`` of the first one that leaves
it (a 200 with no Location fails: ``http: no Location header in response``); fetch
the parts there with Range requests in parallel (6 attempts each, short backoff);
rename the partial file to ``sha256-<hex>``; verify every downloaded blob's sha256
(a mismatch removes it); write the manifest last (temp file + rename). ``/api/tags``
lists every manifest whose config blob reads, even when a layer blob is missing.
"""

from __future__ import annotations

import base64
import datetime
import errno
import hashlib
import http.client
import ipaddress
import json
import math
import os
import random
import re
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# ---------------------------------------------------------------------------
# constants
# ---------------------------------------------------------------------------

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
DEFAULT_REGISTRY_URL = "https://registry.ollama.ai"
DEFAULT_PORT = 11434
LAB_DIR = "/usr/lib/ollama"
UNHEALTHY_MSG = "lab: this build is deliberately unhealthy"
ERR_MAX_QUEUE = "server busy, please try again.  maximum pending requests exceeded"
ERR_NOT_EXIST = "file does not exist"
CONNECT_ERROR = "could not connect to ollama app, is it running?"
MAX_DOWNLOAD_ATTEMPTS = 6  # server/download.go maxRetries
NUM_DOWNLOAD_PARTS = 16  # server/download.go numDownloadParts (also the parallel parts)
MIN_DOWNLOAD_PART_SIZE = 100 * 1000 * 1000  # minDownloadPartSize, 100 format.MegaByte
MAX_DOWNLOAD_PART_SIZE = 1000 * 1000 * 1000  # maxDownloadPartSize
DIRECT_URL_TIMEOUT_S = 30  # the directURL closure's context.WithTimeout
MAX_REDIRECTS = 10
PART_STALL_S = 30  # downloadChunk: a part with no byte for 30 s is stalled
ERR_NO_LOCATION = "http: no Location header in response"  # net/http ErrNoLocation
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 1.0
EMBED_DIM = 384
FOREVER_NS = (1 << 63) - 1
MT_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_MODEL = "application/vnd.ollama.image.model"
MT_TEMPLATE = "application/vnd.ollama.image.template"
MT_PARAMS = "application/vnd.ollama.image.params"
MT_SYSTEM = "application/vnd.ollama.image.system"
MT_LICENSE = "application/vnd.ollama.image.license"
MT_PROJECTOR = "application/vnd.ollama.image.projector"
MT_MESSAGES = "application/vnd.ollama.image.messages"
TEXT_LAYER_TYPES = (MT_TEMPLATE, MT_SYSTEM, MT_PARAMS, MT_MESSAGES, MT_LICENSE,
                    "application/vnd.ollama.image.prompt")  # GetModel reads these
DIGEST_RE = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")
FILLER = (
    "the fleet lab replies with synthetic words so that every test stays quick and "
    "repeatable while each token still arrives on its own line"
).split()


# ---------------------------------------------------------------------------
# environment (envconfig semantics)
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Go-compatible formatting helpers
# ---------------------------------------------------------------------------

_DUR_UNITS = {
    "ns": 1, "us": 1_000, "\u00b5s": 1_000, "\u03bcs": 1_000, "ms": 1_000_000,
    "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000,
}
_DUR_RE = re.compile(r"(\d*)(?:\.(\d*))?([^\d.]*)")


class DurationError(ValueError):
    pass


def parse_go_duration(orig: str) -> int:
    """time.ParseDuration, in nanoseconds."""
    s = orig
    neg = False
    if s and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise DurationError(f'time: invalid duration "{orig}"')
    total = 0.0
    while s:
        m = _DUR_RE.match(s)
        if not m or (not m.group(1) and not m.group(2)):
            raise DurationError(f'time: invalid duration "{orig}"')
        unit = m.group(3)
        if not unit:
            raise DurationError(f'time: missing unit in duration "{orig}"')
        if unit not in _DUR_UNITS:
            raise DurationError(f'time: unknown unit "{unit}" in duration "{orig}"')
        num = float((m.group(1) or "0") + "." + (m.group(2) or "0"))
        total += num * _DUR_UNITS[unit]
        s = s[m.end():]
    ns = int(total)
    return -ns if neg else ns


def go_duration_str(ns: int) -> str:
    """time.Duration.String (approximately, enough for logs)."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_trim_float(ns / 1e3)}\u00b5s"
    if ns < 1_000_000_000:
        return f"{sign}{_trim_float(ns / 1e6)}ms"
    secs = ns / 1e9
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    out = sign
    if h:
        out += f"{int(h)}h"
    if h or m:
        out += f"{int(m)}m"
    return out + f"{_trim_float(s)}s"


def _trim_float(v: float) -> str:
    s = f"{v:.9f}".rstrip("0").rstrip(".")
    return s or "0"


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


def go_time(ts_ns: int, utc: bool = False) -> str:
    """time.Time JSON form (RFC3339Nano)."""
    sec, frac_ns = divmod(ts_ns, 1_000_000_000)
    try:
        if utc:
            dt = datetime.datetime.fromtimestamp(sec, tz=datetime.timezone.utc)
        else:
            dt = datetime.datetime.fromtimestamp(sec).astimezone()
    except (OverflowError, OSError, ValueError):
        dt = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc)
    frac = f".{frac_ns:09d}".rstrip("0") if frac_ns else ""
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + frac + _tz_suffix(dt)


def _tz_suffix(dt: datetime.datetime) -> str:
    off = dt.utcoffset() or datetime.timedelta(0)
    total = int(off.total_seconds())
    if total == 0:
        return "Z"
    sign = "+" if total > 0 else "-"
    total = abs(total)
    return f"{sign}{total // 3600:02d}:{total % 3600 // 60:02d}"


def go_json(obj) -> bytes:
    """encoding/json output: compact, HTML characters escaped."""
    s = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    s = (s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
         .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
    return s.encode("utf-8")


def go_json_decode_error(raw: bytes, err: ValueError) -> str:
    """Approximate encoding/json syntax error text."""
    text = raw.decode("utf-8", "replace")
    pos = getattr(err, "pos", None)
    if pos is None or pos >= len(text.rstrip()):
        return "unexpected EOF"
    ch = text[pos]
    msg = getattr(err, "msg", "")
    if msg.startswith("Expecting property name"):
        return f"invalid character '{ch}' looking for beginning of object key string"
    if msg.startswith("Expecting ':'"):
        return f"invalid character '{ch}' after object key"
    if msg.startswith("Expecting ',' delimiter"):
        return f"invalid character '{ch}' after object key:value pair"
    if msg.startswith("Extra data"):
        return f"invalid character '{ch}' after top-level value"
    return f"invalid character '{ch}' looking for beginning of value"


def human_bytes(b: int) -> str:
    """format.HumanBytes."""
    value, unit = float(b), ""
    for limit, name in ((10**12, "TB"), (10**9, "GB"), (10**6, "MB"), (10**3, "KB")):
        if b >= limit:
            value, unit = b / limit, name
            break
    if not unit:
        return f"{b} B"
    if value >= 10 or value == math.trunc(value):
        return f"{int(value)} {unit}"
    return f"{value:.1f} {unit}"


def _human_duration(secs: float) -> str:
    seconds = int(secs)
    if seconds < 1:
        return "Less than a second"
    if seconds == 1:
        return "1 second"
    if seconds < 60:
        return f"{seconds} seconds"
    minutes = int(secs / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(round(secs / 3600))
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(secs / 3600 / 24 / 365)} years"


def human_time(ts: float | None, zero: str) -> str:
    """format.HumanTime."""
    if ts is None:
        return zero
    delta = time.time() - ts
    if delta / 86400 / 365 < -20:
        return "Forever"
    if delta < 0:
        return _human_duration(-delta) + " from now"
    return _human_duration(delta) + " ago"


def parse_rfc3339(s: str) -> float | None:
    if not s:
        return None
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", s)
    if not m:
        return None
    tz = "+00:00" if m.group(3) == "Z" else m.group(3)
    try:
        dt = datetime.datetime.fromisoformat(m.group(1) + tz)
    except ValueError:
        return None
    return dt.timestamp() + float("0." + (m.group(2) or "0"))


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


def log(level: str, source: str, msg: str, **attrs) -> None:
    if _LEVELS[level] < _log_level():
        return
    now = datetime.datetime.now().astimezone()
    ts = now.strftime("%Y-%m-%dT%H:%M:%S") + f".{now.microsecond // 1000:03d}" + _tz_suffix(now)
    parts = [f"time={ts}", f"level={level}", f"source={source}", f"msg={_slog_value(msg)}"]
    parts += [f"{k}={_slog_value(v)}" for k, v in attrs.items()]
    line = " ".join(parts) + "\n"
    with _LOG_LOCK:
        try:
            sys.stderr.write(line)
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


# ---------------------------------------------------------------------------
# model names (types/model/name.go)
# ---------------------------------------------------------------------------

_MISSING = "!MISSING!"


class Name:
    __slots__ = ("host", "namespace", "model", "tag")

    def __init__(self, host: str = "", namespace: str = "", model: str = "", tag: str = ""):
        self.host, self.namespace, self.model, self.tag = host, namespace, model, tag

    def parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)

    def is_valid(self) -> bool:
        return all(_is_valid_part(i, p) for i, p in enumerate(self.parts()))

    def display_shortest(self) -> str:
        if self.host.lower() != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace.lower() != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        else:
            prefix = ""
        return f"{prefix}{self.model}:{self.tag}"

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def fold(self) -> tuple[str, ...]:
        return tuple(p.lower() for p in self.parts())


def _cut_promised(s: str, sep: str) -> tuple[str, str, bool]:
    i = s.rfind(sep)
    if i < 0:
        return s, "", False
    return (s[:i] or _MISSING), (s[i + len(sep):] or _MISSING), True


def parse_name(s: str) -> Name:
    """model.ParseName: parse, then fill host/namespace/tag defaults."""
    n = Name()
    if s.rfind(":") > s.rfind("/"):
        s, n.tag, _ = _cut_promised(s, ":")
    s, n.model, promised = _cut_promised(s, "/")
    if not promised:
        n.model = s
    else:
        s, n.namespace, promised = _cut_promised(s, "/")
        if not promised:
            n.namespace = s
        else:
            scheme, sep, rest = s.partition("://")
            n.host = rest if sep else scheme
    n.host = n.host or DEFAULT_HOST
    n.namespace = n.namespace or DEFAULT_NAMESPACE
    n.tag = n.tag or DEFAULT_TAG
    return n


def _alnum_(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9") or c == "_"


def _is_valid_part(kind: int, s: str) -> bool:
    limit = 350 if kind == 0 else 80
    if not 1 <= len(s) <= limit:
        return False
    for i, c in enumerate(s):
        if i == 0:
            if not _alnum_(c):
                return False
            continue
        if c in "_-":
            continue
        if c == ".":
            if kind == 1:
                return False
            continue
        if c == ":":
            if kind != 0:
                return False
            continue
        if not _alnum_(c):
            return False
    return True


# ---------------------------------------------------------------------------
# store
# ---------------------------------------------------------------------------


class StoreError(Exception):
    pass


class Manifest:
    def __init__(self, name: Name, raw: bytes, obj: dict, mtime_ns: int):
        self.name = name
        self.raw = raw
        self.obj = obj
        self.mtime_ns = mtime_ns
        self.digest = hashlib.sha256(raw).hexdigest()
        cfg = obj.get("config") if isinstance(obj.get("config"), dict) else {}
        self.config = cfg if cfg.get("digest") else None
        self.layers = [x for x in (obj.get("layers") or []) if isinstance(x, dict)]

    def all_layers(self) -> list[dict]:
        return self.layers + ([self.config] if self.config else [])

    def size(self) -> int:
        total = 0
        for layer in self.all_layers():
            try:
                total += int(layer.get("size") or 0)
            except (TypeError, ValueError):
                pass
        return total


class ModelInfo:
    """What GetModel yields: a present model with its config and text layers."""

    def __init__(self, store: Store, mf: Manifest):
        self.name = mf.name
        self.manifest = mf
        self.short = mf.name.display_shortest()
        self.config: dict = {}
        self.template = ""
        self.system = ""
        self.license: list[str] = []
        self.params: dict = {}
        self.model_digest = ""
        self.model_path = ""
        self.has_projector = False
        self.model_present = False  # the model layer's blob is there (Capabilities opens it)
        if mf.config:
            try:
                with open(store.blob_path(mf.config["digest"]), "rb") as f:
                    cfg = json.loads(f.read() or b"{}")
                self.config = cfg if isinstance(cfg, dict) else {}
            except (OSError, ValueError, StoreError):
                self.config = {}
        for layer in mf.layers:
            mt, digest = layer.get("mediaType", ""), str(layer.get("digest", ""))
            try:
                path = store.blob_path(digest)
            except StoreError:
                continue
            if mt == MT_MODEL:
                self.model_digest, self.model_path = digest, path
                self.model_present = os.path.isfile(path)
            elif mt == MT_PROJECTOR:
                self.has_projector = True
            elif mt in (MT_TEMPLATE, MT_SYSTEM, MT_LICENSE, MT_PARAMS):
                try:
                    with open(path, "rb") as f:
                        text = f.read().decode("utf-8", "replace")
                except OSError:
                    continue
                if mt == MT_TEMPLATE:
                    self.template = text
                elif mt == MT_SYSTEM:
                    self.system = text
                elif mt == MT_LICENSE:
                    self.license.append(text)
                else:
                    try:
                        p = json.loads(text or "{}")
                        self.params = p if isinstance(p, dict) else {}
                    except ValueError:
                        self.params = {}

    @property
    def family(self) -> str:
        return str(self.config.get("model_family") or "")

    def details(self) -> dict:
        c = self.config
        fams = c.get("model_families")
        return {
            "parent_model": "",
            "format": str(c.get("model_format") or ""),
            "family": self.family,
            "families": fams if isinstance(fams, list) else None,
            "parameter_size": str(c.get("model_type") or ""),
            "quantization_level": str(c.get("file_type") or ""),
        }

    def is_embedding(self) -> bool:
        fams = [self.family] + [str(x) for x in (self.config.get("model_families") or [])]
        return any("bert" in f.lower() for f in fams) or "embed" in self.name.model.lower()

    def capabilities(self) -> list[str]:
        """Model.Capabilities: completion or embedding come from the model file, so a
        model whose model layer blob is missing has neither (v0.6.8 images.go)."""
        if self.is_embedding():
            caps = ["embedding"] if self.model_present else []
        else:
            caps = ["completion"] if self.model_present else []
            if ".Tools" in self.template:
                caps.append("tools")
            if ".Suffix" in self.template:
                caps.append("insert")
        if self.has_projector:
            caps.append("vision")
        if not self.is_embedding() and ".Thinking" in self.template:
            caps.append("thinking")
        return caps

    def runner_key(self) -> str:
        return self.model_digest or str(self.name).lower()


class Store:
    def __init__(self, root: str):
        self.root = root
        self.blobs = os.path.join(root, "blobs")
        self.manifests = os.path.join(root, "manifests")
        self.lock = threading.RLock()

    def ensure_dirs(self) -> None:
        os.makedirs(self.blobs, exist_ok=True)
        os.makedirs(self.manifests, exist_ok=True)

    def blob_path(self, digest: str) -> str:
        if not isinstance(digest, str) or not DIGEST_RE.match(digest):
            raise StoreError("invalid digest format")
        return os.path.join(self.blobs, "sha256-" + digest[7:])

    def manifest_path(self, name: Name) -> str:
        return os.path.join(self.manifests, *name.parts())

    def list_names(self) -> list[Name]:
        out = []
        for host in _listdir(self.manifests):
            for ns in _listdir(os.path.join(self.manifests, host)):
                for model in _listdir(os.path.join(self.manifests, host, ns)):
                    d = os.path.join(self.manifests, host, ns, model)
                    for tag in _listdir(d):
                        n = Name(host, ns, model, tag)
                        if n.is_valid() and os.path.isfile(os.path.join(d, tag)):
                            out.append(n)
        return out

    def existing_name(self, name: Name) -> Name:
        """getExistingName: reuse the on-disk spelling of a case-insensitive match."""
        want = name.fold()
        for n in self.list_names():
            if n.fold() == want:
                return n
        return name

    def read_manifest(self, name: Name) -> Manifest | None:
        path = self.manifest_path(name)
        try:
            with open(path, "rb") as f:
                raw = f.read()
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict):
                raise ValueError("manifest is not an object")
        except ValueError as e:
            raise StoreError(f"bad manifest {name}: {e}") from None
        return Manifest(name, raw, obj, st.st_mtime_ns)

    def read_config(self, mf: Manifest) -> dict | None:
        """The config blob decoded, {} when the manifest names none; None when it names
        one that is missing or not a JSON object (ListHandler skips such a model, GetModel
        fails on it)."""
        if not mf.config:
            return {}
        try:
            with open(self.blob_path(str(mf.config.get("digest", ""))), "rb") as f:
                cfg = json.loads(f.read())
        except (OSError, ValueError, StoreError):
            return None
        return cfg if isinstance(cfg, dict) else None

    def complete(self, mf: Manifest) -> bool:
        for layer in mf.all_layers():
            try:
                if not os.path.isfile(self.blob_path(str(layer.get("digest", "")))):
                    return False
            except StoreError:
                return False
        return True

    def get_model(self, name: Name) -> ModelInfo | None:
        """GetModel (v0.6.8 server/images.go): None where upstream fails with a not-exist
        error: no manifest, the config blob missing, or a text layer (template, system,
        params, messages, license) missing. The model and projector layers are only
        named, not opened: a model whose model blob is gone is returned, with
        ``model_present`` False (show, generate and load then fail as upstream's do)."""
        try:
            mf = self.read_manifest(name)
        except StoreError:
            return None
        if mf is None or self.read_config(mf) is None:
            return None
        for layer in mf.layers:
            try:
                path = self.blob_path(str(layer.get("digest", "")))
            except StoreError:
                return None
            if layer.get("mediaType") in TEXT_LAYER_TYPES and not os.path.isfile(path):
                return None
        return ModelInfo(self, mf)

    def models(self) -> list[ModelInfo]:
        """What ListHandler (v0.6.8 server/routes.go) lists: every manifest that parses
        and whose config blob opens and decodes, whether or not its layer blobs are
        there; a missing or broken config blob leaves the model out (a warning)."""
        out = []
        for n in self.list_names():
            try:
                mf = self.read_manifest(n)
            except StoreError as e:
                log("WARN", "manifest.go:165", "bad manifest", name=str(n), error=str(e))
                continue
            if mf is None:
                continue
            if self.read_config(mf) is None:
                log("WARN", "routes.go:916", "bad manifest filepath", name=str(n),
                    error=f"config blob {mf.config.get('digest') if mf.config else ''}")
                continue
            out.append(ModelInfo(self, mf))
        return out

    def in_use_digests(self, exclude: Name | None = None) -> set[str] | None:
        used: set[str] = set()
        for n in self.list_names():
            if exclude is not None and n.parts() == exclude.parts():
                continue
            try:
                mf = self.read_manifest(n)
            except StoreError:
                return None
            if mf:
                used.update(str(x.get("digest", "")) for x in mf.all_layers())
        return used

    def write_manifest(self, name: Name, raw: bytes) -> None:
        path = self.manifest_path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path),
                           f".{name.tag}.tmp-{os.getpid()}-{threading.get_ident()}")
        try:
            with open(tmp, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def remove_blobs(self, digests: set[str]) -> None:
        """deleteUnusedLayers: remove the given blobs no manifest references."""
        used = self.in_use_digests()
        if used is None:
            return
        for d in digests - used:
            try:
                os.remove(self.blob_path(d))
            except (OSError, StoreError):
                pass

    def delete(self, name: Name) -> bool:
        with self.lock:
            try:
                mf = self.read_manifest(name)
            except StoreError:
                mf = None
            path = self.manifest_path(name)
            if not os.path.isfile(path):
                return False
            os.remove(path)
            self.prune_dirs()
            if mf is not None:
                self.remove_blobs({str(x.get("digest", "")) for x in mf.all_layers()})
            return True

    def copy(self, src: Name, dst: Name) -> bool:
        with self.lock:
            if src.parts() == dst.parts():
                return os.path.isfile(self.manifest_path(src))
            try:
                with open(self.manifest_path(src), "rb") as f:
                    raw = f.read()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return False
            self.write_manifest(dst, raw)
            return True

    def prune_dirs(self) -> None:
        """PruneDirectory: remove empty directories under manifests/."""
        for dirpath, _dirs, _files in os.walk(self.manifests, topdown=False):
            if dirpath == self.manifests:
                continue
            try:
                os.rmdir(dirpath)
            except OSError:
                pass

    def prune(self) -> None:
        """Startup PruneLayers: drop -partial files and unreferenced blobs."""
        with self.lock:
            used = self.in_use_digests()
            if used is None:
                log("WARN", "routes.go:1240", "corrupt manifests detected, skipping prune "
                    "operation.  Re-pull or delete to clear")
                return
            total = 0
            unused = []
            for fn in _listdir(self.blobs):
                path = os.path.join(self.blobs, fn)
                if not os.path.isfile(path):
                    continue
                digest = fn.replace("-", ":")
                if not DIGEST_RE.match(digest):
                    try:
                        os.remove(path)
                    except OSError as e:
                        log("ERROR", "images.go:455", "couldn't remove blob", blob=fn, error=str(e))
                    continue
                total += 1
                if digest not in used:
                    unused.append(path)
            log("INFO", "images.go:463", f"total blobs: {total}")
            for path in unused:
                try:
                    os.remove(path)
                except OSError:
                    pass
            log("INFO", "images.go:470", f"total unused blobs removed: {len(unused)}")
            self.prune_dirs()


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


# ---------------------------------------------------------------------------
# registry client and pull (server/images.go, server/download.go)
# ---------------------------------------------------------------------------


class PullError(Exception):
    pass


class _Retryable(Exception):
    pass


def registry_base(name: Name, insecure: bool) -> str:
    if name.host.lower() == DEFAULT_HOST:
        base = env_var("OLLAMA_LAB_REGISTRY") or DEFAULT_REGISTRY_URL
    else:
        base = "https://" + name.host
    if insecure and base.startswith("https://"):
        base = "http://" + base[len("https://"):]
    return base.rstrip("/")


def go_net_error(method: str, url: str, exc: BaseException) -> str:
    u = urllib.parse.urlsplit(url)
    host = u.hostname or ""
    port = u.port or (443 if u.scheme == "https" else 80)
    hp = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(exc, ConnectionRefusedError):
        detail = f"dial tcp {hp}: connect: connection refused"
    elif isinstance(exc, socket.gaierror):
        detail = f"dial tcp: lookup {host}: no such host"
    elif isinstance(exc, ssl.SSLCertVerificationError):
        detail = f"tls: failed to verify certificate: x509: {exc.verify_message or exc}"
    elif isinstance(exc, ssl.SSLError):
        text = str(exc)
        if any(k in text for k in ("WRONG_VERSION_NUMBER", "record layer failure",
                                   "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST", "UNEXPECTED_EOF")):
            detail = "http: server gave HTTP response to HTTPS client"
        else:
            detail = f"tls: {exc.reason or text}"
    elif isinstance(exc, (socket.timeout, TimeoutError)):
        detail = f"dial tcp {hp}: i/o timeout"
    elif isinstance(exc, OSError) and exc.errno == errno.ENETUNREACH:
        detail = f"dial tcp {hp}: connect: network is unreachable"
    elif isinstance(exc, OSError) and exc.errno == errno.EHOSTUNREACH:
        detail = f"dial tcp {hp}: connect: no route to host"
    elif isinstance(exc, ConnectionResetError):
        detail = f"read tcp {hp}: read: connection reset by peer"
    elif isinstance(exc, (http.client.IncompleteRead, http.client.RemoteDisconnected)):
        detail = "EOF"
    else:
        detail = str(exc) or exc.__class__.__name__
    return f'{method} "{url}": {detail}'


def _user_agent() -> str:
    return f"ollama/{lab_version()} (amd64 linux) Go/go1.24.0"


class _Stop:
    """CheckRedirect's http.ErrUseLastResponse: hand back the redirect response itself."""


USE_LAST_RESPONSE = _Stop()


def _default_check_redirect(url: str, via: list[str]):
    """net/http's default redirect policy: any host, at most 10 redirects."""
    if len(via) >= MAX_REDIRECTS:
        return "stopped after 10 redirects"
    return None


def go_do(method: str, url: str, headers: dict | None = None, check_redirect=None,
          timeout: float = 30.0):
    """http.Client.Do: send METHOD to URL, following redirects as CHECK_REDIRECT(next_url,
    via) allows (None: follow; USE_LAST_RESPONSE: return the redirect itself; a string:
    fail with it). Returns (conn, response, url of that response). Network errors raise
    _Retryable with Go's ``Get "URL": ...`` text. A 3xx without Location is returned."""
    check = check_redirect or _default_check_redirect
    via: list[str] = []
    for _ in range(MAX_REDIRECTS + 2):  # the policy stops by then; bounded regardless
        u = urllib.parse.urlsplit(url)
        op = method.capitalize()
        if u.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                u.hostname, u.port, timeout=timeout, context=ssl.create_default_context())
        elif u.scheme == "http":
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        else:
            raise PullError(f'{op} "{url}": unsupported protocol scheme "{u.scheme}"')
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        hdrs = {"User-Agent": _user_agent()}
        hdrs.update(headers or {})
        try:
            conn.request(method, path, headers=hdrs)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise _Retryable(go_net_error(op, url, e)) from None
        loc = resp.getheader("Location")
        if resp.status not in (301, 302, 303, 307, 308) or not loc:
            return conn, resp, url
        nxt = urllib.parse.urljoin(url, loc)
        via.append(url)
        verdict = check(nxt, via)
        if verdict is USE_LAST_RESPONSE:
            return conn, resp, url
        conn.close()
        if verdict is not None:
            raise _Retryable(f'{op} "{nxt}": {verdict}')
        if resp.status in (301, 302, 303) and method not in ("GET", "HEAD"):
            method = "GET"
        url = nxt
    raise _Retryable(f'{method.capitalize()} "{url}": stopped after 10 redirects')


def make_request_with_retry(method: str, url: str, headers: dict | None = None,
                            check_redirect=None):
    """makeRequestWithRetry (server/images.go): 404 is os.ErrNotExist, any other status
    >= 400 an error "STATUS: BODY"; network errors raise _Retryable."""
    conn, resp, final = go_do(method, url, headers, check_redirect)
    if resp.status < 400:
        return conn, resp, final
    try:
        body = b"" if method == "HEAD" else resp.read(65536)
    except (OSError, http.client.HTTPException) as e:
        body = str(e).encode()
    finally:
        conn.close()
    if resp.status == 404:
        raise PullError(ERR_NOT_EXIST)
    raise PullError(f"{resp.status}: {body.decode('utf-8', 'replace')}")


def http_get(url: str, headers: dict | None = None, timeout: float = 30.0):
    """GET following redirects (net/http's default policy); returns (conn, response)."""
    conn, resp, _ = go_do("GET", url, headers, timeout=timeout)
    return conn, resp


def lab_part_scale() -> float:
    """OLLAMA_LAB_PART_SCALE (lab only, default 1): multiplies upstream's part sizes."""
    v = env_float("OLLAMA_LAB_PART_SCALE", 1.0)
    return v if v > 0 else 1.0


def part_sizes(total: int, scale: float = 1.0) -> list[tuple[int, int]]:
    """blobDownload.Prepare: (offset, size) of each part: total/16 bytes, at least 100 MB
    and at most 1000 MB (times the lab's scale), the last part what is left."""
    lo = max(1, int(MIN_DOWNLOAD_PART_SIZE * scale))
    hi = max(lo, int(MAX_DOWNLOAD_PART_SIZE * scale))
    size = min(max(total // NUM_DOWNLOAD_PARTS, lo), hi)
    parts, offset = [], 0
    while offset < total:
        size = min(size, total - offset)
        parts.append((offset, size))
        offset += size
    return parts


class BlobPart:
    """blobDownloadPart, kept in ``<blob>-partial-N`` as upstream's JSON."""

    def __init__(self, n: int, offset: int, size: int, completed: int = 0):
        self.n, self.offset, self.size, self.completed = n, offset, size, completed

    def to_json(self) -> bytes:
        return go_json({"N": self.n, "Offset": self.offset, "Size": self.size,
                        "Completed": self.completed}) + b"\n"  # json.NewEncoder: a newline

    @classmethod
    def read(cls, path: str) -> BlobPart:
        with open(path, "rb") as f:
            raw = f.read()
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise PullError(go_json_decode_error(raw, e)) from None
        if not isinstance(obj, dict):
            raise PullError(f"json: cannot unmarshal {_json_kind(obj)} into Go value of "
                            "type server.jsonBlobDownloadPart")
        vals = {}
        for key in ("N", "Offset", "Size", "Completed"):
            v = next((obj[k] for k in obj if k.lower() == key.lower()), 0)
            if v is None:
                v = 0
            if isinstance(v, bool) or not isinstance(v, int):
                raise PullError(f"json: cannot unmarshal {_json_kind(v)} into Go struct field "
                                f"jsonBlobDownloadPart.{key} of type int64")
            vals[key] = v
        return cls(vals["N"], vals["Offset"], vals["Size"], vals["Completed"])


class BlobDownload:
    """One shared download per digest (blobDownloadManager, server/download.go v0.6.8)."""

    def __init__(self, store: Store, url: str, digest: str):
        self.store = store
        self.url = url  # the registry's blob URL (requestURL)
        self.digest = digest
        self.name = store.blob_path(digest)  # b.Name
        self.total = 0
        self._completed = 0
        self._lock = threading.Lock()
        self.parts: list[BlobPart] = []
        self.error: str | None = None
        self.done = threading.Event()
        self._cancel = threading.Event()

    @property
    def completed(self) -> int:
        return self._completed

    def _add(self, n: int) -> None:
        with self._lock:
            self._completed += n

    def _part_path(self, part: BlobPart) -> str:
        return f"{self.name}-partial-{part.n}"

    def _write_part(self, part: BlobPart) -> None:
        with open(self._part_path(part), "wb") as f:
            f.write(part.to_json())

    def prepare(self) -> None:
        """Prepare: resume from the ``-partial-N`` files, else HEAD the blob (following
        redirects as net/http does) for its size and cut it in parts."""
        paths = sorted(p for p in _listdir(os.path.dirname(self.name))
                       if p.startswith(os.path.basename(self.name) + "-partial-"))
        for p in paths:
            part = BlobPart.read(os.path.join(os.path.dirname(self.name), p))
            self.total += part.size
            self._completed += part.completed
            self.parts.append(part)
        if not self.parts:
            try:
                conn, resp, _ = make_request_with_retry("HEAD", self.url)
            except _Retryable as e:
                raise PullError(str(e)) from None
            try:
                self.total = int(resp.getheader("Content-Length") or 0)
            except ValueError:
                self.total = 0
            finally:
                conn.close()
            for offset, size in part_sizes(self.total, lab_part_scale()):
                part = BlobPart(len(self.parts), offset, size)
                self._write_part(part)
                self.parts.append(part)
        if self.parts:
            log("INFO", "download.go:176", f"downloading {self.digest[7:19]} in "
                f"{len(self.parts)} {human_bytes(self.parts[0].size)} part(s)")

    def run(self) -> None:
        try:
            self._run()
        except PullError as e:
            self.error = str(e)
        except Exception as e:  # noqa: BLE001 - report anything as a pull error line
            self.error = str(e) or e.__class__.__name__
        finally:
            with DOWNLOADS_LOCK:
                DOWNLOADS.pop(self.digest, None)
            self.done.set()

    def _run(self) -> None:
        partial = self.name + "-partial"
        fd = os.open(partial, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                os.ftruncate(fd, self.total)  # sized in full before the first byte
            except OSError:
                pass
            direct = self._direct_url()
            todo = [p for p in self.parts if p.completed != p.size]
            errors: list[str] = []
            sem = threading.Semaphore(NUM_DOWNLOAD_PARTS)  # errgroup SetLimit

            def work(part: BlobPart) -> None:
                with sem:
                    if self._cancel.is_set():
                        return
                    try:
                        self._download_part(fd, direct, part)
                    except PullError as e:
                        errors.append(str(e))
                        self._cancel.set()

            threads = [threading.Thread(target=work, args=(p,), daemon=True,
                                        name=f"part-{self.digest[7:19]}-{p.n}") for p in todo]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise PullError(errors[0])
        finally:
            os.close(fd)
        for i in range(len(self.parts)):
            os.remove(f"{partial}-{i}")
        os.replace(partial, self.name)

    def _direct_url(self) -> str:
        """The directURL closure: GET the registry's blob URL following redirects only
        while the host name stays the same; the response must be 307 or 200, and its
        Location is the URL of the parts. A 200 without Location fails. Failed requests
        are retried with backoff for 30 s."""
        host = urllib.parse.urlsplit(self.url).hostname

        def check(nxt: str, via: list[str]):
            if len(via) > MAX_REDIRECTS:
                return "maximum redirects exceeded (10) for directURL"
            if urllib.parse.urlsplit(nxt).hostname == host:
                return None
            return USE_LAST_RESPONSE

        deadline = time.monotonic() + DIRECT_URL_TIMEOUT_S
        n = 0
        while True:
            try:
                conn, resp, final = make_request_with_retry("GET", self.url, None, check)
            except (_Retryable, PullError) as e:
                log("WARN", "download.go:256", "failed to get direct URL; backing off and "
                    "retrying", err=str(e))
                n += 1
                d = min(n * n * 0.01, 10.0) * (random.random() + 0.5)  # noqa: S311 - jitter
                left = deadline - time.monotonic()
                if d >= left:
                    time.sleep(max(0.0, left))
                    raise PullError("context deadline exceeded") from None
                time.sleep(d)
                continue
            try:
                if resp.status not in (307, 200):
                    raise PullError(f"unexpected status code {resp.status}")
                loc = resp.getheader("Location")
                if not loc:
                    raise PullError(ERR_NO_LOCATION)
                return urllib.parse.urljoin(final, loc)
            finally:
                conn.close()

    def _download_part(self, fd: int, direct: str, part: BlobPart) -> None:
        err = ""
        for attempt in range(MAX_DOWNLOAD_ATTEMPTS):
            if self._cancel.is_set():
                return
            err = self._download_chunk(fd, direct, part)
            if not err:
                return
            sleep = min(BACKOFF_CAP_S, BACKOFF_BASE_S * (2 ** attempt))
            log("INFO", "download.go:301", f"{self.digest[7:19]} part {part.n} attempt "
                f"{attempt} failed: {err}, retrying in {go_duration_str(int(sleep * 1e9))}")
            time.sleep(sleep)
        raise PullError(f"max retries exceeded: {err}")

    def _download_chunk(self, fd: int, direct: str, part: BlobPart) -> str:
        """downloadChunk: one ranged GET of what the part lacks, written at its offset.
        Returns "" when the part is complete, else the error. The status is not looked
        at (upstream copies the body whatever it is). A body cut short keeps what came
        (io.ErrUnexpectedEOF, resumable); any other failure drops it from the progress."""
        start, stop = part.offset + part.completed, part.offset + part.size
        want = part.size - part.completed
        try:
            conn, resp, _ = go_do("GET", direct, {"Range": f"bytes={start}-{stop - 1}"},
                                  timeout=PART_STALL_S)
        except (_Retryable, PullError) as e:
            return str(e)
        n = 0
        err = ""
        keep = True
        try:
            while n < want:
                try:
                    chunk = resp.read(min(256 * 1024, want - n))
                except http.client.IncompleteRead as e:
                    chunk, err = e.partial, "unexpected EOF"
                except TimeoutError:
                    chunk, err = b"", "part stalled"
                except (OSError, http.client.HTTPException) as e:
                    chunk, err, keep = b"", go_net_error("Get", direct, e), False
                if chunk:
                    os.pwrite(fd, chunk, start + n)
                    n += len(chunk)
                    self._add(len(chunk))
                if err:
                    break
                if not chunk:
                    # body over: cut short of its Content-Length, or whole but too short
                    cut = resp.length is not None and resp.length > 0
                    err, keep = ("unexpected EOF", True) if cut else ("EOF", False)
                    break
        finally:
            conn.close()
        if not keep:
            self._add(-n)  # rollback progress
            return err
        part.completed += n
        self._write_part(part)
        return err


DOWNLOADS: dict[str, BlobDownload] = {}
DOWNLOADS_LOCK = threading.Lock()


def _layer_line(digest: str, total: int, completed: int) -> dict:
    d = {"status": f"pulling {digest[7:19]}", "digest": digest}
    if total:
        d["total"] = total
    if completed:
        d["completed"] = completed
    return d


def download_blob(store: Store, base: str, name: Name, layer: dict, emit) -> BlobDownload | None:
    """downloadBlob: None on a cache hit, else the finished download. The first puller
    of a digest prepares it (HEAD, parts) before the download starts; others wait."""
    digest = str(layer.get("digest", ""))
    final = store.blob_path(digest)
    with DOWNLOADS_LOCK:
        if os.path.isfile(final):
            size = os.path.getsize(final)
            dl, fresh = None, False
        else:
            dl = DOWNLOADS.get(digest)
            fresh = dl is None
            if dl is None:
                url = f"{base}/v2/{name.namespace}/{name.model}/blobs/{digest}"
                dl = BlobDownload(store, url, digest)
                DOWNLOADS[digest] = dl
    if dl is None:
        emit(_layer_line(digest, size, size))
        return None
    if fresh:
        try:
            dl.prepare()
        except BaseException as e:
            with DOWNLOADS_LOCK:
                DOWNLOADS.pop(digest, None)
            dl.error = str(e) if isinstance(e, PullError) else (str(e) or type(e).__name__)
            dl.done.set()
            raise PullError(dl.error) from None
        threading.Thread(target=dl.run, name=f"download-{digest[7:19]}", daemon=True).start()
    while not dl.done.wait(0.06):  # Wait: a progress line every 60 ms
        emit(_layer_line(digest, dl.total, dl.completed))
    if dl.error:
        raise PullError(dl.error)
    emit(_layer_line(digest, dl.total, dl.completed))
    return dl


class _GoNum(str):
    """A JSON number with a fraction or exponent, kept as written (Go's int fields refuse
    it by its literal)."""


def _go_field(obj: dict, field: str):
    """encoding/json's field match: the exact key, else a case-insensitive one."""
    if field in obj:
        return obj[field]
    for k, v in obj.items():
        if k.lower() == field.lower():
            return v
    return None


def _go_unmarshal_err(v, struct: str, path: str, gotype: str) -> PullError:
    kind = f"number {v}" if isinstance(v, _GoNum) else _json_kind(v)
    if isinstance(v, _GoNum) and gotype == "string":
        kind = "number"
    return PullError(f"json: cannot unmarshal {kind} into Go struct field {struct}.{path} "
                     f"of type {gotype}")


def _go_layer(v, path: str) -> dict:
    out = {"mediaType": "", "digest": "", "size": 0, "from": ""}
    if v is None:
        return out
    if not isinstance(v, dict):
        raise PullError(f"json: cannot unmarshal {_json_kind(v)} into Go struct field "
                        f"Manifest.{path} of type server.Layer")
    for field in ("mediaType", "digest", "from"):
        x = _go_field(v, field)
        if x is None:
            continue
        if not isinstance(x, str) or isinstance(x, _GoNum):
            raise _go_unmarshal_err(x, "Layer", f"{path}.{field}", "string")
        out[field] = x
    x = _go_field(v, "size")
    if x is not None:
        if isinstance(x, bool) or not isinstance(x, int):
            raise _go_unmarshal_err(x, "Layer", f"{path}.size", "int64")
        out["size"] = x
    return out


def go_manifest(body: bytes) -> tuple[dict, bytes]:
    """json.Unmarshal into server.Manifest, then json.Marshal of it: the fields Ollama
    knows, in its struct's order (schemaVersion, mediaType, config, layers; a layer's
    mediaType, digest, size, from when set), compact, HTML characters escaped; anything
    else the registry sent is dropped. Returns (that manifest, its bytes)."""
    try:
        obj = json.loads(body, parse_float=_GoNum)
    except json.JSONDecodeError as e:
        raise PullError(go_json_decode_error(body, e)) from None
    except ValueError as e:
        raise PullError(str(e)) from None
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise PullError(f"json: cannot unmarshal {_json_kind(obj)} into Go value of type "
                        "server.Manifest")
    m: dict = {"schemaVersion": 0, "mediaType": "", "config": _go_layer(None, "config"),
               "layers": None}
    v = _go_field(obj, "schemaVersion")
    if v is not None:
        if isinstance(v, bool) or not isinstance(v, int):
            raise _go_unmarshal_err(v, "Manifest", "schemaVersion", "int")
        m["schemaVersion"] = v
    v = _go_field(obj, "mediaType")
    if v is not None:
        if not isinstance(v, str) or isinstance(v, _GoNum):
            raise _go_unmarshal_err(v, "Manifest", "mediaType", "string")
        m["mediaType"] = v
    m["config"] = _go_layer(_go_field(obj, "config"), "config")
    v = _go_field(obj, "layers")
    if v is not None:
        if not isinstance(v, list):
            raise PullError(f"json: cannot unmarshal {_json_kind(v)} into Go struct field "
                            "Manifest.layers of type []server.Layer")
        m["layers"] = [_go_layer(x, "layers") for x in v]

    def enc(layer: dict) -> dict:
        d = {"mediaType": layer["mediaType"], "digest": layer["digest"], "size": layer["size"]}
        if layer["from"]:
            d["from"] = layer["from"]
        return d

    doc = {"schemaVersion": m["schemaVersion"], "mediaType": m["mediaType"],
           "config": enc(m["config"]),
           "layers": None if m["layers"] is None else [enc(x) for x in m["layers"]]}
    return m, go_json(doc)


def verify_blob(store: Store, digest: str) -> None:
    """verifyBlob: the blob's sha256 must be its name; a mismatch removes it."""
    path = store.blob_path(digest)
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise PullError(f"open {path}: {e.strerror or e}") from None
    got = "sha256:" + h.hexdigest()
    if got != digest:
        try:
            os.remove(path)
        except OSError as e:
            log("INFO", "images.go:620", f"couldn't remove file with digest mismatch "
                f"'{path}': {e}")
        raise PullError(f"digest mismatch, file must be downloaded again: want {digest}, "
                        f"got {got}")


def pull_model(store: Store, name: Name, insecure: bool, emit) -> None:
    """PullModel: emit progress dicts; raise PullError on failure."""
    try:
        old = store.read_manifest(name)
    except StoreError as e:
        log("WARN", "images.go:604", "pulling model with bad existing manifest",
            name=name.display_shortest(), error=str(e))
        old = None
    delete_map = {str(x.get("digest", "")) for x in old.all_layers()} if old else set()

    emit({"status": "pulling manifest"})
    base = registry_base(name, insecure)
    url = f"{base}/v2/{name.namespace}/{name.model}/manifests/{name.tag}"
    try:
        conn, resp, _ = make_request_with_retry("GET", url, {"Accept": MT_MANIFEST})
    except (_Retryable, PullError) as e:
        raise PullError(f"pull model manifest: {e}") from None
    try:
        body = resp.read()
    except (OSError, http.client.HTTPException) as e:
        raise PullError(f"pull model manifest: {go_net_error('Get', url, e)}") from None
    finally:
        conn.close()
    try:
        _, raw = go_manifest(body)
    except PullError as e:
        raise PullError(f"pull model manifest: {e}") from None
    mf = Manifest(name, raw, json.loads(raw), 0)
    layers = mf.all_layers()
    for layer in layers:
        digest = layer.get("digest")
        if not digest:
            raise PullError(f"{name.namespace}/{name.model}: digest is empty")
        try:
            store.blob_path(str(digest))
        except StoreError as e:
            raise PullError(str(e)) from None

    store.ensure_dirs()
    fetched: list[str] = []
    for layer in layers:
        try:
            dl = download_blob(store, base, name, layer, emit)
        except StoreError as e:
            raise PullError(str(e)) from None
        if dl is not None:
            fetched.append(dl.digest)

    emit({"status": "verifying sha256 digest"})
    for digest in fetched:
        verify_blob(store, digest)

    emit({"status": "writing manifest"})
    with store.lock:
        store.write_manifest(name, raw)
    log("INFO", "images.go:680", "pulled model", name=name.display_shortest(),
        digest="sha256:" + mf.digest)

    delete_map -= {str(x.get("digest", "")) for x in layers}
    if not env_bool("OLLAMA_NOPRUNE") and delete_map:
        emit({"status": "removing unused layers"})
        with store.lock:
            store.remove_blobs(delete_map)
    emit({"status": "success"})


# ---------------------------------------------------------------------------
# scheduler: loaded models, keep-alive, parallelism, queue
# ---------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


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


# ---------------------------------------------------------------------------
# GPU discovery (discover/gpu.go, discover/gpu_info_nvcuda.c, discover/types.go of
# v0.6.0 to v0.7.1: the same lines in every one of them)
# ---------------------------------------------------------------------------

FLEETLAB_GPUS_JSON = "/etc/fleetlab/gpus.json"
FLEETLAB_CUDA_JSON = "/etc/fleetlab/cuda.json"
FLEETLAB_DRIVER = "/run/fleetlab/nvidia-driver-loaded"
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


def _fleetlab_path(path: str) -> str:
    return os.path.join(os.environ.get("FLEETLAB_ROOT") or "/", path.lstrip("/"))


def _fleetlab_json(path: str):
    try:
        with open(_fleetlab_path(path), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def human_bytes2(b: int) -> str:
    """format.HumanBytes2."""
    for limit, unit in ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if b >= limit:
            return f"{b / limit:.1f} {unit}"
    return f"{b} B"


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


# ---------------------------------------------------------------------------
# fake inference
# ---------------------------------------------------------------------------


def _words(prompt: str):
    words = ["lab", "answer", "to:"] + prompt.split()
    seed = hashlib.sha256(prompt.encode("utf-8", "replace")).digest()
    i = 0
    while True:
        w = words[i] if i < len(words) else FILLER[(seed[i % 32] + i) % len(FILLER)]
        yield w if i == 0 else " " + w
        i += 1


def _schema_value(schema, depth: int = 0):
    if not isinstance(schema, dict) or depth > 6:
        return "lab"
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "string")
    if t == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {k: _schema_value(v, depth + 1) for k, v in props.items()}
    if t == "array":
        n = int(schema.get("minItems") or 0)
        return [_schema_value(schema.get("items"), depth + 1) for _ in range(n)]
    if t == "integer":
        return int(schema.get("minimum") or 0)
    if t == "number":
        return schema.get("minimum") or 0
    if t == "boolean":
        return True
    if t == "null":
        return None
    return "lab"


def plan_tokens(prompt: str, fmt, num_predict) -> tuple[list[str], str]:
    """Return (tokens, done_reason)."""
    natural = max(1, env_uint("OLLAMA_LAB_TOKENS", 16))
    # Lab only: a prompt saying `lab:tokens=N` gets an N-token answer (long streams for tests).
    asked = re.search(r"lab:tokens=(\d+)", prompt or "")
    if asked:
        natural = max(1, min(int(asked.group(1)), 100000))
    if fmt not in (None, "", "null"):
        if fmt == "json":
            text = json.dumps({"response": "lab answer to: " + prompt})
        else:
            text = json.dumps(_schema_value(fmt))
        tokens = [text[i:i + 4] for i in range(0, len(text), 4)] or [""]
    else:
        gen = _words(prompt)
        tokens = [next(gen) for _ in range(natural)]
    limit = num_predict if isinstance(num_predict, int) and num_predict > 0 else None
    if limit is not None and limit <= len(tokens):
        return tokens[:limit], "length"
    return tokens, "stop"


def fake_context(text: str) -> list[int]:
    return [int.from_bytes(hashlib.sha256(w.encode()).digest()[:2], "big") for w in text.split()]


def embed_vector(text: str, dim: int = EMBED_DIM) -> list[float]:
    vals: list[float] = []
    counter = 0
    while len(vals) < dim:
        h = hashlib.sha256(f"{counter}\0{text}".encode("utf-8", "replace")).digest()
        for i in range(0, 32, 4):
            vals.append(int.from_bytes(h[i:i + 4], "big") / 2**31 - 1.0)
        counter += 1
    vals = vals[:dim]
    norm = math.sqrt(sum(v * v for v in vals)) or 1.0
    return [round(v / norm, 8) for v in vals]


def _normalize(vec: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [round(v / norm, 8) for v in vec]


def _param_count(model_type: str) -> int:
    m = re.match(r"^\s*([\d.]+)\s*([KMBT]?)", model_type or "", re.I)
    if not m:
        return 0
    mult = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[m.group(2).upper()]
    try:
        return int(float(m.group(1)) * mult)
    except ValueError:
        return 0


def _go_quote_arg(s: str) -> str:
    if "\n" in s or s.startswith(" ") or s.endswith(" "):
        return '"""' + s + '"""'
    if '"' in s:
        return json.dumps(s, ensure_ascii=False)
    return s


def _go_sharp_v(v) -> str:
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return json.dumps(v)


def _param_items(params: dict):
    for k in sorted(params):
        v = params[k]
        for item in (v if isinstance(v, list) else [v]):
            yield k, item


def show_payload(store: Store, info: ModelInfo) -> dict:
    params = "\n".join(f"{k:<30} {_go_sharp_v(v)}" for k, v in _param_items(info.params))
    lines = [f"FROM {info.model_path}"]
    if info.template:
        lines.append(f"TEMPLATE {_go_quote_arg(info.template)}")
    if info.system:
        lines.append(f"SYSTEM {_go_quote_arg(info.system)}")
    for k, v in _param_items(info.params):
        lines.append(f"PARAMETER {k} {_go_quote_arg(v if isinstance(v, str) else _go_sharp_v(v))}")
    for lic in info.license:
        lines.append(f"LICENSE {_go_quote_arg(lic)}")
    modelfile = (
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        f"# FROM {info.short}\n\n" + "\n".join(lines) + "\n"
    )
    arch = info.family or "llama"
    model_info = {
        "general.architecture": arch,
        "general.basename": info.name.model,
        "general.file_type": 2,
        "general.parameter_count": _param_count(str(info.config.get("model_type") or "")),
        "general.quantization_version": 2,
        f"{arch}.context_length": 2048 if info.is_embedding() else 4096,
        f"{arch}.embedding_length": EMBED_DIM if info.is_embedding() else 2048,
        f"{arch}.block_count": 12 if info.is_embedding() else 16,
        "tokenizer.ggml.model": "bert" if info.is_embedding() else "gpt2",
    }
    out: dict = {}
    if info.license:
        out["license"] = "\n".join(info.license)
    out["modelfile"] = modelfile
    if params:
        out["parameters"] = params
    if info.template:
        out["template"] = info.template
    if info.system:
        out["system"] = info.system
    out["details"] = info.details()
    out["model_info"] = model_info
    out["capabilities"] = info.capabilities()
    out["modified_at"] = go_time(info.manifest.mtime_ns)
    return out


# ---------------------------------------------------------------------------
# request validation (gin ShouldBindJSON + api types)
# ---------------------------------------------------------------------------

_GO_TYPES = {
    "str": ("string", str), "bool": ("bool", bool), "int": ("int", int),
    "map": ("map[string]interface {}", dict), "ints": ("[]int", list),
    "list": ("[]", list),
    # openai/openai.go request types
    "f64": ("float64", (int, float)), "f32": ("float32", (int, float)),
    "oai_messages": ("[]openai.Message", list), "api_tools": ("[]api.Tool", list),
    "oai_stream_options": ("openai.StreamOptions", dict),
    "oai_response_format": ("openai.ResponseFormat", dict),
}
SPEC_GENERATE = ("api.GenerateRequest", {
    "model": "str", "prompt": "str", "suffix": "str", "system": "str", "template": "str",
    "context": "ints", "stream": "bool", "raw": "bool", "options": "map", "images": "list",
    "keep_alive": "duration", "think": "any",
})
SPEC_CHAT = ("api.ChatRequest", {
    "model": "str", "messages": "list", "stream": "bool", "options": "map", "tools": "list",
    "keep_alive": "duration", "think": "any",
})
SPEC_EMBED = ("api.EmbedRequest", {
    "model": "str", "truncate": "bool", "options": "map", "dimensions": "int",
    "keep_alive": "duration",
})
SPEC_EMBEDDINGS = ("api.EmbeddingRequest", {
    "model": "str", "prompt": "str", "options": "map", "keep_alive": "duration",
})
SPEC_PULL = ("api.PullRequest", {
    "model": "str", "name": "str", "insecure": "bool", "stream": "bool", "username": "str",
    "password": "str",
})
SPEC_SHOW = ("api.ShowRequest", {
    "model": "str", "name": "str", "system": "str", "template": "str", "verbose": "bool",
    "options": "map",
})
SPEC_DELETE = ("api.DeleteRequest", {"model": "str", "name": "str"})
SPEC_COPY = ("api.CopyRequest", {"source": "str", "destination": "str"})


def _json_kind(v) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def parse_body(raw: bytes, spec) -> dict:
    type_name, fields = spec
    if not raw.strip():
        raise ApiError(400, "missing request body")
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ApiError(400, go_json_decode_error(raw, e)) from None
    except ValueError as e:
        raise ApiError(400, str(e)) from None
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise ApiError(400, f"json: cannot unmarshal {_json_kind(obj)} into Go value of type "
                            f"{type_name}")
    short = type_name.split(".")[-1]
    for key, kind in fields.items():
        v = obj.get(key)
        if v is None or kind == "any":
            continue
        if kind == "duration":
            parse_keep_alive(obj)
            continue
        go_name, py_t = _GO_TYPES[kind]
        ok = isinstance(v, py_t) and not (py_t is not bool and isinstance(v, bool))
        if kind == "int" and isinstance(v, float) and v.is_integer():
            ok = True
        if kind == "ints" and ok:
            ok = all(isinstance(x, int) and not isinstance(x, bool) for x in v)
        if not ok:
            raise ApiError(400, f"json: cannot unmarshal {_json_kind(v)} into Go struct field "
                                f"{short}.{key} of type {go_name}")
    return obj


def parse_keep_alive(req: dict) -> int | None:
    if "keep_alive" not in req or req["keep_alive"] is None:
        return None
    v = req["keep_alive"]
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        kind = {bool: "bool", dict: "map[string]interface {}", list: "[]interface {}"}.get(
            type(v), type(v).__name__)
        raise ApiError(400, f"Unsupported type: '{kind}'")
    if isinstance(v, str):
        try:
            ns = parse_go_duration(v)
        except DurationError as e:
            raise ApiError(400, str(e)) from None
    else:
        if v < 0:
            return FOREVER_NS
        ns = int(v * 1e9)
    return FOREVER_NS if ns < 0 else ns


def version_at_least(version: str, want: tuple[int, ...]) -> bool:
    nums = [int(x) for x in re.findall(r"\d+", version.split("-")[0])[:3]]
    return tuple(nums + [0] * (3 - len(nums))) >= want


def check_think(req: dict, info: ModelInfo, model_raw: str) -> None:
    """0.9+ rejects think=true for models without the thinking capability."""
    think = req.get("think")
    if think in (None, False, "") or not version_at_least(STATE.version, (0, 9, 0)):
        return
    if "thinking" not in info.capabilities():
        raise ApiError(400, f'"{model_raw}" does not support thinking')


def parse_num_predict(req: dict):
    opts = req.get("options") or {}
    if "num_predict" not in opts or opts["num_predict"] is None:
        return None
    v = opts["num_predict"]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (
            isinstance(v, float) and not v.is_integer()):
        raise ApiError(500, 'option "num_predict" must be of type integer')
    return int(v)


def check_format(req: dict):
    fmt = req.get("format")
    if fmt is None or fmt == "":
        return None
    if fmt == "json" or isinstance(fmt, dict):
        return fmt
    raise ApiError(500, f"invalid format: {json.dumps(json.dumps(fmt))}; expected \"json\" or "
                        "a valid JSON Schema object")


def check_images(images) -> None:
    for img in images or []:
        if not isinstance(img, str):
            raise ApiError(400, f"json: cannot unmarshal {_json_kind(img)} into Go struct field "
                                "GenerateRequest.images of type api.ImageData")
        try:
            base64.b64decode(img, validate=True)
        except ValueError:
            raise ApiError(400, "illegal base64 data at input byte 0") from None


# ---------------------------------------------------------------------------
# OpenAI compatibility (openai/openai.go: request and answer translation)
# ---------------------------------------------------------------------------

SPEC_OAI_CHAT = ("openai.ChatCompletionRequest", {
    "model": "str", "messages": "oai_messages", "stream": "bool",
    "stream_options": "oai_stream_options", "max_tokens": "int", "seed": "int", "stop": "any",
    "temperature": "f64", "frequency_penalty": "f64", "presence_penalty": "f64", "top_p": "f64",
    "response_format": "oai_response_format", "tools": "api_tools",
})
SPEC_OAI_COMPLETION = ("openai.CompletionRequest", {
    "model": "str", "prompt": "str", "frequency_penalty": "f32", "max_tokens": "int",
    "presence_penalty": "f32", "seed": "int", "stop": "any", "stream": "bool",
    "stream_options": "oai_stream_options", "temperature": "f32", "top_p": "f32",
    "suffix": "str",
})
SPEC_OAI_EMBED = ("openai.EmbedRequest", {"input": "any", "model": "str"})
GO_ZERO_TIME_UNIX = -62135596800  # time.Time{}.Unix()


def oai_error(status: int, message: str) -> dict:
    """openai.NewError."""
    etype = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": etype, "param": None, "code": None}}


def oai_handler_error_status(status: int) -> int:
    """The status whose error type BaseWriter.writeError gives a native handler's error.

    Until 0.18 it always built the error with http.StatusInternalServerError ("api_error",
    whatever the HTTP status); from 0.18 it uses the response's status."""
    return status if version_at_least(STATE.version, (0, 18, 0)) else 500


def _go_any_type(v) -> str:
    """%T of a value encoding/json decoded into an ``any``."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "[]interface {}"
    return "map[string]interface {}"


def _status_error_text(obj) -> str:
    """api.StatusError.Error() of a native handler's error body."""
    obj = obj if isinstance(obj, dict) else {}
    status, message = str(obj.get("status") or ""), str(obj.get("error") or "")
    if status and message:
        return f"{status}: {message}"
    return status or message or ("something went wrong, please see the ollama server logs "
                                  "for details")


def _unix(created_at) -> int:
    ts = parse_rfc3339(created_at) if isinstance(created_at, str) else None
    return int(ts) if ts is not None else GO_ZERO_TIME_UNIX


def oai_parse(raw: bytes, spec) -> dict:
    """gin ShouldBindJSON into an openai request type (an empty body is io.EOF)."""
    if not raw.strip():
        raise ApiError(400, "EOF")
    req = parse_body(raw, spec)
    opts = req.get("stream_options")
    if isinstance(opts, dict) and opts.get("include_usage") is not None and not isinstance(
            opts["include_usage"], bool):
        raise ApiError(400, f"json: cannot unmarshal {_json_kind(opts['include_usage'])} into Go "
                            "struct field StreamOptions.stream_options.include_usage of type bool")
    fmt = req.get("response_format")
    if isinstance(fmt, dict):
        if fmt.get("type") is not None and not isinstance(fmt["type"], str):
            raise ApiError(400, f"json: cannot unmarshal {_json_kind(fmt['type'])} into Go "
                                "struct field ResponseFormat.response_format.type of type string")
        js = fmt.get("json_schema")
        if js is not None and not isinstance(js, dict):
            raise ApiError(400, f"json: cannot unmarshal {_json_kind(js)} into Go struct field "
                                "ResponseFormat.response_format.json_schema of type "
                                "openai.JsonSchema")
    for msg in req.get("messages") or []:
        if msg is None:
            continue
        if not isinstance(msg, dict):
            raise ApiError(400, f"json: cannot unmarshal {_json_kind(msg)} into Go struct field "
                                "ChatCompletionRequest.messages of type openai.Message")
        if msg.get("role") is not None and not isinstance(msg["role"], str):
            raise ApiError(400, f"json: cannot unmarshal {_json_kind(msg['role'])} into Go "
                                "struct field Message.messages.role of type string")
        _check_oai_tool_calls(msg.get("tool_calls"))
    return req


def _check_oai_tool_calls(calls) -> None:
    def bad(v, where: str, go_type: str) -> ApiError:
        return ApiError(400, f"json: cannot unmarshal {_json_kind(v)} into Go struct field "
                             f"{where} of type {go_type}")

    if calls is None:
        return
    if not isinstance(calls, list):
        raise bad(calls, "Message.messages.tool_calls", "[]openai.ToolCall")
    for c in calls:
        if c is None:
            continue
        if not isinstance(c, dict):
            raise bad(c, "Message.messages.tool_calls", "openai.ToolCall")
        fn = c.get("function")
        if fn is None:
            continue
        if not isinstance(fn, dict):
            raise bad(fn, "ToolCall.messages.tool_calls.function", 'struct { Name string '
                      '"json:\\"name\\""; Arguments string "json:\\"arguments\\"" }')
        for k in ("name", "arguments"):
            if fn.get(k) is not None and not isinstance(fn[k], str):
                raise bad(fn[k], f".messages.tool_calls.function.{k}", "string")


def _oai_stop(stop, strict: bool):
    """The options["stop"] fromChatRequest / fromCompleteRequest set (None: not set)."""
    if isinstance(stop, str):
        return [stop]
    if not isinstance(stop, list):
        return None
    stops = []
    for s in stop:
        if isinstance(s, str):
            stops.append(s)
        elif strict:
            raise ApiError(400, f"invalid type for 'stop' field: {_go_any_type(s)}")
    return stops


def _oai_image(part: dict) -> str:
    url = part.get("image_url")
    if isinstance(url, dict):
        url = url.get("url")
    if not isinstance(url, str):
        raise ApiError(400, "invalid message format")
    for t in ("jpeg", "jpg", "png"):
        prefix = f"data:image/{t};base64,"
        if url.startswith(prefix):
            url = url[len(prefix):]
            break
    else:
        raise ApiError(400, "invalid image input")
    try:
        img = base64.b64decode(url, validate=True)
    except ValueError:
        raise ApiError(400, "invalid message format") from None
    return base64.b64encode(img).decode()


def oai_chat_request(req: dict) -> dict:
    """fromChatRequest: openai.ChatCompletionRequest -> api.ChatRequest."""
    messages = []
    for msg in req.get("messages") or []:
        msg = msg or {}
        role = msg.get("role") or ""
        content = msg.get("content")
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise ApiError(400, "invalid message format")
                if part.get("type") == "text":
                    if not isinstance(part.get("text"), str):
                        raise ApiError(400, "invalid message format")
                    messages.append({"role": role, "content": part["text"]})
                elif part.get("type") == "image_url":
                    messages.append({"role": role, "content": "", "images": [_oai_image(part)]})
                else:
                    raise ApiError(400, "invalid message format")
        else:
            if msg.get("tool_calls") is None:
                raise ApiError(400, f"invalid message content type: {_go_any_type(content)}")
            calls = []
            for tc in msg["tool_calls"]:
                fn = (tc or {}).get("function") or {}
                try:
                    args = json.loads(fn.get("arguments") or "")
                except ValueError:
                    raise ApiError(400, "invalid tool call arguments") from None
                if args is not None and not isinstance(args, dict):
                    raise ApiError(400, "invalid tool call arguments")
                calls.append({"function": {"name": fn.get("name") or "", "arguments": args}})
            messages.append({"role": role, "content": "", "tool_calls": calls})
    options = _oai_options(req, strict_stop=False)
    for key in ("frequency_penalty", "presence_penalty"):
        if req.get(key) is not None:
            options[key] = req[key]
    options["top_p"] = req["top_p"] if req.get("top_p") is not None else 1.0
    out: dict = {"model": req.get("model") or "", "messages": messages or None}
    fmt = req.get("response_format")
    if isinstance(fmt, dict):
        kind = str(fmt.get("type") or "").strip().lower()
        if kind == "json_object":
            out["format"] = "json"
        elif kind == "json_schema" and isinstance(fmt.get("json_schema"), dict) and \
                fmt["json_schema"].get("schema") is not None:
            out["format"] = fmt["json_schema"]["schema"]
    out["options"] = options
    out["stream"] = bool(req.get("stream"))
    if req.get("tools"):
        out["tools"] = req["tools"]
    return out


def _oai_options(req: dict, strict_stop: bool) -> dict:
    """The options fromChatRequest and fromCompleteRequest both set the same way: stop,
    max_tokens (num_predict), temperature (1.0 when absent) and seed."""
    options: dict = {}
    if "stop" in req:
        stop = _oai_stop(req["stop"], strict=strict_stop)
        if stop is not None:
            options["stop"] = stop or None
    if req.get("max_tokens") is not None:
        options["num_predict"] = int(req["max_tokens"])
    options["temperature"] = req["temperature"] if req.get("temperature") is not None else 1.0
    if req.get("seed") is not None:
        options["seed"] = int(req["seed"])
    return options


def oai_completion_request(req: dict) -> dict:
    """fromCompleteRequest: openai.CompletionRequest -> api.GenerateRequest."""
    options = _oai_options(req, strict_stop=True)
    options["frequency_penalty"] = req.get("frequency_penalty") or 0
    options["presence_penalty"] = req.get("presence_penalty") or 0
    options["top_p"] = req.get("top_p") or 1.0
    return {"model": req.get("model") or "", "prompt": req.get("prompt") or "",
            "suffix": req.get("suffix") or "", "options": options,
            "stream": bool(req.get("stream"))}


def oai_embed_request(req: dict) -> dict:
    """EmbeddingsMiddleware: openai.EmbedRequest -> api.EmbedRequest."""
    inp = req.get("input")
    if inp == "":
        inp = [""]
    if inp is None or inp == []:
        raise ApiError(400, "invalid input")
    return {"model": req.get("model") or "", "input": inp}


def _oai_usage(r: dict) -> dict:
    prompt, completion = int(r.get("prompt_eval_count") or 0), int(r.get("eval_count") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _oai_message(r: dict) -> dict:
    m = r.get("message") if isinstance(r.get("message"), dict) else {}
    return {"role": m.get("role") or "", "content": m.get("content") or ""}


class OpenAIWriter:
    """ChatWriter, CompleteWriter, EmbedWriter and RetrieveWriter of openai/openai.go.

    The native handler runs unchanged; what it answers (one object, or stream lines) is
    turned into the OpenAI shape here. The stand-in's models never call tools, so the
    tool-call parts of upstream's writers have nothing to translate."""

    def __init__(self, kind: str, model: str = "", stream: bool = False, stream_options=None):
        self.kind = kind  # "chat", "completion", "embed" or "retrieve"
        self.model = model
        self.stream = stream and kind in ("chat", "completion")
        self.include_usage = isinstance(stream_options, dict) and \
            stream_options.get("include_usage") is True
        n = random.randrange(999)  # noqa: S311 - upstream's rand.Intn(999), not a secret
        self.id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{n}"

    def error(self, status: int, obj) -> bytes:
        """BaseWriter.writeError (json.Encoder output: a trailing newline)."""
        return go_json(oai_error(oai_handler_error_status(status), _status_error_text(obj))) \
            + b"\n"

    def document(self, r: dict) -> bytes:
        """The non-streamed answer (json.Encoder output)."""
        if self.kind == "chat":  # toChatCompletion
            reason = r.get("done_reason") or None
            out = {"id": self.id, "object": "chat.completion",
                   "created": _unix(r.get("created_at")), "model": r.get("model") or "",
                   "system_fingerprint": "fp_ollama",
                   "choices": [{"index": 0, "message": _oai_message(r), "finish_reason": reason}],
                   "usage": _oai_usage(r)}
        elif self.kind == "completion":  # toCompletion
            out = {"id": self.id, "object": "text_completion",
                   "created": _unix(r.get("created_at")), "model": r.get("model") or "",
                   "system_fingerprint": "fp_ollama",
                   "choices": [{"text": r.get("response") or "", "index": 0,
                                "finish_reason": r.get("done_reason") or None}],
                   "usage": _oai_usage(r)}
        elif self.kind == "embed":  # toEmbeddingList
            if r.get("embeddings") is None:
                out = {"object": "", "data": None, "model": "",
                       "usage": {"prompt_tokens": 0, "total_tokens": 0}}
            else:
                data = [{"object": "embedding", "embedding": e, "index": i}
                        for i, e in enumerate(r["embeddings"])]
                count = int(r.get("prompt_eval_count") or 0)
                out = {"object": "list", "data": data or None, "model": self.model,
                       "usage": {"prompt_tokens": count, "total_tokens": count}}
        else:  # toModel
            out = {"id": self.model, "object": "model", "created": _unix(r.get("modified_at")),
                   "owned_by": parse_name(self.model).namespace}
        return go_json(out) + b"\n"

    def frames(self, r: dict) -> bytes:
        """Server-Sent Events for one native stream line (toChunk / toCompleteChunk)."""
        if not isinstance(r, dict):
            r = {}
        reason = r.get("done_reason") or None
        if self.kind == "chat":
            c: dict = {"id": self.id, "object": "chat.completion.chunk",
                       "created": int(time.time()), "model": r.get("model") or "",
                       "system_fingerprint": "fp_ollama",
                       "choices": [{"index": 0, "delta": {
                           "role": "assistant", "content": _oai_message(r)["content"]},
                           "finish_reason": reason}]}
        else:
            c = {"id": self.id, "object": "text_completion", "created": int(time.time()),
                 "choices": [{"text": r.get("response") or "", "index": 0,
                              "finish_reason": reason}],
                 "model": r.get("model") or "", "system_fingerprint": "fp_ollama"}
            if self.include_usage:
                c["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        out = b"data: " + go_json(c) + b"\n\n"
        if r.get("done") is True:
            if self.include_usage:
                c["usage"] = _oai_usage(r)
                c["choices"] = []
                out += b"data: " + go_json(c) + b"\n\n"
            out += b"data: [DONE]\n\n"
        return out


# ---------------------------------------------------------------------------
# HTTP server
# ---------------------------------------------------------------------------


class ServerState:
    def __init__(self):
        self.store = Store(models_dir())
        self.discovery = Discovery()
        # defaultModelsPerGPU (3) per GPU; on CPU the one CPU "GPU" of GetGPUInfo
        gpus = _gpu_count() if self.discovery.on_gpu else 0
        self.sched = Scheduler(
            num_parallel=env_uint("OLLAMA_NUM_PARALLEL", 1) or 1,
            max_queue=env_uint("OLLAMA_MAX_QUEUE", 512),
            max_loaded=env_uint("OLLAMA_MAX_LOADED_MODELS", 0) or 3 * max(1, gpus),
            keep_alive_ns=keep_alive_default_ns(),
        )
        self.sched.on_gpu = self.discovery.on_gpu
        self.version = lab_version()
        self.unhealthy_env = env_bool("OLLAMA_LAB_UNHEALTHY")
        self.loopback = True
        self.origins = _allowed_origins()

    def unhealthy(self) -> bool:
        return self.unhealthy_env or os.path.exists(os.path.join(LAB_DIR, "lab-unhealthy"))


STATE: ServerState | None = None


def _allowed_origins() -> list[str]:
    origins = [o.strip() for o in env_var("OLLAMA_ORIGINS").split(",") if o.strip()]
    for h in ("localhost", "127.0.0.1", "0.0.0.0"):
        origins += [f"http://{h}", f"https://{h}", f"http://{h}:*", f"https://{h}:*"]
    origins += ["app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"]
    return origins


def _origin_allowed(origin: str, allowed: list[str]) -> bool:
    if origin.startswith(("chrome-extension://", "safari-extension://", "moz-extension://",
                          "ms-browser-extension://")):
        return True
    for pat in allowed:
        if pat == "*" or pat == origin:
            return True
        if "*" in pat:
            pre, _, post = pat.partition("*")
            if origin.startswith(pre) and origin.endswith(post) and len(origin) >= len(pat) - 1:
                return True
    return False


def _host_allowed(host: str) -> bool:
    """allowedHostsMiddleware for a loopback listener."""
    h, port = _split_host_port(host)
    if h is None:
        h = host
    h = h.strip("[]").lower()
    try:
        ip = ipaddress.ip_address(h)
        return ip.is_loopback or ip.is_private or ip.is_unspecified or ip.is_link_local
    except ValueError:
        pass
    if h in ("", "localhost") or h == socket.gethostname().lower():
        return True
    return h.endswith((".localhost", ".local", ".internal"))


ROUTES: dict[str, dict[str, str]] = {
    "/": {"GET": "root", "HEAD": "root"},
    "/api/version": {"GET": "version", "HEAD": "version"},
    "/api/pull": {"POST": "pull"},
    "/api/push": {"POST": "unsupported"},
    "/api/tags": {"GET": "tags", "HEAD": "tags"},
    "/api/show": {"POST": "show"},
    "/api/delete": {"DELETE": "delete"},
    "/api/create": {"POST": "unsupported"},
    "/api/copy": {"POST": "copy"},
    "/api/ps": {"GET": "ps"},
    "/api/generate": {"POST": "generate"},
    "/api/chat": {"POST": "chat"},
    "/api/embed": {"POST": "embed"},
    "/api/embeddings": {"POST": "embeddings"},
    "/v1/chat/completions": {"POST": "openai_chat"},
    "/v1/completions": {"POST": "openai_completions"},
    "/v1/embeddings": {"POST": "openai_embeddings"},
    "/v1/models": {"GET": "openai_models"},
}
PARAM_ROUTES = [
    (re.compile(r"^/api/blobs/[^/]+$"), {"POST": "unsupported", "HEAD": "head_blob"}),
    (re.compile(r"^/v1/models/[^/]+$"), {"GET": "openai_retrieve"}),
]


def _match_route(path: str) -> dict[str, str] | None:
    if path in ROUTES:
        return ROUTES[path]
    for rx, methods in PARAM_ROUTES:
        if rx.match(path):
            return methods
    return None


class _ClientGone(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Go's net package sets TCP_NODELAY on every TCP connection (net/tcpsock_posix.go,
    # newTCPConn -> setNoDelay): an answer's header and body segments go out at once,
    # never held for the peer's delayed ACK (a 40 ms stall per answer with Nagle on).
    disable_nagle_algorithm = True
    server_version = "ollama"
    sys_version = ""

    # -- plumbing ---------------------------------------------------------

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler signature
        if _log_level() <= 10:
            log("DEBUG", "server.go:3300", "http: " + (format % args))

    def send_response(self, code, message=None):
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())
        self._status = code

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, body: bytes, ctype: str | None, extra: dict | None = None):
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        for k, v in self._cors.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self.wfile.flush()

    def send_json(self, status: int, obj) -> None:
        w = self._oai
        if w is None:
            self._send(status, go_json(obj), "application/json; charset=utf-8")
        elif status != 200:
            self._send(status, w.error(status, obj), "application/json")
        elif w.stream:
            self._send(status, w.frames(obj), "text/event-stream")
        else:
            self._send(status, w.document(obj), "application/json")

    def send_error_json(self, status: int, message: str) -> None:
        self.send_json(status, {"error": message})

    def send_empty(self, status: int = 200) -> None:
        self._send(status, b"", None)

    def start_stream(self) -> None:
        self._chunked = self.request_version != "HTTP/1.0"
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson" if self._oai is None
                         else "text/event-stream")
        for k, v in self._cors.items():
            self.send_header(k, v)
        if self._chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:  # HTTP/1.0 has no chunked encoding: the body ends when the connection closes
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self._streaming = True

    def stream_line(self, obj) -> None:
        data = go_json(obj) + b"\n" if self._oai is None else self._oai.frames(obj)
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)
            self.wfile.flush()
        except OSError:
            raise _ClientGone() from None

    def end_stream(self) -> None:
        if not self._chunked:
            return
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            raise _ClientGone() from None

    def _handle(self) -> None:
        t0 = time.monotonic_ns()
        self._status = 0
        self._streaming = False
        self._cors: dict[str, str] = {}
        self._oai: OpenAIWriter | None = None  # set by the OpenAI-compatible routes
        path = urllib.parse.urlsplit(self.path).path or "/"
        try:
            body = self._read_body()
            self._dispatch(path, body)
        except _ClientGone:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - never kill the connection thread silently
            log("ERROR", "routes.go:0", "lab: unhandled error", path=path, error=repr(e))
            if self._status == 0:
                try:
                    self.send_error_json(500, str(e) or e.__class__.__name__)
                except OSError:
                    self.close_connection = True
            else:
                self.close_connection = True
        finally:
            ip = self.client_address[0]
            gin_log(self._status or 500, time.monotonic_ns() - t0,
                    ip[7:] if ip.startswith("::ffff:") else ip, self.command, path)

    do_GET = do_HEAD = do_POST = do_DELETE = do_PUT = do_PATCH = do_OPTIONS = _handle

    def _dispatch(self, path: str, body: bytes) -> None:
        st = STATE
        assert st is not None  # noqa: S101 (type narrowing)
        if st.unhealthy():
            self.send_error_json(500, UNHEALTHY_MSG)
            return
        methods = _match_route(path)
        if methods is None and path != "/" and path.endswith("/"):
            if _match_route(path.rstrip("/")) is not None:
                code = 301 if self.command == "GET" else 307
                self._send(code, b"", None, {"Location": path.rstrip("/")})
                return
        # gin-contrib/cors
        origin = self.headers.get("Origin")
        host = self.headers.get("Host", "")
        if origin and origin not in (f"http://{host}", f"https://{host}"):
            if not _origin_allowed(origin, st.origins):
                self._send(403, b"", None)
                return
            self._cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
            if self.command == "OPTIONS":
                self._send(204, b"", None, {
                    "Access-Control-Allow-Methods": "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS",
                    "Access-Control-Allow-Headers": "Authorization,Content-Type,User-Agent,"
                    "Accept,X-Requested-With,OpenAI-Beta",
                    "Access-Control-Max-Age": "43200",
                })
                return
        if st.loopback and not _host_allowed(host):
            self._send(403, b"", None)
            return
        if methods is None:
            self._send(404, b"404 page not found", "text/plain")
            return
        if self.command == "OPTIONS" and "OPTIONS" not in methods:
            self._send(204, b"", None)
            return
        action = methods.get(self.command)
        if action is None:
            self._send(405, b"405 method not allowed", "text/plain",
                       {"Allow": ", ".join(sorted(methods))})
            return
        try:
            getattr(self, "h_" + action)(body, path)
        except ApiError as e:
            if self._streaming:
                self.stream_line({"error": e.message})
                self.end_stream()
            else:
                self.send_error_json(e.status, e.message)

    # -- handlers ---------------------------------------------------------

    def h_root(self, body, path):
        self._send(200, b"Ollama is running", "text/plain; charset=utf-8")

    def h_version(self, body, path):
        self.send_json(200, {"version": STATE.version})

    def h_unsupported(self, body, path):
        self.send_error_json(500, f"lab: {self.command} {path} is not implemented by the lab "
                                  "stand-in")

    def h_openai_models(self, body, path):
        data = [{"id": m.short, "object": "model", "created": m.manifest.mtime_ns // 10**9,
                 "owned_by": m.name.namespace if m.name.namespace != DEFAULT_NAMESPACE
                 else DEFAULT_NAMESPACE} for m in self._sorted_models()]
        self.send_json(200, {"object": "list", "data": data})

    # -- OpenAI compatibility: translate, run the native handler, translate back --

    def _oai_abort(self, e: ApiError) -> None:
        """c.AbortWithStatusJSON(code, openai.NewError(code, ...)) in the middleware."""
        self.send_json(e.status, oai_error(e.status, e.message))

    def h_openai_chat(self, body, path):
        try:
            req = oai_parse(body, SPEC_OAI_CHAT)
            if not req.get("messages"):
                raise ApiError(400, "[] is too short - 'messages'")
            native = oai_chat_request(req)
        except ApiError as e:
            self._oai_abort(e)
            return
        self._oai = OpenAIWriter("chat", stream=native["stream"],
                                 stream_options=req.get("stream_options"))
        self.h_chat(go_json(native), path)

    def h_openai_completions(self, body, path):
        try:
            req = oai_parse(body, SPEC_OAI_COMPLETION)
            native = oai_completion_request(req)
        except ApiError as e:
            self._oai_abort(e)
            return
        self._oai = OpenAIWriter("completion", stream=native["stream"],
                                 stream_options=req.get("stream_options"))
        self.h_generate(go_json(native), path)

    def h_openai_embeddings(self, body, path):
        try:
            native = oai_embed_request(oai_parse(body, SPEC_OAI_EMBED))
        except ApiError as e:
            self._oai_abort(e)
            return
        self._oai = OpenAIWriter("embed", model=native["model"])
        self.h_embed(go_json(native), path)

    def h_openai_retrieve(self, body, path):
        model = urllib.parse.unquote(path[len("/v1/models/"):])
        if "/" in model:  # gin matches :model on the decoded path, and it holds no "/"
            self._send(404, b"404 page not found", "text/plain")
            return
        self._oai = OpenAIWriter("retrieve", model=model)
        self.h_show(go_json({"model": "", "name": model}), path)

    def h_head_blob(self, body, path):
        digest = path.rsplit("/", 1)[-1]
        try:
            p = STATE.store.blob_path(digest)
        except StoreError as e:
            raise ApiError(400, str(e)) from None
        if not os.path.isfile(p):
            raise ApiError(404, f'blob "{digest}" not found')
        self.send_empty(200)

    def _sorted_models(self) -> list[ModelInfo]:
        models = STATE.store.models()
        models.sort(key=lambda m: m.manifest.mtime_ns // 10**9, reverse=True)
        return models

    def h_tags(self, body, path):
        out = []
        for m in self._sorted_models():
            out.append({
                "name": m.short,
                "model": m.short,
                "modified_at": go_time(m.manifest.mtime_ns),
                "size": m.manifest.size(),
                "digest": m.manifest.digest,
                "details": m.details(),
            })
        self.send_json(200, {"models": out})

    def h_ps(self, body, path):
        self.send_json(200, {"models": STATE.sched.snapshot()})

    def h_pull(self, body, path):
        req = parse_body(body, SPEC_PULL)
        raw_name = req.get("model") or req.get("name") or ""
        name = parse_name(raw_name)
        if not name.is_valid():
            raise ApiError(400, "invalid model name")
        name = STATE.store.existing_name(name)
        insecure = bool(req.get("insecure"))
        stream = req.get("stream")
        if stream is False:
            latest: dict = {}

            def keep(obj):
                latest.clear()
                latest.update(obj)

            try:
                pull_model(STATE.store, name, insecure, keep)
            except PullError as e:
                raise ApiError(500, str(e)) from None
            self.send_json(200, latest)
            return
        self.start_stream()
        try:
            pull_model(STATE.store, name, insecure, self.stream_line)
        except PullError as e:
            log("INFO", "routes.go:611", "pull failed", model=raw_name, error=str(e))
            self.stream_line({"error": str(e)})
        self.end_stream()

    def h_show(self, body, path):
        req = parse_body(body, SPEC_SHOW)
        raw = req.get("model") or req.get("name") or ""
        if not raw:
            raise ApiError(400, "model is required")
        name = parse_name(raw)
        if not name.is_valid():
            raise ApiError(500, "invalid model path")
        info = STATE.store.get_model(STATE.store.existing_name(name))
        if info is None or not info.model_present:  # getModelData: os.Stat of the model
            raise ApiError(404, f"model '{raw}' not found")
        if req.get("system"):
            info.system = req["system"]
        self.send_json(200, show_payload(STATE.store, info))

    def h_copy(self, body, path):
        req = parse_body(body, SPEC_COPY)
        src_raw, dst_raw = req.get("source") or "", req.get("destination") or ""
        src = parse_name(src_raw)
        if not src.is_valid():
            raise ApiError(400, f'source "{src_raw}" is invalid')
        src = STATE.store.existing_name(src)
        dst = parse_name(dst_raw)
        if not dst.is_valid():
            raise ApiError(400, f'destination "{dst_raw}" is invalid')
        dst = STATE.store.existing_name(dst)
        if not STATE.store.copy(src, dst):
            raise ApiError(404, f'model "{src_raw}" not found')
        self.send_empty(200)

    def h_delete(self, body, path):
        req = parse_body(body, SPEC_DELETE)
        raw = req.get("model") or req.get("name") or ""
        name = parse_name(raw)
        if not name.is_valid():
            raise ApiError(400, f'name "{raw}" is invalid')
        if not STATE.store.delete(STATE.store.existing_name(name)):
            raise ApiError(404, f"model '{raw}' not found")
        self.send_empty(200)

    # -- inference --------------------------------------------------------

    def _run_completion(self, *, req, info, model_raw, prompt_text, eval_words, chat, t0):
        keep_alive = parse_keep_alive(req)
        num_predict = parse_num_predict(req)
        fmt = check_format(req)
        runner = STATE.sched.acquire(info, keep_alive)
        try:
            t_loaded = time.monotonic_ns()
            empty = (not req.get("messages")) if chat else (not req.get("prompt"))
            if empty:
                resp = {"model": model_raw, "created_at": go_time(time.time_ns(), utc=True)}
                if chat:
                    resp["message"] = {"role": "assistant", "content": ""}
                    resp["done_reason"] = "load"
                    resp["done"] = True
                else:
                    resp.update(response="", done=True, done_reason="load")
                self.send_json(200, resp)
                return
            tokens, reason = plan_tokens(prompt_text, fmt, num_predict)
            delay = env_float("OLLAMA_LAB_TOKEN_DELAY", 0.02)
            stream = req.get("stream") is not False
            prompt_count = max(1, eval_words)
            if stream:
                self.start_stream()
            t_eval = time.monotonic_ns()
            pieces = []
            for tok in tokens:
                if delay:
                    time.sleep(delay)
                pieces.append(tok)
                if stream:
                    line = {"model": model_raw, "created_at": go_time(time.time_ns(), utc=True)}
                    if chat:
                        line["message"] = {"role": "assistant", "content": tok}
                    else:
                        line["response"] = tok
                    line["done"] = False
                    self.stream_line(line)
            t_end = time.monotonic_ns()
            text = "".join(pieces)
            final = {"model": model_raw, "created_at": go_time(time.time_ns(), utc=True)}
            if chat:
                final["message"] = {"role": "assistant", "content": "" if stream else text}
                final["done_reason"] = reason
                final["done"] = True
            else:
                final["response"] = "" if stream else text
                final["done"] = True
                final["done_reason"] = reason
                if not req.get("raw"):
                    final["context"] = fake_context(prompt_text + " " + text)
            final.update(
                total_duration=max(1, t_end - t0),
                load_duration=max(1, t_loaded - t0),
                prompt_eval_count=prompt_count,
                prompt_eval_duration=max(1, prompt_count * 100_000),
                eval_count=len(tokens),
                eval_duration=max(1, t_end - t_eval),
            )
            if stream:
                self.stream_line(final)
                self.end_stream()
            else:
                self.send_json(200, final)
        finally:
            STATE.sched.release(runner)

    def _check_caps(self, info: ModelInfo, model_raw: str, want: list[str], verb: str) -> None:
        have = info.capabilities()
        if "completion" in want and "completion" not in have:
            raise ApiError(400, f'"{model_raw}" does not support {verb}')
        missing = [c for c in want if c not in have and c != "completion"]
        if missing:
            raise ApiError(400, f"{info.name} does not support {', '.join(missing)}")

    def h_generate(self, body, path):
        t0 = time.monotonic_ns()
        req = parse_body(body, SPEC_GENERATE)
        raw = req.get("model") or ""
        name = parse_name(raw)
        if not name.is_valid():
            raise ApiError(404, f"model '{raw}' not found")
        info = STATE.store.get_model(STATE.store.existing_name(name))
        if info is None:
            raise ApiError(404, f"model '{raw}' not found")
        keep_alive = parse_keep_alive(req)
        prompt = req.get("prompt") or ""
        if not prompt and keep_alive == 0 and "keep_alive" in req:
            STATE.sched.expire(info)
            self.send_json(200, {"model": raw, "created_at": go_time(time.time_ns(), utc=True),
                                 "response": "", "done": True, "done_reason": "unload"})
            return
        if req.get("raw") and (req.get("template") or req.get("system") or req.get("context")):
            raise ApiError(400, "raw mode does not support template, system, or context")
        check_images(req.get("images"))
        check_think(req, info, raw)
        want = ["completion"] + (["insert"] if req.get("suffix") else [])
        self._check_caps(info, raw, want, "generate")
        system = req.get("system") or info.system
        words = len((system + " " + prompt).split())
        self._run_completion(req=req, info=info, model_raw=raw, prompt_text=prompt,
                             eval_words=words, chat=False, t0=t0)

    def h_chat(self, body, path):
        t0 = time.monotonic_ns()
        req = parse_body(body, SPEC_CHAT)
        raw = req.get("model") or ""
        messages = req.get("messages") or []
        for msg in messages:
            if not isinstance(msg, dict):
                raise ApiError(400, f"json: cannot unmarshal {_json_kind(msg)} into Go struct "
                                    "field ChatRequest.messages of type api.Message")
            for k in ("role", "content"):
                if msg.get(k) is not None and not isinstance(msg.get(k), str):
                    raise ApiError(400, f"json: cannot unmarshal {_json_kind(msg[k])} into Go "
                                        f"struct field Message.messages.{k} of type string")
            check_images(msg.get("images"))
        keep_alive = parse_keep_alive(req)
        name = parse_name(raw)
        if not messages and keep_alive == 0 and "keep_alive" in req:
            info = STATE.store.get_model(STATE.store.existing_name(name)) if name.is_valid() \
                else None
            if info is None:
                raise ApiError(404, f"model '{raw}' not found")
            STATE.sched.expire(info)
            self.send_json(200, {"model": raw, "created_at": go_time(time.time_ns(), utc=True),
                                 "message": {"role": "assistant", "content": ""},
                                 "done_reason": "unload", "done": True})
            return
        if not name.is_valid():
            raise ApiError(400, "model is required")
        info = STATE.store.get_model(STATE.store.existing_name(name))
        if info is None:
            raise ApiError(404, f'model "{raw}" not found, try pulling it first')
        check_think(req, info, raw)
        want = ["completion"] + (["tools"] if req.get("tools") else [])
        self._check_caps(info, raw, want, "chat")
        last = ""
        for msg in messages:
            if msg.get("role") == "user":
                last = msg.get("content") or ""
        if not last and messages:
            last = messages[-1].get("content") or ""
        words = sum(len(str(m.get("content") or "").split()) + 1 for m in messages)
        if info.system and (not messages or messages[0].get("role") != "system"):
            words += len(info.system.split())
        self._run_completion(req=req, info=info, model_raw=raw, prompt_text=last,
                             eval_words=words, chat=True, t0=t0)

    def _embed_model(self, raw: str, legacy: bool) -> ModelInfo:
        name = parse_name(raw)
        if legacy and not name.is_valid():
            raise ApiError(400, "model is required")
        info = STATE.store.get_model(STATE.store.existing_name(name)) if name.is_valid() else None
        if info is None or not info.model_present:  # the load's LoadModel: not exist
            raise ApiError(404, f'model "{raw}" not found, try pulling it first')
        return info

    def h_embed(self, body, path):
        t0 = time.monotonic_ns()
        req = parse_body(body, SPEC_EMBED)
        raw = req.get("model") or ""
        inp = req.get("input")
        if isinstance(inp, str):
            inputs = [inp] if inp else []
        elif isinstance(inp, list):
            if not all(isinstance(x, str) for x in inp):
                raise ApiError(400, "invalid input type")
            inputs = list(inp)
        elif inp is None:
            inputs = []
        else:
            raise ApiError(400, "invalid input type")
        info = self._embed_model(raw, legacy=False)
        keep_alive = parse_keep_alive(req)
        runner = STATE.sched.acquire(info, keep_alive)
        try:
            t_loaded = time.monotonic_ns()
            if not inputs:
                self.send_json(200, {"model": raw, "embeddings": []})
                return
            dims = req.get("dimensions") or 0
            vecs = []
            count = 0
            for text in inputs:
                v = embed_vector(text)
                if isinstance(dims, (int, float)) and 0 < int(dims) < len(v):
                    v = _normalize(v[:int(dims)])
                vecs.append(v)
                count += max(1, len(text.split())) + 2
            self.send_json(200, {
                "model": raw,
                "embeddings": vecs,
                "total_duration": max(1, time.monotonic_ns() - t0),
                "load_duration": max(1, t_loaded - t0),
                "prompt_eval_count": count,
            })
        finally:
            STATE.sched.release(runner)

    def h_embeddings(self, body, path):
        req = parse_body(body, SPEC_EMBEDDINGS)
        info = self._embed_model(req.get("model") or "", legacy=True)
        keep_alive = parse_keep_alive(req)
        runner = STATE.sched.acquire(info, keep_alive)
        try:
            prompt = req.get("prompt") or ""
            self.send_json(200, {"embedding": embed_vector(prompt) if prompt else []})
        finally:
            STATE.sched.release(runner)


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
    global STATE
    scheme, host, port_s = parse_ollama_host()
    STATE = ServerState()
    st = STATE
    env_keys = ["CUDA_VISIBLE_DEVICES", "OLLAMA_DEBUG", "OLLAMA_HOST", "OLLAMA_KEEP_ALIVE",
                "OLLAMA_MAX_LOADED_MODELS", "OLLAMA_MAX_QUEUE", "OLLAMA_MODELS",
                "OLLAMA_NOPRUNE", "OLLAMA_NUM_PARALLEL", "OLLAMA_ORIGINS"]
    env_map = {k: env_var(k) for k in env_keys}
    env_map["OLLAMA_HOST"] = f"{scheme}://{host}:{port_s}"
    env_map["OLLAMA_MODELS"] = st.store.root
    log("INFO", "routes.go:1205", "server config",
        env="map[" + " ".join(f"{k}:{v}" for k, v in env_map.items()) + "]")
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
    stop = threading.Event()
    threading.Thread(target=_reaper, args=(st.sched, stop), daemon=True).start()

    def _on_signal(signum, frame):
        stop.set()
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()
    return 0


# ---------------------------------------------------------------------------
# CLI client
# ---------------------------------------------------------------------------


class CLIError(Exception):
    pass


class StatusError(CLIError):
    """api.StatusError."""

    def __init__(self, code: int, status: str, message: str):
        if status and message:
            text = f"{status}: {message}"
        elif status:
            text = status
        elif message:
            text = message
        else:
            text = "something went wrong, please see the ollama server logs for details"
        super().__init__(text)
        self.code = code


class Client:
    def __init__(self):
        self.scheme, host, self.port = parse_ollama_host()
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        self.host = host

    def base(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{h}:{self.port}"

    def _conn(self, timeout=None):
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, int(self.port), timeout=timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self.host, int(self.port), timeout=timeout)

    def _open(self, method: str, path: str, body=None, timeout=None):
        conn = self._conn(timeout)
        data = go_json(body) if body is not None else None
        headers = {"User-Agent": f"ollama/{lab_version()} (amd64 linux) Go/go1.24.0",
                   "Accept": "application/x-ndjson" if method == "POST" else "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            verb = method.capitalize() if method != "DELETE" else "DELETE"
            raise CLIError(go_net_error(verb, self.base() + path, e)) from None

    def heartbeat(self) -> None:
        conn = self._conn(timeout=30)
        try:
            conn.request("HEAD", "/")
            resp = conn.getresponse()
            resp.read()
        except ConnectionRefusedError:
            raise CLIError(CONNECT_ERROR) from None
        except (OSError, http.client.HTTPException) as e:
            raise CLIError(go_net_error("Head", self.base() + "/", e)) from None
        finally:
            conn.close()
        if resp.status >= 400:
            raise StatusError(resp.status, "", "")

    def do(self, method: str, path: str, body=None):
        conn, resp = self._open(method, path, body)
        try:
            data = resp.read()
        finally:
            conn.close()
        if resp.status >= 400:
            try:
                msg = json.loads(data).get("error", "")
            except (ValueError, AttributeError):
                msg = data.decode("utf-8", "replace")
            raise StatusError(resp.status, "", msg)
        return json.loads(data) if data.strip() else None

    def stream(self, method: str, path: str, body):
        conn, resp = self._open(method, path, body)
        try:
            while True:
                line = resp.readline()
                if not line:
                    break
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    raise CLIError(f"unmarshal: {e}") from None
                if resp.status >= 400:
                    raise StatusError(resp.status, f"{resp.status} {resp.reason}",
                                      obj.get("error", "") if isinstance(obj, dict) else "")
                if isinstance(obj, dict) and obj.get("error"):
                    raise CLIError(obj["error"])
                yield obj
        finally:
            conn.close()


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers] + rows) for i in range(len(headers))]
    lines = []
    for r in [headers] + rows:
        lines.append("".join(c.ljust(w) + "    " for c, w in zip(r, widths, strict=True)))
    return "\n".join(lines) + "\n"


def cmd_list(args: list[str]) -> int:
    c = Client()
    c.heartbeat()
    models = (c.do("GET", "/api/tags") or {}).get("models") or []
    rows = []
    for m in models:
        name = m.get("name", "")
        if args and not name.lower().startswith(args[0].lower()):
            continue
        rows.append([name, (m.get("digest") or "")[:12], human_bytes(int(m.get("size") or 0)),
                     human_time(parse_rfc3339(m.get("modified_at", "")), "Never")])
    sys.stdout.write(_table(["NAME", "ID", "SIZE", "MODIFIED"], rows))
    return 0


def cmd_ps(args: list[str]) -> int:
    c = Client()
    c.heartbeat()
    models = (c.do("GET", "/api/ps") or {}).get("models") or []
    rows = []
    for m in models:
        name = m.get("name", "")
        if args and not name.startswith(args[0]):
            continue
        size, vram = int(m.get("size") or 0), int(m.get("size_vram") or 0)
        if vram == 0:
            proc = "100% CPU"
        elif vram == size:
            proc = "100% GPU"
        elif vram > size or size == 0:
            proc = "Unknown"
        else:
            cpu = round((size - vram) / size * 100)
            proc = f"{cpu}%/{100 - cpu}% CPU/GPU"
        exp = parse_rfc3339(m.get("expires_at", ""))
        until = "Stopping..." if exp is not None and exp < time.time() else human_time(exp, "Never")
        rows.append([name, (m.get("digest") or "")[:12], human_bytes(size), proc, until])
    sys.stdout.write(_table(["NAME", "ID", "SIZE", "PROCESSOR", "UNTIL"], rows))
    return 0


def _pull(c: Client, name: str, insecure: bool) -> None:
    status = ""
    shown: set[str] = set()
    err = sys.stderr
    for resp in c.stream("POST", "/api/pull", {"name": name, "insecure": insecure}):
        digest = resp.get("digest")
        if digest:
            total, done = int(resp.get("total") or 0), int(resp.get("completed") or 0)
            if total and done >= total and digest not in shown:
                shown.add(digest)
                bar = "\u2595" + "\u2588" * 16 + "\u258f"
                err.write(f"pulling {digest[7:19]}: 100% {bar} {human_bytes(total)}\n")
                err.flush()
        elif resp.get("status") and resp["status"] != status:
            status = resp["status"]
            err.write(status + "\n")
            err.flush()


def _flags(args: list[str], known: dict[str, bool]) -> tuple[list[str], dict[str, str | bool]]:
    """Split cobra-style flags; known maps flag name -> takes a value."""
    pos: list[str] = []
    vals: dict[str, str | bool] = {}
    it = iter(range(len(args)))
    for i in it:
        a = args[i]
        if a.startswith("--") and len(a) > 2:
            key, eq, val = a[2:].partition("=")
            if key not in known:
                raise CLIError(f"unknown flag: --{key}")
            if known[key]:
                if not eq:
                    try:
                        val = args[next(it)]
                    except StopIteration:
                        raise CLIError(f"flag needs an argument: --{key}") from None
                vals[key] = val
            else:
                vals[key] = val.lower() not in ("false", "0") if eq else True
        else:
            pos.append(a)
    return pos, vals


def _nargs(args: list[str], exact: int | None = None, minimum: int | None = None) -> None:
    if exact is not None and len(args) != exact:
        raise CLIError(f"accepts {exact} arg(s), received {len(args)}")
    if minimum is not None and len(args) < minimum:
        raise CLIError(f"requires at least {minimum} arg(s), only received {len(args)}")


def cmd_pull(args: list[str]) -> int:
    pos, flags = _flags(args, {"insecure": False})
    _nargs(pos, exact=1)
    c = Client()
    c.heartbeat()
    _pull(c, pos[0], bool(flags.get("insecure")))
    return 0


def _unload(c: Client, model: str) -> None:
    for _ in c.stream("POST", "/api/generate", {"model": model, "keep_alive": 0}):
        pass


def cmd_rm(args: list[str]) -> int:
    _nargs(args, minimum=1)
    c = Client()
    c.heartbeat()
    try:
        _unload(c, args[0])
    except CLIError as e:
        if "not found" not in str(e):
            raise CLIError(f'unable to stop existing running model "{args[0]}": {e}') from None
    for name in args:
        c.do("DELETE", "/api/delete", {"name": name})
        sys.stdout.write(f"deleted '{name}'\n")
    return 0


def cmd_cp(args: list[str]) -> int:
    _nargs(args, exact=2)
    c = Client()
    c.heartbeat()
    c.do("POST", "/api/copy", {"source": args[0], "destination": args[1]})
    sys.stdout.write(f"copied '{args[0]}' to '{args[1]}'\n")
    return 0


def cmd_stop(args: list[str]) -> int:
    _nargs(args, exact=1)
    c = Client()
    c.heartbeat()
    try:
        _unload(c, args[0])
    except CLIError as e:
        if "not found" in str(e):
            raise CLIError(f'couldn\'t find model "{args[0]}" to stop') from None
        raise
    return 0


def cmd_show(args: list[str]) -> int:
    pos, flags = _flags(args, {"modelfile": False, "template": False, "parameters": False,
                               "license": False, "system": False, "verbose": False})
    _nargs(pos, exact=1)
    c = Client()
    c.heartbeat()
    info = c.do("POST", "/api/show", {"name": pos[0]}) or {}
    for key in ("modelfile", "template", "parameters", "license", "system"):
        if flags.get(key):
            sys.stdout.write((info.get(key) or "") + "\n")
            return 0
    d = info.get("details") or {}
    mi = info.get("model_info") or {}
    arch = d.get("family", "")
    rows = [("architecture", arch), ("parameters", d.get("parameter_size", "")),
            ("context length", str(mi.get(f"{arch}.context_length", ""))),
            ("embedding length", str(mi.get(f"{arch}.embedding_length", ""))),
            ("quantization", d.get("quantization_level", ""))]
    out = ["  Model"] + [f"    {k:<20}{v}" for k, v in rows] + [""]
    out += ["  Capabilities"] + [f"    {x}" for x in info.get("capabilities") or []] + [""]
    if info.get("parameters"):
        out += ["  Parameters"] + [f"    {line}" for line in info["parameters"].splitlines()]
        out += [""]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def _generate_print(c: Client, model: str, prompt: str, flags: dict) -> None:
    body: dict = {"model": model, "prompt": prompt}
    if flags.get("keepalive"):
        body["keep_alive"] = flags["keepalive"]
    if flags.get("format"):
        body["format"] = flags["format"]
    for resp in c.stream("POST", "/api/generate", body):
        sys.stdout.write(resp.get("response", ""))
        sys.stdout.flush()
    sys.stdout.write("\n\n" if sys.stdout.isatty() else "\n")


def cmd_run(args: list[str]) -> int:
    pos, flags = _flags(args, {"insecure": False, "keepalive": True, "format": True,
                               "verbose": False, "nowordwrap": False, "think": False,
                               "hidethinking": False})
    _nargs(pos, minimum=1)
    c = Client()
    c.heartbeat()
    model = pos[0]
    try:
        c.do("POST", "/api/show", {"name": model})
    except StatusError as e:
        if e.code != 404:
            raise
        _pull(c, model, bool(flags.get("insecure")))
        c.do("POST", "/api/show", {"name": model})
    prompts = pos[1:]
    interactive = not prompts
    if not sys.stdin.isatty():
        prompts = [sys.stdin.read()] + prompts
        interactive = False
    if not interactive:
        _generate_print(c, model, " ".join(prompts), flags)
        return 0
    for _ in c.stream("POST", "/api/generate", {"model": model}):
        pass
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            return 0
        if line.strip() in ("/bye", "/exit"):
            return 0
        if line.strip():
            _generate_print(c, model, line, flags)


def cmd_version(args: list[str]) -> int:
    version = lab_version()
    c = Client()
    server = ""
    try:
        server = (c.do("GET", "/api/version") or {}).get("version", "")
    except CLIError:
        sys.stdout.write("Warning: could not connect to a running Ollama instance\n")
    if server:
        sys.stdout.write(f"ollama version is {server}\n")
    if server != version:
        sys.stdout.write(f"Warning: client version is {version}\n")
    return 0


USAGE = """Large language model runner

Usage:
  ollama [flags]
  ollama [command]

Available Commands:
  serve       Start ollama
  create      Create a model from a Modelfile
  show        Show information for a model
  run         Run a model
  stop        Stop a running model
  pull        Pull a model from a registry
  push        Push a model to a registry
  list        List models
  ps          List running models
  cp          Copy a model
  rm          Remove a model
  help        Help about any command

Flags:
  -h, --help      help for ollama
  -v, --version   Show version information

Use "ollama [command] --help" for more information about a command.
"""


def cmd_unsupported(args: list[str]) -> int:
    raise CLIError("lab: this command is not implemented by the lab stand-in")


COMMANDS = {
    "serve": lambda a: serve(), "start": lambda a: serve(),
    "list": cmd_list, "ls": cmd_list, "ps": cmd_ps, "pull": cmd_pull,
    "rm": cmd_rm, "cp": cmd_cp, "show": cmd_show, "stop": cmd_stop, "run": cmd_run,
    "push": cmd_unsupported, "create": cmd_unsupported,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0
    if argv[0] in ("-v", "--version"):
        return cmd_version(argv[1:])
    cmd = COMMANDS.get(argv[0])
    if cmd is None:
        sys.stderr.write(f'Error: unknown command "{argv[0]}" for "ollama"\n')
        return 1
    if "-h" in argv[1:] or "--help" in argv[1:]:
        sys.stdout.write(USAGE)
        return 0
    try:
        return cmd(argv[1:])
    except CLIError as e:
        sys.stderr.write(f"Error: {e}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""fleetlab model registry: a stand-in for registry.ollama.ai.

Serves deterministic, synthetic Ollama models over the registry's URL shapes
(Docker distribution v2 API subset) so that lab hosts can "pull" models from a
local service:

    GET       /v2/                                   -> 200 {}
    GET|HEAD  /v2/<namespace>/<model>/manifests/<tag> -> manifest (or 404 MANIFEST_UNKNOWN)
    GET|HEAD  /v2/<namespace>/<model>/blobs/sha256:<hex>
                                                      -> 307 Temporary Redirect to the blob
                                                         store (Location), or 404 BLOB_UNKNOWN
    GET|HEAD  /ollama/docker/registry/v2/blobs/sha256/<hh>/<hex>/data
                                                      -> the blob store: the bytes, Range
                                                         aware (206/416), no Location

As registry.ollama.ai does, a blob is never served from the registry's own path: the
registry answers 307 with ``Location`` on its blob store (Cloudflare R2 there), on another
host name. Ollama follows redirects only as long as the host name stays the same and
takes the first ``Location`` that leaves it as the URL it then fetches in ranged parts
(server/download.go). The blob store's base URL is ``FLEETLAB_BLOB_URL`` (or
``--blob-url``), e.g. ``http://blobs.<lab>.test:8081``: a name for this same server that
differs from the one clients use for the registry. When it is unset, the redirect points
at this server under the Host the client asked for: a client that follows same-host
redirects then ends at the blob store's plain 200, which has no ``Location``, and a
strict client (Ollama) fails, exactly as it would against such a registry. Faults,
counters and the rate limit apply to the blob store's bytes.

Manifests are served as a Docker distribution registry writes them (3-space indent,
descriptors ordered mediaType, size, digest), so that their bytes differ from the
compact re-encoding Ollama stores after a pull: the model ID Ollama lists is the sha256
of its own re-encoding, not the registry's ``Docker-Content-Digest``.

Lab-only control endpoints live under /_lab/ (stats, reset, fault, rate, unreachable).
``POST /_lab/unreachable {"hosts": ["10.0.0.2:8081", ...]}`` cuts the registry off under
those names: a request whose Host header is one of them is dropped unanswered (the
connection closed), as when a network cannot reach the registry, while the same server
stays reachable under its other names (a mirror's, the blob store's); ``[]`` undoes it.
The fault
``{"hostile": true}`` makes every manifest a hostile one, as a compromised or malicious
registry could serve: digests and sizes that are shell (``$(touch CANARY)``), a path and
a negative number, where the registry's protocol has ``sha256:<64 hex>`` and a size;
the command they would run creates HOSTILE_CANARY on whatever machine runs it.
The fault ``{"oversize_bytes": N}`` makes the blob store send N bytes more than the blob
(zeros after its bytes; ``Content-Length`` counts them), as a compromised mirror or peer
could: the manifest's size and digest stay the registry's, so a client that reads past
the declared size is caught by its own cap, not by a changed digest.

Content is a pure function of the catalog entry (name, tag, scaled size), so
digests are identical across restarts and hosts. Model layers start with the
4 bytes ``GGUF`` followed by SHAKE-256 output of a per-model seed, generated in
1 MiB blocks (block i = shake_256(seed || i).digest(1 MiB)).

Usage:
    python3 modelregistry.py --listen 0.0.0.0:8081 --data /var/lib/fleetlab-models \
        --catalog /etc/fleetlab/models.json [--rate BYTES_PER_SEC] [--size-scale FLOAT] \
        [--blob-url URL]   (default: $FLEETLAB_BLOB_URL)

Stdlib only; Python 3.10+. ``build_catalog`` is importable for callers that
want digests without running a server.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# Bump when the content scheme changes so stale generated blobs are not reused.
CONTENT_VERSION = "fleetlab-modelregistry-v1"
BLOCK_SIZE = 1 << 20
MIN_MODEL_SIZE = 64
DEFAULT_TEMPLATE = "{{ .Prompt }}"
DEFAULT_PARAMS = {"stop": ["<|end|>"]}

MT_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_MODEL = "application/vnd.ollama.image.model"
MT_TEMPLATE = "application/vnd.ollama.image.template"
MT_PARAMS = "application/vnd.ollama.image.params"


# --------------------------------------------------------------------------
# Catalog / content generation (importable, no server needed)
# --------------------------------------------------------------------------


def build_catalog(
    catalog: dict, data_dir: Path | None, size_scale: float = 1.0
) -> list[dict]:
    """Resolve a catalog (``{"models": [...]}``) into concrete models.

    Generates every blob under ``<data_dir>/blobs/sha256-<hex>`` (skipped when
    already generated with the right size and recorded digest). With
    ``data_dir=None`` nothing is written; digests are only computed.

    Returns one dict per model with the catalog fields (name, tag, family,
    parameter_size, quantization_level, ...) plus:
      ``digest``   manifest digest "sha256:<hex>" (of ``manifest`` bytes)
      ``manifest`` the manifest JSON text exactly as served
      ``size``     total bytes of config + layers
      ``config``   {"mediaType", "digest", "size"}
      ``layers``   [{"mediaType", "digest", "size"}, ...] (model, template, params)
      ``blobs``    {"sha256:<hex>": "<path>" or None}
    """
    if size_scale <= 0:
        raise ValueError("size_scale must be > 0")
    data_dir = Path(data_dir) if data_dir is not None else None
    if data_dir is not None:
        (data_dir / "blobs").mkdir(parents=True, exist_ok=True)
        (data_dir / "index").mkdir(parents=True, exist_ok=True)
    out = []
    seen = set()
    for raw in catalog.get("models", []):
        entry = dict(raw)
        name = _normalize_name(str(entry["name"]))
        tag = str(entry.get("tag") or "latest")
        if (name, tag) in seen:
            raise ValueError(f"duplicate catalog entry {name}:{tag}")
        seen.add((name, tag))
        family = str(entry.get("family", "llama"))
        param_size = str(entry.get("parameter_size", "1B"))
        quant = str(entry.get("quantization_level", "Q4_0"))
        size = max(MIN_MODEL_SIZE, int(round(int(entry["size"]) * size_scale)))

        model_hex, model_path = _ensure_model_blob(name, tag, size, data_dir)
        blobs: dict[str, str | None] = {"sha256:" + model_hex: model_path}

        template = entry.get("template", DEFAULT_TEMPLATE)
        params = entry.get("params", DEFAULT_PARAMS)
        template_bytes = str(template).encode()
        params_bytes = json.dumps(params, separators=(",", ":")).encode()
        template_d = _put_small_blob(template_bytes, data_dir, blobs)
        params_d = _put_small_blob(params_bytes, data_dir, blobs)
        layers = [
            {"mediaType": MT_MODEL, "digest": "sha256:" + model_hex, "size": size},
            {"mediaType": MT_TEMPLATE, "digest": template_d, "size": len(template_bytes)},
            {"mediaType": MT_PARAMS, "digest": params_d, "size": len(params_bytes)},
        ]
        config = {
            "model_format": "gguf",
            "model_family": family,
            "model_families": [family],
            "model_type": param_size,
            "file_type": quant,
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [lay["digest"] for lay in layers]},
        }
        config_bytes = json.dumps(config, separators=(",", ":")).encode()
        config_d = _put_small_blob(config_bytes, data_dir, blobs)
        config_desc = {"mediaType": MT_CONFIG, "digest": config_d, "size": len(config_bytes)}
        manifest_text = distribution_manifest(config_desc, layers)
        manifest_digest = "sha256:" + hashlib.sha256(manifest_text.encode()).hexdigest()

        entry.update(
            name=name,
            tag=tag,
            family=family,
            parameter_size=param_size,
            quantization_level=quant,
            digest=manifest_digest,
            manifest=manifest_text,
            size=config_desc["size"] + sum(lay["size"] for lay in layers),
            config=config_desc,
            layers=layers,
            blobs=blobs,
        )
        out.append(entry)
    return out


def distribution_manifest(config: dict, layers: list[dict]) -> str:
    """The manifest's text as a Docker distribution registry serves it: schema2's
    ``json.MarshalIndent(m, "", "   ")``, each descriptor ordered mediaType, size, digest
    (distribution's ``Descriptor`` struct). Ollama's re-encoding of it after a pull (its
    ``Layer`` order mediaType, digest, size, compact) is other bytes, so another sha256."""

    def desc(d: dict) -> dict:
        return {"mediaType": d["mediaType"], "size": d["size"], "digest": d["digest"]}

    manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": desc(config),
                "layers": [desc(x) for x in layers]}
    return json.dumps(manifest, indent=3)


def _normalize_name(name: str) -> str:
    name = name.strip("/")
    return name if "/" in name else "library/" + name


def _model_seed(name: str, tag: str) -> bytes:
    return hashlib.sha256(f"{CONTENT_VERSION}\0{name}\0{tag}".encode()).digest()


def iter_model_bytes(name: str, tag: str, size: int):
    """Yield the model layer content (``GGUF`` + SHAKE-256 blocks), ``size`` bytes."""
    seed = _model_seed(name, tag)
    head = b"GGUF"[:size]
    yield head
    remaining = size - len(head)
    block = 0
    while remaining > 0:
        n = min(BLOCK_SIZE, remaining)
        yield hashlib.shake_256(seed + block.to_bytes(8, "big")).digest(BLOCK_SIZE)[:n]
        remaining -= n
        block += 1


def _record_path(data_dir: Path, name: str, tag: str, size: int) -> Path:
    key = hashlib.sha256(f"{CONTENT_VERSION}\0{name}\0{tag}\0{size}".encode()).hexdigest()
    return data_dir / "index" / f"{key[:32]}.json"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _ensure_model_blob(name: str, tag: str, size: int, data_dir: Path | None):
    if data_dir is None:
        h = hashlib.sha256()
        for chunk in iter_model_bytes(name, tag, size):
            h.update(chunk)
        return h.hexdigest(), None
    record = _record_path(data_dir, name, tag, size)
    try:
        rec = json.loads(record.read_text())
        hexd = rec["sha256"]
        path = data_dir / "blobs" / f"sha256-{hexd}"
        if (
            rec.get("name") == name
            and rec.get("tag") == tag
            and rec.get("size") == size
            and path.stat().st_size == size
        ):
            return hexd, str(path)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    t0 = time.monotonic()
    blobs = data_dir / "blobs"
    tmp = blobs / f".gen-{os.getpid()}-{threading.get_ident()}-{record.stem}.tmp"
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            for chunk in iter_model_bytes(name, tag, size):
                h.update(chunk)
                f.write(chunk)
        hexd = h.hexdigest()
        path = blobs / f"sha256-{hexd}"
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    rec = {"name": name, "tag": tag, "size": size, "sha256": hexd, "version": CONTENT_VERSION}
    _atomic_write(record, json.dumps(rec).encode())
    _log(f"generated {name}:{tag} sha256:{hexd} {size} bytes in {time.monotonic() - t0:.2f}s")
    return hexd, str(path)


def _put_small_blob(data: bytes, data_dir: Path | None, blobs: dict) -> str:
    hexd = hashlib.sha256(data).hexdigest()
    path = None
    if data_dir is not None:
        p = data_dir / "blobs" / f"sha256-{hexd}"
        try:
            ok = p.stat().st_size == len(data)
        except OSError:
            ok = False
        if not ok:
            _atomic_write(p, data)
        path = str(p)
    blobs["sha256:" + hexd] = path
    return "sha256:" + hexd


def _log(msg: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} modelregistry: {msg}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------
# Server state
# --------------------------------------------------------------------------


class TokenBucket:
    """Global bandwidth cap shared by all connections (virtual-clock bucket)."""

    BURST_S = 0.05

    def __init__(self, rate: int = 0):
        self._lock = threading.Lock()
        self.rate = max(0, int(rate))
        self._next = time.monotonic()

    def set_rate(self, rate: int) -> None:
        with self._lock:
            self.rate = max(0, int(rate))
            self._next = time.monotonic()

    def chunk_size(self, default: int) -> int:
        rate = self.rate
        if rate <= 0:
            return default
        return max(1024, min(default, rate // 20))

    def acquire(self, n: int) -> None:
        """Block until ``n`` bytes may be sent."""
        with self._lock:
            rate = self.rate
            if rate <= 0:
                return
            now = time.monotonic()
            start = max(self._next, now - self.BURST_S)
            self._next = start + n / rate
            wait = start - now
        if wait > 0:
            time.sleep(wait)


class Registry:
    def __init__(self, models: list[dict], rate: int = 0, blob_url: str | None = None):
        self.models = models
        # Base URL of the blob store the registry redirects blob requests to; None: this
        # server under the Host the client asked for (see the module docstring).
        self.blob_url = blob_url.rstrip("/") if blob_url else None
        self.by_ref: dict[tuple[str, str], dict] = {}
        self.blobs: dict[str, tuple[str, int]] = {}
        for m in models:
            m["_manifest_bytes"] = m["manifest"].encode()
            self.by_ref[(m["name"], m["tag"])] = m
            self.by_ref[(m["name"], m["digest"])] = m
            for desc in [m["config"], *m["layers"]]:
                path = m["blobs"][desc["digest"]]
                self.blobs[desc["digest"]] = (path, desc["size"])
        self.bucket = TokenBucket(rate)
        self.lock = threading.Lock()
        self.fault: dict | None = None
        # Host headers (`host:port`, lower case) this registry is unreachable under: a
        # request naming one is dropped unanswered, as a cut-off network would (lab only)
        self.unreachable: set[str] = set()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.blob_bytes = 0
            self.manifest_bytes = 0
            self.manifest_requests = 0
            self.blob_requests = 0  # on the registry's blob path: answered 307 (or 404)
            self.redirects = 0
            self.blob_store_requests = 0  # GET/HEAD on the blob store
            self.range_requests = 0  # blob store GETs that carried a Range header
            self.ranges: dict[str, list[str]] = {}  # digest -> those Range headers, in order
            self.faults_injected = 0
            self.by_blob: dict[str, int] = {}
            self.by_client: dict[str, int] = {}
            self.fault = None

    def hostile(self) -> bool:
        with self.lock:
            return bool(self.fault and self.fault.get("hostile"))

    def lookup_manifest(self, name: str, ref: str) -> dict | None:
        m = self.by_ref.get((name, ref))
        if m is None and "/" not in name:
            m = self.by_ref.get(("library/" + name, ref))
        return m

    def count_store_request(self, digest: str, rng: str | None, method: str) -> None:
        with self.lock:
            self.blob_store_requests += 1
            if rng is not None and method == "GET":
                self.range_requests += 1
                seen = self.ranges.setdefault(digest, [])
                if len(seen) < MAX_RANGES_KEPT:
                    seen.append(rng)

    def count(self, client: str, n: int, digest: str | None) -> None:
        with self.lock:
            if digest is None:
                self.manifest_bytes += n
            else:
                self.blob_bytes += n
                self.by_blob[digest] = self.by_blob.get(digest, 0) + n
            self.by_client[client] = self.by_client.get(client, 0) + n

    def take_fault(self, digest: str, body_len: int) -> dict | None:
        """Consume one fault use if it applies to this blob response."""
        with self.lock:
            f = self.fault
            if f is None or f["times"] == 0:
                return None
            if f.get("digest") and f["digest"] != digest:
                return None
            if body_len <= f["drop_after_bytes"]:
                return None  # fault cannot take effect on a body this short
            if f["times"] > 0:
                f["times"] -= 1
            self.faults_injected += 1
            return dict(f)

    def stats(self) -> dict:
        with self.lock:
            return {
                "bytes_sent": self.blob_bytes + self.manifest_bytes,
                "blob_bytes_sent": self.blob_bytes,
                "manifest_bytes_sent": self.manifest_bytes,
                "manifest_requests": self.manifest_requests,
                "blob_requests": self.blob_requests,
                "redirects": self.redirects,
                "blob_store_requests": self.blob_store_requests,
                "range_requests": self.range_requests,
                "ranges": {k: list(v) for k, v in self.ranges.items()},
                "blob_url": self.blob_url,
                "faults_injected": self.faults_injected,
                "by_blob": dict(self.by_blob),
                "by_client": dict(self.by_client),
                "bytes_per_sec": self.bucket.rate,
                "fault": dict(self.fault) if self.fault else None,
                "models": [public_model(m) for m in self.models],
            }


def public_model(m: dict) -> dict:
    keep = ("name", "tag", "digest", "size", "family", "parameter_size", "quantization_level")
    out = {k: m[k] for k in keep}
    for k, v in m.items():  # pass through extra catalog fields (e.g. "embedding")
        if k not in out and not k.startswith("_") and k not in (
            "manifest", "blobs", "template", "params"
        ):
            out[k] = v
    return out


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------

MANIFEST_RE = re.compile(r"^/v2/(?P<name>[^?#]+?)/manifests/(?P<ref>[^/]+)$")
BLOB_RE = re.compile(r"^/v2/(?P<name>[^?#]+?)/blobs/(?P<digest>[^/]+)$")
# The blob store's keys, laid out as distribution's storage driver keeps blobs (R2 there).
BLOB_STORE_PREFIX = "/ollama/docker/registry/v2/blobs/sha256"
BLOB_STORE_RE = re.compile(r"^/ollama/docker/registry/v2/blobs/sha256/(?P<hh>[0-9a-f]{2})/"
                           r"(?P<hex>[0-9a-f]{64})/data$")
MAX_RANGES_KEPT = 1000  # Range headers remembered per blob in /_lab/stats
_HOST_RE = re.compile(r"^[A-Za-z0-9.\-]+(:\d+)?$|^\[[0-9A-Fa-f:.]+\](:\d+)?$")
RANGE_RE = re.compile(r"^bytes=\s*(\d*)\s*-\s*(\d*)\s*$")
CHUNK = 64 * 1024


class _Dropped(Exception):
    pass


HOSTILE_CANARY = "/tmp/fleetlab-canary"
_RUN = f"$(touch {HOSTILE_CANARY})"


def hostile_manifest(raw: bytes) -> bytes:
    """RAW (a manifest) with every digest and size replaced by something a careless
    client would paste into a shell or a path: the hostile fault's manifest."""
    manifest = json.loads(raw)
    tricks = [("sha256:" + "a" * 64 + _RUN, 1), (f"sha256:{_RUN}", f"1{_RUN}"),
              ("sha256:../../../../etc/passwd", -1)]
    blobs = [manifest["config"], *manifest["layers"]]
    for blob, (digest, size) in zip(blobs, tricks * len(blobs), strict=False):
        blob["digest"], blob["size"] = digest, size
    return json.dumps(manifest).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # as Go's servers (TCP_NODELAY): no delayed-ACK stalls
    server_version = "fleetlab-modelregistry/1"
    timeout = 300  # idle keep-alive / stalled-client socket timeout
    registry: Registry  # set on the subclass by make_server

    # -- plumbing ---------------------------------------------------------

    def log_request(self, code="-", size="-"):
        pass  # one line per request is written by _log_done instead

    def log_message(self, format, *args):
        sys.stderr.write(f"{self.client_address[0]} - {format % args}\n")

    def _begin(self):
        self._t0 = time.monotonic()
        self._status = 0
        self._sent = 0

    def _log_done(self):
        path = self.path if len(self.path) < 300 else self.path[:300] + "..."
        dur = (time.monotonic() - self._t0) * 1000
        sys.stderr.write(
            f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {self.client_address[0]} "
            f'"{self.command} {path}" {self._status} {self._sent} {dur:.1f}ms\n'
        )

    def _head(self, status: int, ctype: str, length: int, extra: dict | None = None):
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()

    def _json(self, status: int, obj, extra: dict | None = None):
        body = json.dumps(obj).encode()
        self._head(status, "application/json", len(body), extra)
        if self.command != "HEAD":
            self.wfile.write(body)
            self._sent += len(body)

    def _error(self, status: int, code: str, message: str, detail=None):
        self._json(status, {"errors": [{"code": code, "message": message, "detail": detail}]})

    def _send_counted(self, data, digest: str | None, limit: bool) -> None:
        """Write body bytes to the socket, counting exactly what the kernel accepted."""
        reg = self.registry
        client = self.client_address[0]
        view = memoryview(data)
        if limit:
            reg.bucket.acquire(len(view))
        while view:
            n = self.connection.send(view)
            if n <= 0:
                raise ConnectionError("socket closed")
            reg.count(client, n, digest)
            self._sent += n
            view = view[n:]

    def _read_json_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if not raw.strip():
            return {}
        return json.loads(raw)

    def _route(self):
        self._begin()
        try:
            path = self.path.split("?", 1)[0].split("#", 1)[0]
            if not path.startswith("/_lab/") and \
                    (self.headers.get("Host") or "").lower() in self.registry.unreachable:
                self._drop()
            if self.command == "POST":
                self._post(path)
            else:
                self._get(path)
        except (TimeoutError, BrokenPipeError, ConnectionError, _Dropped):
            self.close_connection = True
        finally:
            self._log_done()

    do_GET = do_HEAD = do_POST = _route

    # -- GET / HEAD -------------------------------------------------------

    def _get(self, path: str):
        reg = self.registry
        if path in ("/v2", "/v2/"):
            return self._json(200, {})
        if path == "/_lab/stats":
            return self._json(200, reg.stats())
        if path == "/_lab/fault":
            with reg.lock:
                return self._json(200, {"fault": dict(reg.fault) if reg.fault else None})
        if path == "/_lab/rate":
            return self._json(200, {"bytes_per_sec": reg.bucket.rate})
        m = MANIFEST_RE.match(path)
        if m:
            return self._manifest(m["name"], m["ref"])
        m = BLOB_RE.match(path)
        if m:
            return self._redirect(m["digest"])
        m = BLOB_STORE_RE.match(path)
        if m and m["hex"].startswith(m["hh"]):
            return self._blob("sha256:" + m["hex"])
        if path.startswith("/_lab/"):
            if path in _LAB_POST:
                return self._error(405, "UNSUPPORTED", "use POST")
            return self._error(404, "NOT_FOUND", "not found", {"path": path})
        return self._error(404, "NOT_FOUND", "not found", {"path": path})

    def _manifest(self, name: str, ref: str):
        reg = self.registry
        with reg.lock:
            reg.manifest_requests += 1
        model = reg.lookup_manifest(name, ref)
        if model is None:
            return self._error(
                404, "MANIFEST_UNKNOWN", "manifest unknown", {"name": name, "tag": ref}
            )
        body, digest = model["_manifest_bytes"], model["digest"]
        if reg.hostile():
            body = hostile_manifest(body)
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self._head(200, MT_MANIFEST, len(body), {"Docker-Content-Digest": digest})
        if self.command != "HEAD":
            self._send_counted(body, None, limit=False)

    def _redirect(self, digest: str):
        """The registry's blob path: 307 to the blob store (GET and HEAD alike, as a
        distribution registry with a redirecting storage driver answers)."""
        reg = self.registry
        with reg.lock:
            reg.blob_requests += 1
        if digest not in reg.blobs:
            return self._error(
                404, "BLOB_UNKNOWN", "blob unknown to registry", {"digest": digest}
            )
        hexd = digest.split(":", 1)[1]
        key = f"{BLOB_STORE_PREFIX}/{hexd[:2]}/{hexd}/data"
        base = reg.blob_url
        if base is None:
            host = self.headers.get("Host")
            base = f"http://{host}" if host and _HOST_RE.match(host) else ""
        with reg.lock:
            reg.redirects += 1
        self._head(307, "text/html; charset=utf-8", 0,
                   {"Location": base + key, "Docker-Content-Digest": digest})

    def _blob(self, digest: str):
        """The blob store: the bytes, Range aware, a plain 200/206 with no Location."""
        reg = self.registry
        reg.count_store_request(digest, self.headers.get("Range"), self.command)
        info = reg.blobs.get(digest)
        if info is None:
            return self._error(
                404, "BLOB_UNKNOWN", "blob unknown to registry", {"digest": digest}
            )
        path, total = info
        start, end = 0, total - 1
        status = 200
        extra = {"Docker-Content-Digest": digest, "Accept-Ranges": "bytes",
                 "ETag": f'"{digest}"'}
        rng = self.headers.get("Range")
        if rng:
            parsed = _parse_range(rng, total)
            if parsed == "unsatisfiable":
                return self._json(
                    416,
                    {"errors": [{"code": "RANGE_INVALID", "message": "range not satisfiable",
                                 "detail": {"range": rng, "size": total}}]},
                    {"Content-Range": f"bytes */{total}"},
                )
            if parsed is not None:
                start, end = parsed
                status = 206
                extra["Content-Range"] = f"bytes {start}-{end}/{total}"
        length = end - start + 1
        fault = reg.take_fault(digest, length) if self.command != "HEAD" and length > 0 \
            else None
        over = fault.get("oversize_bytes", 0) if fault is not None else 0
        # the oversize fault: a body longer than the blob, framed as such (Content-Length)
        self._head(status, "application/octet-stream", length + over, extra)
        if self.command == "HEAD" or length <= 0:
            return
        drop_at = corrupt_at = None
        if fault is not None and not over:
            if fault.get("corrupt"):
                corrupt_at = fault["drop_after_bytes"]
            else:
                drop_at = fault["drop_after_bytes"]
        sent = 0
        with open(path, "rb") as f:
            f.seek(start)
            while sent < length:
                want = min(reg.bucket.chunk_size(CHUNK), length - sent)
                if drop_at is not None:
                    want = min(want, drop_at - sent)
                    if want <= 0:
                        self._drop()
                buf = f.read(want)
                if not buf:
                    raise ConnectionError(f"blob file {path} truncated")
                if corrupt_at is not None and sent <= corrupt_at < sent + len(buf):
                    b = bytearray(buf)
                    b[corrupt_at - sent] ^= 0xFF
                    buf = bytes(b)
                self._send_counted(buf, digest, limit=True)
                sent += len(buf)
        while over > 0:  # the blob's bytes, then as many more as the fault says
            extra_bytes = min(over, reg.bucket.chunk_size(CHUNK))
            self._send_counted(b"\0" * extra_bytes, digest, limit=True)
            over -= extra_bytes

    def _drop(self):
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raise _Dropped()

    # -- POST (/_lab control) ---------------------------------------------

    def _post(self, path: str):
        reg = self.registry
        try:
            body = self._read_json_body()
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
        except ValueError as e:
            return self._error(400, "BAD_REQUEST", f"invalid JSON body: {e}")
        if path == "/_lab/reset":
            reg.reset()
            return self._json(200, {"ok": True})
        if path == "/_lab/fault":
            try:
                fault = {
                    "drop_after_bytes": int(body.get("drop_after_bytes", 0)),
                    "times": int(body.get("times", 1)),
                    "corrupt": bool(body.get("corrupt", False)),
                    "hostile": bool(body.get("hostile", False)),
                    "oversize_bytes": int(body.get("oversize_bytes", 0)),
                }
                if fault["drop_after_bytes"] < 0 or fault["times"] < -1 \
                        or fault["oversize_bytes"] < 0:
                    raise ValueError("drop_after_bytes and oversize_bytes must be >= 0, "
                                     "times >= -1")
                if body.get("digest"):
                    fault["digest"] = str(body["digest"])
            except (TypeError, ValueError) as e:
                return self._error(400, "BAD_REQUEST", str(e))
            with reg.lock:
                reg.fault = fault if fault["times"] != 0 else None
            _log(f"fault set: {fault}")
            return self._json(200, {"fault": fault if fault["times"] != 0 else None})
        if path == "/_lab/unreachable":
            hosts = body.get("hosts", [])
            if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
                return self._error(400, "BAD_REQUEST", "hosts must be a list of host:port")
            with reg.lock:
                reg.unreachable = {h.lower() for h in hosts}
            _log(f"unreachable under: {sorted(reg.unreachable)}")
            return self._json(200, {"hosts": sorted(reg.unreachable)})
        if path == "/_lab/rate":
            try:
                rate = int(body["bytes_per_sec"])
                if rate < 0:
                    raise ValueError("bytes_per_sec must be >= 0")
            except (KeyError, TypeError, ValueError) as e:
                return self._error(400, "BAD_REQUEST", f"bytes_per_sec: {e}")
            reg.bucket.set_rate(rate)
            _log(f"rate set: {rate} B/s")
            return self._json(200, {"bytes_per_sec": rate})
        return self._error(404, "NOT_FOUND", "not found", {"path": path})


_LAB_POST = ("/_lab/reset",)  # POST-only; /_lab/fault and /_lab/rate also answer GET


def _parse_range(header: str, total: int):
    """Return (start, end) inclusive, "unsatisfiable", or None (ignore header)."""
    m = RANGE_RE.match(header.strip())
    if not m:
        return None  # unsupported / multi-range: serve the full body
    s, e = m.group(1), m.group(2)
    if s == "" and e == "":
        return None
    if s == "":  # suffix range: last N bytes
        n = int(e)
        if n == 0 or total == 0:
            return "unsatisfiable"
        return max(0, total - n), total - 1
    start = int(s)
    end = int(e) if e else total - 1
    if e and end < start:
        return None  # syntactically invalid: ignore
    if start >= total:
        return "unsatisfiable"
    return start, min(end, total - 1)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def make_server(host: str, port: int, registry: Registry) -> Server:
    handler = type("BoundHandler", (Handler,), {"registry": registry})
    return Server((host, port), handler)


def _parse_listen(value: str) -> tuple[str, int]:
    if value.startswith("["):  # [::]:8081
        host, _, port = value[1:].partition("]:")
    else:
        host, _, port = value.rpartition(":")
    return host or "0.0.0.0", int(port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="fleetlab stand-in for registry.ollama.ai")
    ap.add_argument("--listen", default="0.0.0.0:8081", help="HOST:PORT (default %(default)s)")
    ap.add_argument("--data", default="/var/lib/fleetlab-models", help="blob directory")
    ap.add_argument("--catalog", default="/etc/fleetlab/models.json", help="models.json")
    ap.add_argument("--rate", type=int, default=0,
                    help="global blob bandwidth cap in bytes/sec (0 = unlimited)")
    ap.add_argument("--size-scale", type=float, default=1.0,
                    help="multiply every catalog size by this factor")
    ap.add_argument("--blob-url", default=os.environ.get("FLEETLAB_BLOB_URL") or None,
                    help="base URL of the blob store blob requests are redirected to, a "
                         "host name other than the registry's (default $FLEETLAB_BLOB_URL; "
                         "unset: this server under the Host asked for)")
    args = ap.parse_args(argv)

    def _term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)  # also works as PID 1 in a container

    host, port = _parse_listen(args.listen)
    catalog = json.loads(Path(args.catalog).read_text())
    t0 = time.monotonic()
    models = build_catalog(catalog, Path(args.data), args.size_scale)
    _log(f"catalog ready: {len(models)} models in {time.monotonic() - t0:.2f}s")
    for m in models:
        _log(f"  {m['name']}:{m['tag']} {m['digest']} {m['size']} bytes")
    if args.blob_url and not re.match(r"^https?://[^/?#]+$", args.blob_url.rstrip("/")):
        ap.error(f"--blob-url {args.blob_url!r}: want http://HOST[:PORT]")
    registry = Registry(models, rate=args.rate, blob_url=args.blob_url)
    if ":" in host:
        Server.address_family = socket.AF_INET6
    httpd = make_server(host, port, registry)
    _log(f"listening on {host}:{httpd.server_address[1]} rate={args.rate} B/s "
         f"blob store={registry.blob_url or '(this server, same host name)'}")
    try:
        httpd.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    _log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

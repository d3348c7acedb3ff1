"""Pulling a model (server/images.go PullModel): the manifest decoded and re-encoded
as Ollama's Manifest struct, every layer downloaded, verified, the manifest written
last, unused layers removed."""

from __future__ import annotations

import hashlib
import http.client
import json
import os

from .download import download_blob
from .envconfig import env_bool, log
from .goformat import _json_kind, go_json, go_json_decode_error
from .names import Name
from .registry import PullError, _Retryable, go_net_error, make_request_with_retry, registry_base
from .store import MT_MANIFEST, Manifest, Store, StoreError


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


def pull_model(store: Store, name: Name, insecure: bool, emit,
               registry_bytes: bool = False) -> None:
    """PullModel: emit progress dicts; raise PullError on failure. The manifest stored is
    Ollama's re-encoding of the registry's (v0.6.8, v0.7.1: json.Marshal), or with
    REGISTRY_BYTES the registry's own bytes (v0.32.15: pullModelManifest's data written
    as it came), so the model ID is then the registry's manifest digest."""
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
    if registry_bytes:
        raw = body
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

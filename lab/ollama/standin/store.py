"""The model store (server/images.go, server/manifest.go, server/layer.go).

Upstream's layout: ``manifests/<host>/<namespace>/<model>/<tag>`` holds the manifest,
``blobs/sha256-<hex>`` the blobs; GetModel, ListHandler's listing, copy, delete and the
startup prune read and write it as upstream does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading

from .envconfig import log
from .names import Name

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

    def models(self, current: bool = False) -> list[ModelInfo]:
        """What ListHandler (v0.6.8 server/routes.go) lists: every manifest that parses
        and whose config blob opens and decodes, whether or not its layer blobs are
        there; a missing or broken config blob leaves the model out (a warning).

        CURRENT (v0.32.15 server/model_list_cache.go buildModelListSummary): also left
        out is a model whose template (or prompt) blob cannot be read, or one with a
        model, template or prompt layer digest that is not a sha256 one; a config that
        decodes to null is an empty one."""
        out = []
        for n in self.list_names():
            try:
                mf = self.read_manifest(n)
            except StoreError as e:
                log("WARN", "manifest.go:165", "bad manifest", name=str(n), error=str(e))
                continue
            if mf is None:
                continue
            if current:
                why = self._list_summary_error(mf)
                if why:
                    log("WARN", "model_list_cache.go:205", "failed to refresh model list cache",
                        model=str(n), error=why)
                    continue
            elif self.read_config(mf) is None:
                log("WARN", "routes.go:916", "bad manifest filepath", name=str(n),
                    error=f"config blob {mf.config.get('digest') if mf.config else ''}")
                continue
            out.append(ModelInfo(self, mf))
        return out

    def _list_summary_error(self, mf: Manifest) -> str:
        """Why buildModelListSummary fails for MF ('' when it does not)."""
        if mf.config:
            digest = str(mf.config.get("digest", ""))
            try:
                with open(self.blob_path(digest), "rb") as f:
                    cfg = json.loads(f.read())
            except StoreError as e:
                return str(e)
            except OSError as e:
                return f"open {os.path.join(self.blobs, 'sha256-' + digest[7:])}: " \
                       f"{(e.strerror or str(e)).lower()}"
            except ValueError as e:
                return str(e)
            if cfg is not None and not isinstance(cfg, dict):
                return "json: cannot unmarshal into Go value of type model.ConfigV2"
        for layer in mf.layers:
            mt = layer.get("mediaType")
            if mt not in (MT_MODEL, MT_TEMPLATE, "application/vnd.ollama.image.prompt"):
                continue
            try:
                path = self.blob_path(str(layer.get("digest", "")))
            except StoreError as e:
                return str(e)
            if mt != MT_MODEL:
                try:
                    with open(path, "rb") as f:
                        f.read()
                except OSError as e:
                    return f"open {path}: {(e.strerror or str(e)).lower()}"
        return ""

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

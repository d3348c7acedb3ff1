"""Back up a host's Ollama model store to a checked tarball; restore one onto any host.

    ollama-fleet INVENTORY backup HOST [--to DIR | --on-host] [--data KEY=VALUE ...]
    ollama-fleet INVENTORY restore HOST TARBALL [--data KEY=VALUE ...] [-y]

Backup guarantees: the manifests are copied first and then only the blobs they
reference are read, so a model pulled meanwhile is either whole in the tarball or
absent (Ollama writes blobs before their manifest); every blob's sha256 is checked
against its file name on the host before it goes in, and a corrupt one fails the
backup; the tarball (`<host>-models-<UTC time>.tar`) holds `SHA256SUMS` (every file
in it) and gets a `<tarball>.sha256` beside it. It is built on the host under
/var/backups/ollama, then fetched (and removed there) unless --on-host keeps it.

Restore guarantees: the tarball is checked on the operator's machine (its .sha256,
every file against SHA256SUMS, every blob against its name, every manifest's blobs
present) before any host is touched, and again on the host after the upload; it is
extracted in a staging directory beside the store (same filesystem), then blobs are
moved into place first and manifests last, so a half-restored model never looks
present; identical blobs and manifests already there are kept; a restore whose
models are all present changes nothing. Afterwards every instance must list the
restored models with their digests. On failure the staging directory is removed.

This module holds the backup format (its parsers and checks) and the on-host work,
pyinfra operations run by tasks/deploys/backup.py and tasks/deploys/restore.py; the
commands that drive them are fleetctl/backup.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import tarfile
from collections.abc import Generator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from pyinfra import host
from pyinfra.api import FactBase, operation
from pyinfra.operations import files

from ollama_fleet.tasks.kit import store as model_store
from ollama_fleet.tasks.kit.facts import OllamaModels, planning
from ollama_fleet.tasks.kit.manifests import MANIFEST_MAX_BYTES, ManifestError, manifest_layers
from ollama_fleet.tasks.kit.report import ERROR_MARK, fail_command
from ollama_fleet.tasks.kit.scripts import script_command
from ollama_fleet.tasks.kit.settings import Settings

HOST_BACKUP_DIR = "/var/backups/ollama"
STAGING = ".fleet-restore"  # beside models/ in the store: same filesystem, unseen by Ollama
JOB_ENV = "OLLAMA_FLEET_BACKUP_JOB"  # path of the job file the deploy files read
TRANSFER_TIMEOUT_S = 6 * 3600
SUMS = "SHA256SUMS"
# read into memory when checked: a line (~130 bytes) per file, 64 Ki files; manifests are
# bounded by tasks.kit.manifests
SUMS_MAX_BYTES = 8 << 20

BLOB_PATH = re.compile(r"models/blobs/sha256-([0-9a-f]{64})")
NAME_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:+-]*")


class BackupError(Exception):
    """A tarball, checksum file or store that cannot be backed up or restored."""


# -- pure helpers: names, checksum files, manifests ---------------------------------------

def archive_name(host_name: str, now: datetime | None = None) -> str:
    """`<host>-models-<UTC timestamp>.tar`, e.g. gpu-1-models-20250125T170300Z.tar."""
    stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{host_name}-models-{stamp}.tar"


def parse_sha256sums(text: str) -> dict[str, str]:
    """`sha256sum` output (`<hex>  <path>` per line) -> {path: hex}; BackupError on a bad
    line, an unsafe path or a path listed twice."""
    sums: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = re.fullmatch(r"([0-9a-f]{64}) [ *](\S.*)", line)
        if not match:
            raise BackupError(f"{SUMS} line {number}: not `<sha256>  <path>`: {line[:80]!r}")
        digest, path = match.groups()
        if not safe_path(path):
            raise BackupError(f"{SUMS} line {number}: {path!r} is not a path inside the store")
        if path in sums:
            raise BackupError(f"{SUMS} line {number}: {path} is listed twice")
        sums[path] = digest
    return sums


def parse_checksum_file(text: str, what: str = "checksum file") -> str:
    """The sha256 in a `<tarball>.sha256` (`<hex>  <name>`, as sha256sum writes it)."""
    match = re.fullmatch(r"\s*([0-9a-fA-F]{64})(\s+\*?\S.*)?\s*", text)
    if not match:
        raise BackupError(f"{what}: not `<sha256>  <tarball name>`")
    return match.group(1).lower()


def safe_path(path: str) -> bool:
    """Whether PATH is a file a store backup may hold: SHA256SUMS, a manifest
    (models/manifests/<registry>/<namespace>/<model>/<tag>) or a blob."""
    if path == SUMS or BLOB_PATH.fullmatch(path):
        return True
    parts = path.split("/")
    return (len(parts) == 6 and parts[:2] == ["models", "manifests"]
            and all(NAME_PART.fullmatch(p) and ".." not in p for p in parts[2:]))


def safe_dir(path: str) -> bool:
    """Whether PATH is a directory a store backup may hold (models/ and below)."""
    parts = path.rstrip("/").split("/")
    if parts in (["models"], ["models", "manifests"], ["models", "blobs"]):
        return True
    return (2 < len(parts) <= 5 and parts[:2] == ["models", "manifests"]
            and all(NAME_PART.fullmatch(p) and ".." not in p for p in parts[2:]))


def manifest_blobs(raw: bytes, where: str = "manifest") -> list[str]:
    """Blob file names (`sha256-<hex>`) a manifest references: its config and layers
    (ollama_fleet.tasks.steps.models.manifest_layers reads it)."""
    try:
        return [f"sha256-{hex_}" for hex_, _ in manifest_layers(raw)]
    except ManifestError as exc:
        raise BackupError(f"{where}: {exc}") from None


def model_name(manifest_path: str) -> str:
    """The name Ollama lists for a manifest path (`models/manifests/registry.ollama.ai/
    library/tinyllama/latest` -> `tinyllama:latest`): default registry and namespace
    left out, as Ollama's /api/tags does."""
    registry, namespace, model, tag = manifest_path.split("/")[-4:]
    if registry == "registry.ollama.ai":
        prefix = "" if namespace == "library" else f"{namespace}/"
    else:
        prefix = f"{registry}/{namespace}/"
    return f"{prefix}{model}:{tag}"


@dataclass
class BackupIndex:
    """What a checked tarball holds: its own sha256 and size, manifests (path -> sha256),
    blobs (name -> size) and the models Ollama will list (name -> manifest digest)."""

    sha256: str
    size: int
    manifests: dict[str, str] = field(default_factory=dict)
    blobs: dict[str, int] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)

    @property
    def blob_bytes(self) -> int:
        return sum(self.blobs.values())


class _HashingReader:
    """A file wrapper that hashes every byte read through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.hash, self.size = raw, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hash.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def read_backup(path: str | Path) -> BackupIndex:
    """Check a backup tarball in one pass and describe it.

    Raises BackupError, naming the file inside the tarball, unless: every member is a
    regular file or directory at a store path; SHA256SUMS lists exactly the files
    present and each file's content matches it; every blob's sha256 is its name; every
    manifest's blobs are in the tarball. The tarball's own sha256 is in the result (the
    caller compares it with the .sha256 file)."""
    hashes: dict[str, str] = {}
    sizes: dict[str, int] = {}
    manifests_raw: dict[str, bytes] = {}
    sums_text: str | None = None
    with open(path, "rb") as raw:
        reader = _HashingReader(raw)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    if member.isdir():
                        if not safe_dir(member.name):
                            raise BackupError(f"{member.name}: not a directory of a store")
                        continue
                    if not member.isfile() or not safe_path(member.name):
                        raise BackupError(f"{member.name}: not a file of a store backup")
                    if member.name in hashes:
                        raise BackupError(f"{member.name}: in the tarball twice")
                    if member.name.startswith("models/manifests/") and \
                            member.size > MANIFEST_MAX_BYTES:
                        raise BackupError(f"{member.name}: {member.size} bytes is too large "
                                          "for a manifest")
                    if member.name == SUMS and member.size > SUMS_MAX_BYTES:
                        raise BackupError(f"{SUMS}: {member.size} bytes is too large for "
                                          f"the list of a store's files ({SUMS_MAX_BYTES})")
                    content = tar.extractfile(member)
                    assert content is not None  # noqa: S101 (a regular member always has content)
                    digest, keep = hashlib.sha256(), member.name == SUMS or \
                        member.name.startswith("models/manifests/")
                    kept = bytearray()
                    while chunk := content.read(1 << 20):
                        digest.update(chunk)
                        if keep:
                            kept += chunk
                    hashes[member.name], sizes[member.name] = digest.hexdigest(), member.size
                    if member.name == SUMS:
                        sums_text = kept.decode("utf-8", "replace")
                    elif keep:
                        manifests_raw[member.name] = bytes(kept)
        except (tarfile.TarError, EOFError) as exc:
            raise BackupError(f"not a readable tar file ({exc})") from None
        reader.drain()
    if sums_text is None:
        raise BackupError(f"no {SUMS} inside")
    sums = parse_sha256sums(sums_text)
    files_in = set(hashes) - {SUMS}
    missing, extra = sorted(set(sums) - files_in), sorted(files_in - set(sums))
    if missing:
        raise BackupError(f"{missing[0]}: listed in {SUMS} but not in the tarball")
    if extra:
        raise BackupError(f"{extra[0]}: in the tarball but not listed in {SUMS}")
    index = BackupIndex(sha256=reader.hash.hexdigest(), size=reader.size)
    for name in sorted(files_in):
        blob = BLOB_PATH.fullmatch(name)
        if blob and sums[name] != blob.group(1):
            raise BackupError(f"blob sha256-{blob.group(1)}: {SUMS} gives it another sha256 "
                              "than its name")
        if hashes[name] != sums[name]:
            what = f"blob {name.rsplit('/', 1)[1]}" if blob else f"manifest {name}"
            raise BackupError(f"{what}: content does not match its sha256 in {SUMS}"
                              f"{' (its name)' if blob else ''}; tampered with or damaged")
        if blob:
            index.blobs[name.rsplit("/", 1)[1]] = sizes[name]
    if not manifests_raw:
        raise BackupError("holds no manifest (no model to restore)")
    for name, content in sorted(manifests_raw.items()):
        for blob in manifest_blobs(content, f"manifest {name}"):
            if blob not in index.blobs:
                raise BackupError(f"manifest {name}: blob {blob} is not in the tarball")
        index.manifests[name] = hashes[name]
        index.models[model_name(name)] = hashes[name]
    return index


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def restore_plan(index: BackupIndex, store: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(manifests to write, blobs to bring in): what the store lacks or holds otherwise.
    A blob already there under its name and with its size is Ollama's own notion of
    present (blobs are named by their content); a manifest must be byte-identical."""
    manifests = [p for p, digest in index.manifests.items()
                 if store["manifests"].get(p) != digest]
    blobs = [b for b, size in index.blobs.items() if store["blobs"].get(b) != size]
    return manifests, blobs


# -- the shell that runs on the host -----------------------------------------------------
# templates/backup/*.sh: POSIX sh and coreutils only (sha256sum, tar, cmp), nothing to
# install on the host; every value is an argument (ollama_fleet.tasks.kit.scripts).

def backup_script(root: str, name: str, backup_dir: str = HOST_BACKUP_DIR) -> str:
    """Write BACKUP_DIR/NAME (+ NAME.sha256) from the store mounted at ROOT.

    Manifests are copied first; only the blobs they reference are read, each checked
    against its name before it is archived. Any failure removes what it wrote and says
    one line starting with ERROR_MARK (templates/backup/backup.sh)."""
    return script_command("backup/backup.sh", root, name, backup_dir)


def restore_script(root: str, tar_name: str, tar_sha256: str) -> str:
    """Check ROOT/STAGING/backup.tar (uploaded from TAR_NAME) and move it into the store.

    sha256 of the tarball, then SHA256SUMS (every file, blob names included), then blobs
    into place, manifests last; identical files already there are kept. Any failure
    removes the staging directory and says one line starting with ERROR_MARK
    (templates/backup/restore.sh)."""
    return script_command("backup/restore.sh", root, f"{root}/{STAGING}", tar_name, tar_sha256)


# -- pyinfra: a fact and the operations the deploy files call ------------------------------

class ModelStore(FactBase):
    """The host's Ollama model store: `root` (mounted at /root/.ollama), `avail` bytes,
    `manifests` (path under root -> sha256), `blobs` (name -> size), `staging` (a restore's
    leftovers exist); `error` says why there is no store."""

    def command(self, models_path: str) -> str:
        return script_command("backup/model-store.sh", models_path, model_store.VOLUME, STAGING)

    def process(self, output: list[str]) -> dict[str, Any]:
        store: dict[str, Any] = self.default()
        for line in output:
            kind, _, rest = line.partition(" ")
            if kind == "error":
                store["error"] = rest
            elif kind == "root":
                store["root"] = rest
            elif kind == "avail" and rest.isdigit():
                store["avail"] = int(rest)
            elif kind == "staging":
                store["staging"] = True
            elif kind == "manifest":
                digest, _, path = rest.partition(" ")
                store["manifests"][path.strip()] = digest
            elif kind == "blob":
                name, _, size = rest.partition(" ")
                store["blobs"][name] = int(size) if size.isdigit() else -1
        if not store["root"] and not store["error"]:
            store["error"] = "model store not found"
        return store

    @staticmethod
    def default() -> dict[str, Any]:
        return {"root": "", "error": "", "avail": 0, "staging": False,
                "manifests": {}, "blobs": {}}


def _store(settings: Settings) -> dict[str, Any]:
    return host.get_fact(ModelStore, models_path=settings.ollama_models_path)


@operation()
def archived(settings: Settings, tarball: str, backup_dir: str = HOST_BACKUP_DIR) -> Generator:
    """
    Write BACKUP_DIR/TARBALL: the store's manifests, then the blobs they reference (each
    checked against its name), with SHA256SUMS inside and TARBALL.sha256 beside it.

    + settings: the host's validated settings (where the store is)
    + tarball: the tarball's file name
    + backup_dir: where on the host it is written
    """
    store = _store(settings)
    if store["error"]:
        yield fail_command(ERROR_MARK + store["error"])
        return
    yield backup_script(store["root"], tarball, backup_dir)


@operation()
def restored(settings: Settings, index: BackupIndex, tarball: str) -> Generator:
    """
    Bring the models of a checked backup tarball into the store: upload into a staging
    directory beside it, check again, blobs into place, manifests last. Nothing happens
    when the store already holds every manifest (identical) and blob.

    + settings: the host's validated settings (where the store is)
    + index: what the tarball holds (read_backup on the operator's machine)
    + tarball: the tarball on the operator's machine
    """
    store = _store(settings)
    if store["error"]:
        yield fail_command(ERROR_MARK + store["error"])
        return
    manifests, blobs = restore_plan(index, store)
    if not (manifests or blobs):
        host.noop(f"{len(index.models)} models of {Path(tarball).name} present, identical")
        return
    need = index.size + index.blob_bytes
    if store["avail"] < need:
        yield fail_command(f"{ERROR_MARK}{store['root']}: {store['avail']} bytes free, the "
                           f"restore needs {need} (tarball and its files, staged)")
        return
    stage = shlex.quote(f"{store['root']}/{STAGING}")
    yield f"rm -rf {stage} && mkdir -m 700 {stage}"
    yield from files.put._inner(src=tarball, dest=f"{store['root']}/{STAGING}/backup.tar",
                                mode="600", add_deploy_dir=False, create_remote_dir=False)
    yield restore_script(store["root"], Path(tarball).name, index.sha256)


@operation()
def listed(settings: Settings, models: dict[str, str]) -> Generator:
    """
    Fail unless every Ollama instance lists every model in MODELS with its digest.

    + settings: the host's validated settings (the instances' ports)
    + models: name -> manifest digest
    """
    if planning():
        host.noop("the restored models are checked once they are in place")
        return
    for n, port in settings.instance_ports():
        seen = host.get_fact(OllamaModels, address=settings.local_host(), port=port)
        if seen is None:
            yield fail_command(f"{ERROR_MARK}instance {n} (port {port}) does not answer "
                               "/api/tags after the restore")
            return
        wrong = [m for m, digest in models.items() if seen.get(m) != digest]
        if wrong:
            yield fail_command(f"{ERROR_MARK}instance {n} (port {port}) does not list "
                               f"{wrong[0]} with digest {models[wrong[0]][:12]} after the "
                               f"restore (it lists: {', '.join(sorted(seen)) or 'nothing'})")
            return
    host.noop(f"every instance lists the {len(models)} restored models")


class PathsPresent(FactBase):
    """Which of the given paths exist on the host."""

    def command(self, paths: list[str]) -> str:
        return script_command("backup/paths-present.sh", *paths)

    def process(self, output: list[str]) -> list[str]:
        return [line for line in output if line]

    @staticmethod
    def default() -> list[str]:
        return []


@operation()
def cleaned(settings: Settings, names: list[str], backup_dir: str = HOST_BACKUP_DIR) -> Generator:
    """
    Remove what a failed backup or restore left on the host: the named tarballs in
    BACKUP_DIR (with their .sha256, partial files and staging) and the store's restore
    staging directory.

    + settings: the host's validated settings (where the store is)
    + names: tarball file names in BACKUP_DIR
    + backup_dir: where backups are written on the host
    """
    paths = [f"{backup_dir}/{n}{suffix}" for n in names
             for suffix in ("", ".sha256", ".partial", ".sha256.partial")]
    paths += [f"{backup_dir}/.staging-{n}" for n in names]
    store = _store(settings)
    if store["root"]:
        paths.append(f"{store['root']}/{STAGING}")
    left = host.get_fact(PathsPresent, paths=paths) if paths else []
    if not left:
        host.noop("nothing left behind")
        return
    yield "rm -rf " + " ".join(shlex.quote(p) for p in left)


def back_up(settings: Settings, job: dict[str, Any]) -> None:
    """The backup's on-host part (tasks/deploys/backup.py)."""
    name = job["name"]
    archived(name="Model store archived (manifests first, every blob checked)",
             settings=settings, tarball=name, _timeout=TRANSFER_TIMEOUT_S)
    if job.get("on_host"):
        return
    local = Path(job["local_dir"])
    for suffix in ("", ".sha256"):
        files.get(name=f"Fetched {name}{suffix}", src=f"{HOST_BACKUP_DIR}/{name}{suffix}",
                  dest=str(local / f"{name}{suffix}.partial"), add_deploy_dir=False,
                  create_local_dir=True, _timeout=TRANSFER_TIMEOUT_S)
    for suffix in ("", ".sha256"):
        files.file(name=f"Host copy of {name}{suffix} removed",
                   path=f"{HOST_BACKUP_DIR}/{name}{suffix}", present=False)


def restore(settings: Settings, job: dict[str, Any]) -> None:
    """The restore's on-host part (tasks/deploys/restore.py)."""
    index = BackupIndex(**job["index"])
    restored(name="Backup restored (checked, blobs first, manifests last)", settings=settings,
             index=index, tarball=job["tarball"], _timeout=TRANSFER_TIMEOUT_S)
    listed(name="Every instance lists the restored models", settings=settings,
           models=index.models)


def clean(settings: Settings, job: dict[str, Any]) -> None:
    """After a failed run: remove what it left on the host."""
    cleaned(name="Leftovers of the failed run removed", settings=settings,
            names=[job["name"]] if job.get("name") else [])


def load_job() -> dict[str, Any]:
    """The job the CLI wrote for a deploy file (JOB_ENV names the file)."""
    from pyinfra.api.exceptions import PyinfraError

    path = os.environ.get(JOB_ENV)
    if not path:
        raise PyinfraError(f"{JOB_ENV} is not set: run this through "
                           "`ollama-fleet INVENTORY backup|restore`")
    return json.loads(Path(path).read_text())

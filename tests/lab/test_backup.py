"""Back a host's model store up and restore it onto a freshly deployed host.

One lab (2 GPU hosts with 1 GPU): gpu-1 deployed with two models, gpu-2 deployed with
none. Tests in file order: a tampered tarball is refused while gpu-2 is still empty,
then the real restore, then a restore that changes nothing, then a corrupt blob.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tarfile
from dataclasses import asdict
from pathlib import Path

import httpx
import pytest

from ollama_fleet.tasks.steps.backup import HOST_BACKUP_DIR, JOB_ENV, STAGING, read_backup
from tests.conftest import BACKUP_MODELS
from tests.labfleet import REPO

pytestmark = pytest.mark.lab

MODELS = BACKUP_MODELS
STORE = "/var/lib/docker/volumes/ollama-models/_data"


@pytest.fixture(scope="module")
def fleet(backup_lab):
    return backup_lab


def backup_cli(fleet, *args: str) -> subprocess.CompletedProcess:
    """`ollama-fleet INV backup|restore ...`; a restore is confirmed with -y."""
    yes = ["-y"] if args[0] == "restore" else []
    return subprocess.run([sys.executable, "-m", "ollama_fleet", fleet.inventory, *args, *yes],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)


def tags(fleet, host: str, port: int = 11434) -> dict[str, str]:
    """name -> digest, as the host's Ollama instance lists them."""
    _, out, _ = fleet.ssh(host, f"curl -sS http://127.0.0.1:{port}/api/tags")
    return {m["name"]: m["digest"] for m in json.loads(out)["models"]}


def store_state(fleet, host: str) -> str:
    """Everything under the store's models/ with size, inode and mtime: any change shows."""
    _, out, _ = fleet.ssh(host, f"cd {STORE} && find models -printf '%p %s %i %T@\\n' | sort")
    return out


def host_leftovers(fleet, host: str) -> str:
    """What a backup or restore may leave on HOST: tarballs, staging directories."""
    _, out, _ = fleet.ssh(host, f"ls -A {HOST_BACKUP_DIR} 2>/dev/null; "
                                f"ls -d {STORE}/{STAGING} 2>/dev/null; true")
    return out.strip()


@pytest.fixture(scope="module")
def tarball(fleet, tmp_path_factory) -> Path:
    """gpu-1 backed up to the operator's machine."""
    to = tmp_path_factory.mktemp("backups")
    proc = backup_cli(fleet, "backup", "gpu-1", "--to", str(to))
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip().splitlines()[-1])


def test_backup_is_fetched_with_its_checksums(fleet, tarball):
    assert re.fullmatch(r"gpu-1-models-\d{8}T\d{6}Z\.tar", tarball.name)
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    assert Path(f"{tarball}.sha256").read_text() == f"{digest}  {tarball.name}\n"
    assert sorted(p.name for p in tarball.parent.iterdir()) == [tarball.name,
                                                                f"{tarball.name}.sha256"]
    with tarfile.open(tarball) as tar:
        members = tar.getmembers()
        files = {m.name: tar.extractfile(m).read() for m in members if m.isfile()}
    assert members[0].name == "SHA256SUMS"
    sums = dict(reversed(line.split("  ")) for line in files.pop("SHA256SUMS").decode()
                .splitlines())
    assert sums == {name: hashlib.sha256(content).hexdigest() for name, content in files.items()}
    # every blob is named by its content, and the models are gpu-1's, digests and all
    assert all(sums[n] == n.rsplit("-", 1)[1] for n in files if n.startswith("models/blobs/"))
    assert read_backup(tarball).models == tags(fleet, "gpu-1")
    assert set(tags(fleet, "gpu-1")) == {"tinyllama:latest", "qwen2.5:0.5b"}
    assert host_leftovers(fleet, "gpu-1") == ""  # the host's copy went once fetched


def test_backup_kept_on_host(fleet):
    proc = backup_cli(fleet, "backup", "gpu-1", "--on-host")
    assert proc.returncode == 0, proc.stderr
    where = proc.stdout.strip().splitlines()[-1]
    host, path = where.split(":", 1)
    assert host == "gpu-1" and path.startswith(f"{HOST_BACKUP_DIR}/gpu-1-models-")
    try:
        fleet.ssh("gpu-1", f"cd {HOST_BACKUP_DIR} && sha256sum -c {Path(path).name}.sha256 "
                           f"&& tar -xOf {path} SHA256SUMS | grep -c models/ && "
                           f"[ ! -e {HOST_BACKUP_DIR}/.staging-{Path(path).name} ]")
    finally:
        fleet.ssh("gpu-1", f"rm -f {path} {path}.sha256")


def tampered_copy(tarball: Path, tmp_path: Path, recompute_sha256: bool) -> Path:
    """The tarball with one byte of its largest blob flipped."""
    copy = tmp_path / tarball.name
    copy.write_bytes(tarball.read_bytes())
    with tarfile.open(copy) as tar:
        blob = max((m for m in tar if m.name.startswith("models/blobs/")), key=lambda m: m.size)
    with open(copy, "r+b") as f:
        f.seek(blob.offset_data + blob.size // 2)
        byte = f.read(1)
        f.seek(blob.offset_data + blob.size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    sums = Path(f"{tarball}.sha256").read_text()
    if recompute_sha256:
        sums = f"{hashlib.sha256(copy.read_bytes()).hexdigest()}  {copy.name}\n"
    Path(f"{copy}.sha256").write_text(sums)
    return copy


@pytest.mark.parametrize("recompute_sha256", [False, True],
                         ids=["sha256-file-kept", "sha256-file-recomputed"])
def test_tampered_tarball_is_refused_and_the_host_untouched(fleet, tarball, tmp_path,
                                                            recompute_sha256):
    assert tags(fleet, "gpu-2") == {}
    before = store_state(fleet, "gpu-2")
    copy = tampered_copy(tarball, tmp_path, recompute_sha256)
    proc = backup_cli(fleet, "restore", "gpu-2", str(copy))
    assert proc.returncode == 2  # refused as a bad argument: no host was touched
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"restore: gpu-2: {copy}: "), proc.stderr
    assert line.endswith("no host was changed"), line
    if recompute_sha256:  # the outer checksum fits: SHA256SUMS names the blob
        assert re.search(r"blob sha256-[0-9a-f]{64}: content does not match", line), line
    assert store_state(fleet, "gpu-2") == before and host_leftovers(fleet, "gpu-2") == ""


@pytest.mark.parametrize("damage", ["in-transfer", "inside"])
def test_host_checks_the_upload_again_and_removes_the_staging(fleet, tarball, tmp_path, damage):
    """The host's own checks, reached as if the tarball changed after the local check:
    the deploy gets the good tarball's index with a tampered file."""
    copy = tampered_copy(tarball, tmp_path, recompute_sha256=True)
    index = read_backup(tarball)
    if damage == "inside":  # the tarball's checksum fits; SHA256SUMS must catch the blob
        index.sha256 = hashlib.sha256(copy.read_bytes()).hexdigest()
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"action": "restore", "tarball": str(copy),
                               "index": asdict(index)}))
    before = store_state(fleet, "gpu-2")
    proc = fleet.pyinfra("tasks/deploys/restore.py", limit="gpu-2",
                         env={JOB_ENV: str(job)})
    assert proc.returncode != 0
    wanted = "sha256 after the upload is" if damage == "in-transfer" else \
        "content does not match SHA256SUMS"
    assert f"[gpu-2] store-error: {copy.name}: " in proc.output and wanted in proc.output, \
        proc.output[-3000:]
    assert store_state(fleet, "gpu-2") == before and host_leftovers(fleet, "gpu-2") == ""


def test_restore_onto_a_fresh_host(fleet, tarball):
    assert tags(fleet, "gpu-2") == {}
    proc = backup_cli(fleet, "restore", "gpu-2", str(tarball))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (f"gpu-2: restored qwen2.5:0.5b, tinyllama:latest from "
                                   f"{tarball.name}; Ollama lists them")
    assert tags(fleet, "gpu-2") == tags(fleet, "gpu-1")  # same names, same digests
    assert host_leftovers(fleet, "gpu-2") == ""
    for model in MODELS:  # through the host's nginx, as clients reach it
        url = f"http://{fleet.host('gpu-2')['address']}/api/generate"
        response = httpx.post(url, json={"model": model, "prompt": "hello", "stream": False},
                              timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["done"] and response.json()["response"].strip()


def test_second_restore_changes_nothing(fleet, tarball):
    before = store_state(fleet, "gpu-2")
    proc = backup_cli(fleet, "restore", "gpu-2", str(tarball))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("; nothing changed")
    assert store_state(fleet, "gpu-2") == before


def test_corrupt_blob_fails_the_backup(fleet, tmp_path):
    _, out, _ = fleet.ssh("gpu-2", f"ls -S {STORE}/models/blobs | head -n 1")
    blob = f"{STORE}/models/blobs/{out.strip()}"
    fleet.ssh("gpu-2", f"cp -p {blob} /root/blob.saved && "
                       f"printf X | dd of={blob} bs=1 seek=100 conv=notrunc status=none")
    try:
        proc = backup_cli(fleet, "backup", "gpu-2", "--to", str(tmp_path / "out"))
    finally:
        fleet.ssh("gpu-2", f"cp -p /root/blob.saved {blob} && rm /root/blob.saved")
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"backup: gpu-2: blob {out.strip()}: its content hashes to "), line
    assert not (tmp_path / "out").exists() and host_leftovers(fleet, "gpu-2") == ""

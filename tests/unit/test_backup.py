"""Model store backups: checksum files, manifests, tarball checks, the on-host scripts
(run here with /bin/sh on a store in a temporary directory) and the command line."""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import subprocess
import tarfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ollama_fleet.tasks.kit.report import fail_command
from ollama_fleet.tasks.kit.settings import settings_for
from ollama_fleet.tasks.steps.backup import (
    ERROR_MARK,
    STAGING,
    SUMS,
    BackupError,
    BackupIndex,
    ModelStore,
    archive_name,
    backup_script,
    manifest_blobs,
    model_name,
    parse_checksum_file,
    parse_sha256sums,
    read_backup,
    restore_plan,
    restore_script,
    safe_dir,
    safe_path,
)
from tests.unit.ophelper import run_op
from tests.unit.stubs import BASE_TOOLS, run_with_stubs

MANIFESTS = "models/manifests/registry.ollama.ai/library"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest(*blobs: bytes) -> bytes:
    """An Ollama manifest: the first blob is the config, the others layers."""
    config, *layers = blobs
    return json.dumps({"schemaVersion": 2, "config": {"digest": f"sha256:{sha(config)}",
                                                      "size": len(config)},
                       "layers": [{"digest": f"sha256:{sha(b)}", "size": len(b)}
                                  for b in layers]}).encode()


CONFIG, WEIGHTS, TEMPLATE, OTHER = b'{"model_family":"llama"}', b"w" * 5000, b"{{ .Prompt }}", b"o"
STORE = {  # path under the store root -> content
    f"{MANIFESTS}/tinyllama/latest": manifest(CONFIG, WEIGHTS, TEMPLATE),
    f"{MANIFESTS}/tiny2/1b": manifest(CONFIG, TEMPLATE),  # shares two blobs
    **{f"models/blobs/sha256-{sha(b)}": b for b in (CONFIG, WEIGHTS, TEMPLATE)},
}


def make_store(root: Path, files: dict[str, bytes] = STORE) -> Path:
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
    return root


def sh(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=60)


def listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def make_tar(path: Path, files: dict[str, bytes], sums: str | None = None,
             extra: list[tarfile.TarInfo] | None = None) -> Path:
    """A tarball holding FILES and SHA256SUMS (SUMS, or computed from FILES)."""
    if sums is None:
        sums = "".join(f"{sha(content)}  {name}\n" for name, content in files.items())
    with tarfile.open(path, "w") as tar:
        for name, content in {SUMS: sums.encode(), **files}.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for info in extra or []:
            tar.addfile(info)
    path.with_name(path.name + ".sha256").write_text(f"{sha(path.read_bytes())}  {path.name}\n")
    return path


# -- names, checksum files, manifests -----------------------------------------------------

def test_archive_name_is_host_and_utc_time():
    assert archive_name("gpu-1", datetime(2025, 1, 25, 17, 3, 0, tzinfo=timezone.utc)) == \
        "gpu-1-models-20250125T170300Z.tar"
    cet = timezone(timedelta(hours=1))
    assert archive_name("gpu-a1.example.net", datetime(2025, 1, 1, 0, 30, tzinfo=cet)) == \
        "gpu-a1.example.net-models-20241231T233000Z.tar"


def test_sha256sums_are_read_as_sha256sum_writes_them():
    blob = f"models/blobs/sha256-{'a' * 64}"
    text = f"{'b' * 64}  {MANIFESTS}/tinyllama/latest\n{'a' * 64} *{blob}\n\n"
    assert parse_sha256sums(text) == {f"{MANIFESTS}/tinyllama/latest": "b" * 64, blob: "a" * 64}


@pytest.mark.parametrize("line, problem", [
    (f"{'a' * 63}  models/blobs/sha256-{'a' * 64}", "line 1: not `<sha256>  <path>`"),
    (f"{'A' * 64}  models/blobs/sha256-{'a' * 64}", "line 1: not `<sha256>  <path>`"),
    (f"{'a' * 64}  ../etc/passwd", "'../etc/passwd' is not a path inside the store"),
    (f"{'a' * 64}  /etc/passwd", "'/etc/passwd' is not a path inside the store"),
    (f"{'a' * 64}  models/blobs/sha256-xyz", "is not a path inside the store"),
    (f"{'a' * 64}  models/manifests/r/../m/t", "is not a path inside the store"),
    (f"{'a' * 64}  models/blobs/sha256-{'a' * 64}\n{'b' * 64}  models/blobs/sha256-{'a' * 64}",
     f"line 2: models/blobs/sha256-{'a' * 64} is listed twice"),
])
def test_bad_sha256sums_name_the_line(line, problem):
    with pytest.raises(BackupError, match="SHA256SUMS") as exc:
        parse_sha256sums(line)
    assert problem in str(exc.value)


def test_checksum_file_gives_the_hex():
    assert parse_checksum_file(f"{'C' * 64}  gpu-1-models-x.tar\n") == "c" * 64
    assert parse_checksum_file("c" * 64) == "c" * 64
    with pytest.raises(BackupError, match="x.tar.sha256: not `<sha256>  <tarball name>`"):
        parse_checksum_file("not a checksum", "x.tar.sha256")


def test_manifest_blobs_are_config_then_layers_each_once():
    raw = manifest(CONFIG, WEIGHTS, TEMPLATE, CONFIG)
    assert manifest_blobs(raw) == [f"sha256-{sha(b)}" for b in (CONFIG, WEIGHTS, TEMPLATE)]


@pytest.mark.parametrize("raw, problem", [
    (b"{not json", "m: not a manifest"),
    (b"[]", "m: not a manifest (not a JSON object)"),
    (b'{"layers": []}', "m: references no blob"),
    (b'{"config": {"digest": "md5:abc"}}', "m: 'md5:abc' is not a sha256 digest"),
])
def test_bad_manifests_are_named(raw, problem):
    with pytest.raises(BackupError) as exc:
        manifest_blobs(raw, "m")
    assert str(exc.value).startswith(problem)


@pytest.mark.parametrize("path, name", [
    (f"{MANIFESTS}/tinyllama/latest", "tinyllama:latest"),
    (f"{MANIFESTS}/qwen2.5/0.5b", "qwen2.5:0.5b"),
    ("models/manifests/registry.ollama.ai/acme/chat/v2", "acme/chat:v2"),
    ("models/manifests/hub.example.net:5000/team/m/latest", "hub.example.net:5000/team/m:latest"),
])
def test_model_names_are_what_ollama_lists(path, name):
    assert model_name(path) == name


@pytest.mark.parametrize("path, ok", [
    (SUMS, True),
    (f"models/blobs/sha256-{'0' * 64}", True),
    (f"{MANIFESTS}/tinyllama/latest", True),
    (f"models/blobs/sha256-{'0' * 64}-partial", False),
    (f"{MANIFESTS}/tinyllama/.latest.tmp-1", False),
    (f"{MANIFESTS}/../../../../etc/passwd", False),
    ("models/manifests/registry.ollama.ai/library/tinyllama", False),
    ("/SHA256SUMS", False),
])
def test_only_store_files_may_be_in_a_backup(path, ok):
    assert safe_path(path) is ok


@pytest.mark.parametrize("path, ok", [
    ("models", True), ("models/blobs/", True), (f"{MANIFESTS}/tinyllama", True),
    ("etc", False), ("models/blobs/x", False), (f"{MANIFESTS}/..", False),
])
def test_only_store_directories_may_be_in_a_backup(path, ok):
    assert safe_dir(path) is ok


# -- the backup script, run on a store in a temporary directory ----------------------------

def back_up(tmp_path: Path, store: Path, name: str = "gpu-1-models-x.tar"):
    out = tmp_path / "backups"
    return sh(backup_script(str(store), name, str(out))), out / name


def test_backup_holds_manifests_then_only_their_blobs(tmp_path):
    extra = {"models/blobs/sha256-" + sha(OTHER): OTHER,  # referenced by no manifest
             "models/blobs/sha256-" + sha(b"half") + "-partial": b"ha",  # a pull going on
             f"{MANIFESTS}/tinyllama/.latest.tmp-7": b"{"}  # a manifest being written
    store = make_store(tmp_path / "store", {**STORE, **extra})
    proc, tarball = back_up(tmp_path, store)
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(tarball) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        first = tar.getmembers()[0].name
    assert first == SUMS
    assert set(files) - {SUMS} == set(STORE)
    assert files.items() >= {k: v for k, v in STORE.items()}.items()
    assert parse_sha256sums(files[SUMS].decode()) == {k: sha(v) for k, v in STORE.items()}
    sums_file = tarball.with_name(tarball.name + ".sha256").read_text()
    assert sums_file == f"{sha(tarball.read_bytes())}  {tarball.name}\n"
    assert sorted(p.name for p in tarball.parent.iterdir()) == [tarball.name,
                                                                tarball.name + ".sha256"]


def test_corrupt_blob_fails_the_backup_in_one_line_and_leaves_nothing(tmp_path):
    store = make_store(tmp_path / "store")
    blob = store / f"models/blobs/sha256-{sha(WEIGHTS)}"
    blob.write_bytes(b"x" + WEIGHTS[1:])
    proc, tarball = back_up(tmp_path, store)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"{ERROR_MARK}blob sha256-{sha(WEIGHTS)}: its content hashes to "
        f"sha256-{sha(b'x' + WEIGHTS[1:])}; the blob is corrupt (pull the model again, then "
        "back up)"]
    assert list(tarball.parent.iterdir()) == []


@pytest.mark.parametrize("files, problem", [
    ({}, "no model in the store"),
    ({f"{MANIFESTS}/tinyllama/latest": manifest(CONFIG, WEIGHTS),
      f"models/blobs/sha256-{sha(CONFIG)}": CONFIG},
     f"manifest registry.ollama.ai/library/tinyllama/latest: blob sha256-{sha(WEIGHTS)} is "
     "missing from the store"),
])
def test_store_without_whole_models_fails_the_backup(tmp_path, files, problem):
    store = make_store(tmp_path / "store", files)
    (store / "models/manifests").mkdir(parents=True, exist_ok=True)
    proc, tarball = back_up(tmp_path, store)
    assert proc.returncode == 1
    assert problem in proc.stderr
    assert list(tarball.parent.iterdir()) == []


# -- reading a tarball on the operator's machine -------------------------------------------

def test_a_backup_reads_back_as_its_models(tmp_path):
    proc, tarball = back_up(tmp_path, make_store(tmp_path / "store"))
    assert proc.returncode == 0, proc.stderr
    index = read_backup(tarball)
    assert index.sha256 == sha(tarball.read_bytes()) and index.size == tarball.stat().st_size
    assert index.models == {"tinyllama:latest": sha(STORE[f"{MANIFESTS}/tinyllama/latest"]),
                            "tiny2:1b": sha(STORE[f"{MANIFESTS}/tiny2/1b"])}
    assert index.blobs == {f"sha256-{sha(b)}": len(b) for b in (CONFIG, WEIGHTS, TEMPLATE)}
    assert index.blob_bytes == len(CONFIG) + len(WEIGHTS) + len(TEMPLATE)


def flip_byte_in(tarball: Path, member: str) -> None:
    with tarfile.open(tarball) as tar:
        offset = tar.getmember(member).offset_data
    with open(tarball, "r+b") as f:
        f.seek(offset + 3)
        byte = f.read(1)
        f.seek(offset + 3)
        f.write(bytes([byte[0] ^ 0x01]))


def test_a_flipped_byte_in_a_blob_is_found_and_named(tmp_path):
    proc, tarball = back_up(tmp_path, make_store(tmp_path / "store"))
    flip_byte_in(tarball, f"models/blobs/sha256-{sha(WEIGHTS)}")
    with pytest.raises(BackupError) as exc:
        read_backup(tarball)
    assert str(exc.value) == (f"blob sha256-{sha(WEIGHTS)}: content does not match its sha256 "
                              "in SHA256SUMS (its name); tampered with or damaged")


GOOD = {k: v for k, v in STORE.items() if "tiny2" not in k}


def _symlink() -> tarfile.TarInfo:
    info = tarfile.TarInfo(f"models/blobs/sha256-{'e' * 64}")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/shadow"
    return info


@pytest.mark.parametrize("files, sums, extra, problem", [
    (GOOD, "", None, f"{sorted(GOOD)[0]}: in the tarball but not listed in SHA256SUMS"),
    ({k: v for k, v in GOOD.items() if WEIGHTS != v},
     "".join(f"{sha(v)}  {k}\n" for k, v in GOOD.items()), None,
     f"models/blobs/sha256-{sha(WEIGHTS)}: listed in SHA256SUMS but not in the tarball"),
    ({**GOOD, f"models/blobs/sha256-{'d' * 64}": OTHER}, None, None,
     f"blob sha256-{'d' * 64}: SHA256SUMS gives it another sha256 than its name"),
    ({k: v for k, v in GOOD.items() if TEMPLATE != v}, None, None,
     f"manifest {MANIFESTS}/tinyllama/latest: blob sha256-{sha(TEMPLATE)} is not in the "
     "tarball"),
    ({k: v for k, v in GOOD.items() if "manifests" not in k}, None, None,
     "holds no manifest (no model to restore)"),
    (GOOD, None, [_symlink()], f"models/blobs/sha256-{'e' * 64}: not a file of a store backup"),
    ({**GOOD, "etc/cron.d/x": b"* * * * * root sh"}, None, None,
     "etc/cron.d/x: not a file of a store backup"),
])
def test_tarballs_that_are_not_whole_backups_are_refused(tmp_path, files, sums, extra, problem):
    tarball = make_tar(tmp_path / "b.tar", files, sums, extra)
    with pytest.raises(BackupError) as exc:
        read_backup(tarball)
    assert str(exc.value) == problem


def test_no_sha256sums_and_no_tar_are_refused(tmp_path):
    tarball = tmp_path / "b.tar"
    with tarfile.open(tarball, "w") as tar:
        info = tarfile.TarInfo(f"{MANIFESTS}/tinyllama/latest")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(BackupError, match="no SHA256SUMS inside"):
        read_backup(tarball)
    tarball.write_bytes(b"not a tar file" * 100)
    with pytest.raises(BackupError, match="not a readable tar file"):
        read_backup(tarball)


# -- the restore script, run on a store in a temporary directory ----------------------------

def staged(root: Path, tarball: Path) -> None:
    (root / STAGING).mkdir(parents=True, exist_ok=True)
    (root / STAGING / "backup.tar").write_bytes(tarball.read_bytes())


def test_restore_moves_blobs_then_manifests_and_keeps_identical_files(tmp_path):
    proc, tarball = back_up(tmp_path, make_store(tmp_path / "store"))
    target = make_store(tmp_path / "target", {f"models/blobs/sha256-{sha(CONFIG)}": CONFIG})
    kept_inode = (target / f"models/blobs/sha256-{sha(CONFIG)}").stat().st_ino
    staged(target, tarball)
    proc = sh(restore_script(str(target), tarball.name, sha(tarball.read_bytes())))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (f"{tarball.name}: 2 blobs moved in, 1 kept (identical), "
                                   "2 manifests written, 0 unchanged")
    assert listing(target) == STORE
    assert (target / f"models/blobs/sha256-{sha(CONFIG)}").stat().st_ino == kept_inode
    staged(target, tarball)  # the same backup again: nothing moves
    proc = sh(restore_script(str(target), tarball.name, sha(tarball.read_bytes())))
    assert proc.stdout.strip().endswith("0 blobs moved in, 3 kept (identical), "
                                        "0 manifests written, 2 unchanged")
    assert listing(target) == STORE and not (target / STAGING).exists()


@pytest.mark.parametrize("damage, problem", [
    ("transfer", "b.tar: sha256 after the upload is "),
    ("blob", f"b.tar: blob sha256-{sha(WEIGHTS)}: content does not match SHA256SUMS"),
    ("name", f"b.tar: blob sha256-{'d' * 64}: SHA256SUMS gives it another sha256 than its name"),
])
def test_restore_refuses_damage_and_leaves_the_store_as_it_was(tmp_path, damage, problem):
    files = dict(GOOD)
    if damage == "name":
        files[f"models/blobs/sha256-{'d' * 64}"] = OTHER
    tarball = make_tar(tmp_path / "b.tar", files)
    if damage == "blob":
        flip_byte_in(tarball, f"models/blobs/sha256-{sha(WEIGHTS)}")
    want = sha(tarball.read_bytes()) if damage != "transfer" else "0" * 64
    target = make_store(tmp_path / "target", {f"{MANIFESTS}/old/1": manifest(OTHER),
                                              f"models/blobs/sha256-{sha(OTHER)}": OTHER})
    before = listing(target)
    staged(target, tarball)
    proc = sh(restore_script(str(target), tarball.name, want))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(ERROR_MARK + problem), proc.stderr
    assert listing(target) == before and not (target / STAGING).exists()


def test_restore_takes_no_special_bits_and_no_links(tmp_path):
    tarball = make_tar(tmp_path / "b.tar", GOOD)
    with tarfile.open(tarball) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar]
    with tarfile.open(tarball, "w") as tar:  # the same files, set-uid and writable by all
        for info, content in members:
            info.mode = 0o6777 if info.name.startswith("models/") else 0o644
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    target = make_store(tmp_path / "target")
    staged(target, tarball)
    proc = sh(restore_script(str(target), tarball.name, sha(tarball.read_bytes())))
    assert proc.returncode == 0, proc.stderr
    modes = {p.relative_to(target).as_posix(): p.stat().st_mode & 0o7777
             for p in (target / "models").rglob("*")}
    assert {oct(m) for m in modes.values()} == {"0o644", "0o755"}, modes
    assert all(m == (0o755 if (target / p).is_dir() else 0o644) for p, m in modes.items())

    outside = tmp_path / "outside"  # a file of the host's, beside the store
    outside.write_bytes(b"root's")
    outside.chmod(0o600)
    for kind, target_name in ((tarfile.SYMTYPE, "/etc/shadow"),
                              (tarfile.LNKTYPE, "SHA256SUMS"),  # a second name of a file
                              (tarfile.LNKTYPE, f"../../../{outside.name}")):
        link = tarfile.TarInfo("models/blobs/evil")
        link.type, link.linkname = kind, target_name
        tarball = make_tar(tmp_path / "l.tar", GOOD, extra=[link])
        target = make_store(tmp_path / f"target-{kind.decode()}{target_name[0]}")
        before = listing(target)
        staged(target, tarball)
        proc = sh(restore_script(str(target), tarball.name, sha(tarball.read_bytes())))
        assert proc.returncode == 1
        assert proc.stderr.strip() == f"{ERROR_MARK}l.tar: models/blobs/evil: not a regular " \
            "file or directory" or proc.stderr.startswith(  # or tar refuses it first
                f"{ERROR_MARK}l.tar: cannot be extracted: tar: "), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert listing(target) == before and not (target / STAGING).exists()
        assert outside.stat().st_mode & 0o777 == 0o600  # its mode untouched


# -- what a restore has to do, facts, pyinfra's output ---------------------------------------

def test_restore_plan_is_what_the_store_lacks():
    index = BackupIndex("0" * 64, 10, manifests={"m/a": "1" * 64, "m/b": "2" * 64},
                        blobs={"sha256-x": 5, "sha256-y": 7})
    store = {"manifests": {"m/a": "1" * 64, "m/b": "9" * 64}, "blobs": {"sha256-x": 5,
                                                                         "sha256-y": 6}}
    assert restore_plan(index, store) == (["m/b"], ["sha256-y"])
    store = {"manifests": {"m/a": "1" * 64, "m/b": "2" * 64}, "blobs": {"sha256-x": 5,
                                                                         "sha256-y": 7}}
    assert restore_plan(index, store) == ([], [])


def test_model_store_fact_is_parsed():
    fact = ModelStore()
    store = fact.process([
        "root /var/lib/docker/volumes/ollama-models/_data", "avail 1000", "staging",
        f"manifest {'a' * 64}  {MANIFESTS}/tinyllama/latest", f"blob sha256-{'b' * 64} 42"])
    assert store == {"root": "/var/lib/docker/volumes/ollama-models/_data", "error": "",
                     "avail": 1000, "staging": True,
                     "manifests": {f"{MANIFESTS}/tinyllama/latest": "a" * 64},
                     "blobs": {f"sha256-{'b' * 64}": 42}}
    missing = fact.process(["error Docker volume ollama-models: not found (deploy the host "
                            "first)"])
    assert missing["error"].startswith("Docker volume ollama-models: not found")
    assert "docker volume inspect" in fact.command("")
    assert "'/srv/my models'" in fact.command("/srv/my models")


def test_model_store_fact_run_on_a_store_and_on_a_host_without_one(tmp_path):
    extra = {"models/blobs/sha256-" + sha(b"half") + "-partial": b"ha",  # a pull going on
             f"{MANIFESTS}/tinyllama/.latest.tmp-7": b"{"}  # a manifest being written
    store = make_store(tmp_path / "my store's", {**STORE, **extra})
    (store / STAGING).mkdir()
    proc = run_with_stubs(ModelStore().command(str(store)), tmp_path,
                          tools=(*BASE_TOOLS, "df", "find", "sha256sum"))
    assert proc.returncode == 0, proc.stderr
    found = ModelStore().process(proc.stdout.splitlines())
    assert (found["root"], found["error"], found["staging"]) == (str(store), "", True)
    assert found["avail"] > 0
    assert found["manifests"] == {k: sha(v) for k, v in STORE.items() if "manifests" in k}
    assert found["blobs"] == {k.rsplit("/", 1)[1]: len(v) for k, v in STORE.items()
                              if "blobs" in k}
    volume = 'echo "$*" > "$0.args"; echo ' + shlex.quote(str(tmp_path / "gone")) + "\n"
    proc = run_with_stubs(ModelStore().command(""), tmp_path, {"docker": volume})
    assert ModelStore().process(proc.stdout.splitlines())["error"] == (
        "Docker volume ollama-models: not found (deploy the host first)")
    assert (tmp_path / "stub-bin" / "docker.args").read_text() == \
        "volume inspect -f {{.Mountpoint}} ollama-models\n"
    proc = run_with_stubs(ModelStore().command(str(tmp_path / "none")), tmp_path)
    assert ModelStore().process(proc.stdout.splitlines())["error"] == (
        f"{tmp_path / 'none'}: not found (deploy the host first)")


# -- the operations: facts in, commands out --------------------------------------------------

SETTINGS = settings_for("gpu-1", {"gpu_count": 2})
ROOT = "/var/lib/docker/volumes/ollama-models/_data"
INDEX = BackupIndex("f" * 64, 10240, manifests={f"{MANIFESTS}/tinyllama/latest": "a" * 64},
                    blobs={f"sha256-{'b' * 64}": 5000}, models={"tinyllama:latest": "a" * 64})


def store_fact(**changes) -> dict:
    return {"ollama_fleet.tasks.steps.backup.ModelStore": {**ModelStore.default(), "root": ROOT,
                                        "avail": 10 ** 9, **changes}}


def test_restore_uploads_into_staging_then_runs_the_checked_move(tmp_path):
    tarball = tmp_path / "gpu-1-models-x.tar"
    tarball.write_bytes(b"t")
    commands, noops = run_op("ollama_fleet.tasks.steps.backup.restored", {
        "settings": SETTINGS, "index": INDEX, "tarball": str(tarball)}, store_fact())
    assert commands[0] == f"rm -rf {ROOT}/{STAGING} && mkdir -m 700 {ROOT}/{STAGING}"
    assert commands[1] == f"upload {ROOT}/{STAGING}/backup.tar\n{tarball}"
    assert commands[-1] == restore_script(ROOT, tarball.name, "f" * 64)
    assert noops == []


def test_restore_of_models_already_present_changes_nothing(tmp_path):
    commands, noops = run_op("ollama_fleet.tasks.steps.backup.restored", {
        "settings": SETTINGS, "index": INDEX, "tarball": "/b/gpu-1-models-x.tar"},
        store_fact(manifests=dict(INDEX.manifests), blobs=dict(INDEX.blobs)))
    assert commands == []
    assert noops == ["1 models of gpu-1-models-x.tar present, identical"]


@pytest.mark.parametrize("store, problem", [
    ({"error": "Docker volume ollama-models: not found (deploy the host first)", "root": ""},
     "Docker volume ollama-models: not found (deploy the host first)"),
    ({"avail": 100}, f"{ROOT}: 100 bytes free, the restore needs 15240 (tarball and its "
                     "files, staged)"),
])
def test_restore_without_a_store_or_room_fails_before_any_change(store, problem):
    commands, _ = run_op("ollama_fleet.tasks.steps.backup.restored", {
        "settings": SETTINGS, "index": INDEX, "tarball": "/b/x.tar"}, store_fact(**store))
    assert commands == [fail_command(ERROR_MARK + problem)]


@pytest.mark.parametrize("listed, result", [
    ({"tinyllama:latest": "a" * 64}, "noop"),
    ({"tinyllama:latest": "c" * 64}, "instance 0 (port 11434) does not list tinyllama:latest "
                                     "with digest aaaaaaaaaaaa after the restore (it lists: "
                                     "tinyllama:latest)"),
    (None, "instance 0 (port 11434) does not answer /api/tags after the restore"),
])
def test_every_instance_must_list_the_restored_models(listed, result):
    commands, noops = run_op("ollama_fleet.tasks.steps.backup.listed", {
        "settings": SETTINGS, "models": INDEX.models},
        {"ollama_fleet.tasks.kit.facts.OllamaModels": listed})
    if result == "noop":
        assert (commands, noops) == ([], ["every instance lists the 1 restored models"])
    else:
        assert commands == [fail_command(ERROR_MARK + result)]


def test_backup_op_runs_the_script_on_the_store_it_finds():
    commands, _ = run_op("ollama_fleet.tasks.steps.backup.archived",
                         {"settings": SETTINGS, "tarball": "n.tar"}, store_fact())
    assert commands == [backup_script(ROOT, "n.tar")]


def test_cleanup_removes_only_what_is_there():
    facts = {**store_fact(), "ollama_fleet.tasks.steps.backup.PathsPresent": [f"{ROOT}/{STAGING}"]}
    commands, _ = run_op("ollama_fleet.tasks.steps.backup.cleaned",
                         {"settings": SETTINGS, "names": []}, facts)
    assert commands == [f"rm -rf {ROOT}/{STAGING}"]
    commands, noops = run_op("ollama_fleet.tasks.steps.backup.cleaned",
                             {"settings": SETTINGS, "names": ["n.tar"]}, store_fact())
    assert (commands, noops) == ([], ["nothing left behind"])

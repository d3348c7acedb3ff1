"""Signed apt repositories of the lab's stand-in NVIDIA packages, laid out like NVIDIA's.

    out_dir/libnvidia-container/gpgkey                         (like nvidia.github.io)
    out_dir/libnvidia-container/stable/deb/amd64/              flat repo: debs, Packages(.gz),
                                                               Release, Release.gpg, InRelease
    out_dir/compute/cuda/repos/debian12/x86_64/                flat repo + 3bf863cc.pub
    out_dir/compute/cuda/repos/debian13/x86_64/                flat repo + 8793F200.pub
                                                               (like developer.download.nvidia.com)
    out_dir/debian-kernel/                                     flat repo + fleetlab.pub: the
                                                               running kernel's headers package
                                                               and mokutil (stand for the
                                                               Debian archive)
    out_dir/updates/compute/cuda/repos/debian13/x86_64/        what arrives after a deploy,
    out_dir/updates/debian-kernel/                             flat repos signed as their
                                                               namesakes: the next 590 release,
                                                               the next kernel (see
                                                               packages.update_packages)

The updates are served apart so that a fresh deploy installs what it always did; a test
enables them on a host (`updates_sources`), as a point release arrives on a server.

Two lab signing keys, as NVIDIA signs its debian12 and debian13 repositories with two
different keys (3bf863cc, 8793F200): the first signs the toolkit, debian12 and kernel
repositories, the second only debian13. A host that trusts one cannot use the other.
The key files carry NVIDIA's names; the keys are the lab's.

apt lines, with BASE the URL where out_dir is served:

    deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] \
        BASE/libnvidia-container/stable/deb/amd64 /
    deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] \
        BASE/compute/cuda/repos/debian13/x86_64/ /      (debian12 alike)
    deb [signed-by=/usr/share/keyrings/fleetlab-debian-kernel.asc] BASE/debian-kernel/ /
    (updates: the same keyrings, BASE/updates/compute/cuda/repos/debian13/x86_64/ and
    BASE/updates/debian-kernel/)

Usage: python -m lab.nvidia.repo OUT_DIR GNUPG_HOME [--base-url URL]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from lab.nvidia import packages

HERE = Path(__file__).resolve().parent
KEY_UID = "Fleet lab apt signing <lab@localhost>"
KEY_EMAIL = "lab@localhost"
# the second key: NVIDIA's debian13 repository is signed with another key than debian12's
DEBIAN13_KEY_UID = "Fleet lab CUDA debian13 apt signing <cuda-debian13@localhost>"
DEBIAN13_KEY_EMAIL = "cuda-debian13@localhost"

TOOLKIT_BASE = "libnvidia-container"
TOOLKIT_REPO = f"{TOOLKIT_BASE}/stable/deb/{packages.ARCH}"
TOOLKIT_KEY = f"{TOOLKIT_BASE}/gpgkey"
TOOLKIT_LIST = f"{TOOLKIT_BASE}/stable/deb/nvidia-container-toolkit.list"
CUDA_REPOS = {"debian12": "compute/cuda/repos/debian12/x86_64",
              "debian13": "compute/cuda/repos/debian13/x86_64"}
CUDA_KEYS = {"debian12": f"{CUDA_REPOS['debian12']}/3bf863cc.pub",
             "debian13": f"{CUDA_REPOS['debian13']}/8793F200.pub"}
KERNEL_REPO = "debian-kernel"
KERNEL_KEY = f"{KERNEL_REPO}/fleetlab.pub"
UPDATES_BASE = "updates"
UPDATES_REPOS = {"debian13": f"{UPDATES_BASE}/{CUDA_REPOS['debian13']}",
                 "kernel": f"{UPDATES_BASE}/{KERNEL_REPO}"}
STATE_FILE = ".fleetlab-nvidia-build.json"
TOPS = (TOOLKIT_BASE, "compute", KERNEL_REPO, UPDATES_BASE)  # out_dir's trees, swapped whole

TOOLKIT_KEYRING = "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg"
DRIVER_KEYRING = "/usr/share/keyrings/cuda-archive-keyring.gpg"
KERNEL_KEYRING = "/usr/share/keyrings/fleetlab-debian-kernel.asc"  # armored, as published
# an updates repository is trusted through its namesake's keyring (a converged host has it)
UPDATES_KEYRINGS = {"debian13": DRIVER_KEYRING, "kernel": KERNEL_KEYRING}
INDEXES = ("Packages", "Packages.gz", "Release", "Release.gpg", "InRelease")

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# ---------------------------------------------------------------- gpg

def _gpg(home: Path, *args: str, input: bytes | None = None) -> bytes:
    cmd = ["gpg", "--homedir", str(home), "--batch", "--yes", "--no-tty",
           "--pinentry-mode", "loopback", "--passphrase", "", *args]
    proc = subprocess.run(cmd, input=input, capture_output=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def _fingerprint(home: Path, email: str = KEY_EMAIL) -> str | None:
    # "<email>": gpg matches the whole address (a bare one matches substrings)
    proc = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--with-colons",
                           "--list-secret-keys", f"<{email}>"], capture_output=True,
                          text=True, timeout=60)
    if proc.returncode != 0:
        return None
    seen_sec = False
    for line in proc.stdout.splitlines():
        fields = line.split(":")
        if fields[0] == "sec":
            seen_sec = True
        elif fields[0] == "fpr" and seen_sec:
            return fields[9]
    return None


def ensure_signing_key(gnupg_home: Path, uid: str = KEY_UID, email: str = KEY_EMAIL) -> str:
    """A lab signing key's fingerprint (by default the first key); generated once in
    gnupg_home."""
    gnupg_home.mkdir(parents=True, exist_ok=True)
    gnupg_home.chmod(0o700)
    fpr = _fingerprint(gnupg_home, email)
    if fpr is None:
        _gpg(gnupg_home, "--quick-gen-key", uid, "ed25519", "sign", "never")
        fpr = _fingerprint(gnupg_home, email)
        if fpr is None:
            raise RuntimeError(f"could not create the lab signing key {uid} in {gnupg_home}")
    return fpr


def ensure_signing_keys(gnupg_home: Path) -> dict[str, str]:
    """Both lab keys: {"lab": first key, "debian13": the debian13 repository's}."""
    return {"lab": ensure_signing_key(gnupg_home),
            "debian13": ensure_signing_key(gnupg_home, DEBIAN13_KEY_UID, DEBIAN13_KEY_EMAIL)}


def stop_gpg_agent(gnupg_home: Path) -> None:
    """Stop the gpg-agent that gpg started for this home (only that one)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["gpgconf", "--homedir", str(gnupg_home), "--kill", "gpg-agent"],
                       capture_output=True, timeout=30)


# ---------------------------------------------------------------- indexes

def _hashes(data: bytes) -> dict[str, str]:
    return {name: hashlib.new(name, data).hexdigest()
            for name in ("md5", "sha1", "sha256", "sha512")}


def _control_fields(deb: Path) -> list[tuple[str, str]]:
    text = subprocess.run(["dpkg-deb", "-f", str(deb)], check=True, capture_output=True,
                          text=True).stdout
    fields: list[tuple[str, str]] = []
    for line in text.splitlines():
        if line.startswith((" ", "\t")) and fields:
            key, value = fields[-1]
            fields[-1] = (key, value + "\n" + line)
        elif ":" in line:
            key, value = line.split(":", 1)
            fields.append((key, value.strip()))
    return fields


def packages_index(repo: Path) -> str:
    """Packages file of a flat repository (every .deb in repo)."""
    stanzas = []
    for deb in sorted(repo.glob("*.deb")):
        data = deb.read_bytes()
        h = _hashes(data)
        fields = _control_fields(deb)
        description = [f for f in fields if f[0] == "Description"]
        lines = [f"{k}: {v}" for k, v in fields if k != "Description"]
        lines += [f"Filename: ./{deb.name}", f"Size: {len(data)}", f"MD5sum: {h['md5']}",
                  f"SHA1: {h['sha1']}", f"SHA256: {h['sha256']}", f"SHA512: {h['sha512']}"]
        lines += [f"{k}: {v}" for k, v in description]
        stanzas.append("\n".join(lines) + "\n")
    return "\n".join(stanzas)


def _rfc2822(now: datetime.datetime) -> str:
    return (f"{_DAYS[now.weekday()]}, {now.day:02d} {_MONTHS[now.month - 1]} {now.year} "
            f"{now:%H:%M:%S} UTC")


def release_file(repo: Path, origin: str, label: str, description: str) -> str:
    files = {}
    for name in ("Packages", "Packages.gz"):
        data = (repo / name).read_bytes()
        files[name] = (_hashes(data), len(data))
    now = datetime.datetime.now(datetime.timezone.utc)
    lines = [f"Origin: {origin}", f"Label: {label}", f"Date: {_rfc2822(now)}",
             f"Description: {description}"]
    for title, algo in (("MD5Sum", "md5"), ("SHA1", "sha1"), ("SHA256", "sha256"),
                        ("SHA512", "sha512")):
        lines.append(f"{title}:")
        lines += [f" {h[algo]} {size:>16} {name}" for name, (h, size) in files.items()]
    return "\n".join(lines) + "\n"


def write_flat_repo(repo: Path, debs: list[Path], home: Path, fpr: str, origin: str,
                    label: str, description: str) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        if deb.parent != repo:
            shutil.copy2(deb, repo / deb.name)
    index = packages_index(repo)
    (repo / "Packages").write_text(index)
    with open(repo / "Packages.gz", "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(index.encode())
    (repo / "Release").write_text(release_file(repo, origin, label, description))
    sign = ("--local-user", fpr, "--digest-algo", "SHA512")
    _gpg(home, *sign, "--armor", "--detach-sign", "--output", str(repo / "Release.gpg"),
         str(repo / "Release"))
    _gpg(home, *sign, "--clearsign", "--output", str(repo / "InRelease"), str(repo / "Release"))


# ---------------------------------------------------------------- build

def sources_hash() -> str:
    """Hash of the lab/nvidia sources (the packages are rebuilt when it changes)."""
    digest = hashlib.sha256()
    for path in sorted(HERE.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        digest.update(str(path.relative_to(HERE)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _repo_signer(name: str) -> str:
    """Which lab key signs repository NAME."""
    return "debian13" if name == "debian13" else "lab"


def _layout(fprs: dict[str, str], kernel: str, base_url: str | None) -> dict:
    pkgs = packages.all_packages(kernel)
    updates = packages.update_packages(kernel)
    headers = pkgs["kernel"][0]
    files = {"toolkit": [f"{TOOLKIT_REPO}/{p.filename}" for p in pkgs["toolkit"]],
             **{name: [f"{repo}/{p.filename}" for p in pkgs[name]]
                for name, repo in CUDA_REPOS.items()},
             "kernel": [f"{KERNEL_REPO}/{p.filename}" for p in pkgs["kernel"]]}
    cuda_repos = {name: {"repo": repo, "key": CUDA_KEYS[name],
                         "fingerprint": fprs[_repo_signer(name)],
                         "packages": {p.name: p.version for p in pkgs[name]}}
                  for name, repo in CUDA_REPOS.items()}
    result = {
        "toolkit_base": TOOLKIT_BASE,
        "toolkit_repo": TOOLKIT_REPO,
        "toolkit_key": TOOLKIT_KEY,
        "toolkit_keyring": TOOLKIT_KEYRING,
        "toolkit_packages": ["nvidia-container-toolkit", "nvidia-container-toolkit-base",
                             "libnvidia-container-tools", "libnvidia-container1"],
        "toolkit_versions": [packages.deb_version(v) for v in packages.TOOLKIT_VERSIONS],
        "cuda_repos": cuda_repos,
        "driver_keyring": DRIVER_KEYRING,
        "kernel": kernel,
        "kernel_repo": KERNEL_REPO,
        "kernel_key": KERNEL_KEY,
        "kernel_keyring": KERNEL_KEYRING,
        "kernel_headers": headers.name,
        "files": files,
        "fingerprint": fprs["lab"],
        # what arrives after a deploy: {"debian13", "kernel"}, each a flat repository signed
        # as its namesake, not in any host's sources until a test enables it
        "updates": {name: {"repo": repo,
                           "keyring": UPDATES_KEYRINGS[name],
                           "fingerprint": fprs[_repo_signer(name)],
                           "files": [f"{repo}/{p.filename}" for p in updates[name]],
                           "packages": {p.name: p.version for p in updates[name]}}
                    for name, repo in UPDATES_REPOS.items()},
        "next_kernel": packages.next_kernel(kernel),
        "update_version": packages.UPDATE_VERSION,
    }
    if base_url:
        base = base_url.rstrip("/")
        result["toolkit_list"] = TOOLKIT_LIST
        result["apt_lines"] = {
            "toolkit": f"deb [signed-by={TOOLKIT_KEYRING}] {base}/{TOOLKIT_REPO} /",
            **{name: f"deb [signed-by={DRIVER_KEYRING}] {base}/{repo}/ /"
               for name, repo in CUDA_REPOS.items()},
            "kernel": f"deb [signed-by={KERNEL_KEYRING}] {base}/{KERNEL_REPO}/ /",
        }
        result["update_apt_lines"] = {name: updates_sources(base, name)
                                      for name in UPDATES_REPOS}
    return result


def updates_sources(base_url: str, *names: str) -> str:
    """The apt sources lines of the updates repositories NAMES ("debian13", "kernel"; all
    when none is named), served at BASE_URL: what a host adds to get what arrived after
    its deploy. They name the keyrings a converged host has already (the deploy's NVIDIA
    CUDA key, the lab's kernel repository key)."""
    base = base_url.rstrip("/")
    return "".join(f"deb [signed-by={UPDATES_KEYRINGS[name]}] {base}/{UPDATES_REPOS[name]}/ /\n"
                   for name in (names or tuple(UPDATES_REPOS)))


def expected_files(result: dict) -> list[str]:
    """Every file a complete build has under out_dir (relative paths)."""
    repos = [TOOLKIT_REPO, *CUDA_REPOS.values(), KERNEL_REPO, *UPDATES_REPOS.values()]
    return [*(f for names in result["files"].values() for f in names),
            *(f for update in result["updates"].values() for f in update["files"]),
            TOOLKIT_KEY, *CUDA_KEYS.values(), KERNEL_KEY,
            *(f"{repo}/{name}" for repo in repos for name in INDEXES)]


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(staging: Path, home: Path, fprs: dict[str, str], kernel: str,
           base_url: str | None) -> None:
    pkgs = packages.all_packages(kernel)
    armored = {who: _gpg(home, "--armor", "--export", fpr) for who, fpr in fprs.items()}
    toolkit_repo = staging / TOOLKIT_REPO
    toolkit_debs = [packages.build_deb(p, toolkit_repo) for p in pkgs["toolkit"]]
    write_flat_repo(toolkit_repo, toolkit_debs, home, fprs["lab"], "Fleet lab",
                    "Fleet lab stand-in for libnvidia-container",
                    "Lab stand-ins of the NVIDIA Container Toolkit packages (not NVIDIA "
                    "software)")
    (staging / TOOLKIT_KEY).write_bytes(armored["lab"])
    for name, repo in CUDA_REPOS.items():
        path = staging / repo
        debs = [packages.build_deb(p, path) for p in pkgs[name]]
        signer = _repo_signer(name)
        write_flat_repo(path, debs, home, fprs[signer], "Fleet lab",
                        f"Fleet lab stand-in for the NVIDIA CUDA repository ({name})",
                        f"Lab stand-ins of NVIDIA driver packages for {name} (not NVIDIA "
                        "software)")
        (staging / CUDA_KEYS[name]).write_bytes(armored[signer])
    kernel_repo = staging / KERNEL_REPO
    kernel_debs = [packages.build_deb(p, kernel_repo) for p in pkgs["kernel"]]
    write_flat_repo(kernel_repo, kernel_debs, home, fprs["lab"], "Fleet lab",
                    "Fleet lab stand-in for the Debian archive's kernel headers",
                    f"Lab stand-ins of linux-headers-{kernel} and mokutil (not Debian's "
                    "packages)")
    (staging / KERNEL_KEY).write_bytes(armored["lab"])
    for name, debs_of in packages.update_packages(kernel).items():
        path = staging / UPDATES_REPOS[name]
        debs = [packages.build_deb(p, path) for p in debs_of]
        write_flat_repo(path, debs, home, fprs[_repo_signer(name)], "Fleet lab",
                        f"Fleet lab stand-in for updates to the {name} repository",
                        f"Lab stand-ins of what arrives after a deploy ({name}): "
                        f"{', '.join(p.name for p in debs_of[:3])}... (not NVIDIA's or "
                        "Debian's packages)")
    if base_url:
        base = base_url.rstrip("/")
        (staging / TOOLKIT_LIST).write_text(
            f"deb {base}/{TOOLKIT_BASE}/stable/deb/$(ARCH) /\n")


def build_repos(out_dir: Path, gnupg_home: Path, base_url: str | None = None) -> dict:
    """Build (or reuse) the signed stand-in repositories under out_dir.

    The two signing keys are created once in gnupg_home; packages and indexes are
    rebuilt only when the lab/nvidia sources, a key, the kernel release (of the headers
    package) or base_url changed. Returns the repository paths (relative to out_dir),
    key files, fingerprints, package names and versions. With base_url, also writes
    NVIDIA's nvidia-container-toolkit.list and returns the apt lines.
    """
    out_dir = Path(out_dir)
    gnupg_home = Path(gnupg_home)
    out_dir.mkdir(parents=True, exist_ok=True)
    kernel = os.uname().release
    with _locked(out_dir / ".fleetlab-nvidia.lock"):
        try:
            fprs = ensure_signing_keys(gnupg_home)
            result = _layout(fprs, kernel, base_url)
            wanted = {"sources": sources_hash(), "fingerprints": fprs, "kernel": kernel,
                      "base_url": base_url}
            state_path = out_dir / STATE_FILE
            try:
                current = json.loads(state_path.read_text())
            except (OSError, ValueError):
                current = None
            if current == wanted and all((out_dir / f).is_file()
                                         for f in expected_files(result)):
                return {**result, "rebuilt": False}

            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
            try:
                _build(staging, gnupg_home, fprs, kernel, base_url)
                for top in TOPS:
                    old = out_dir / top
                    if old.exists():
                        trash = Path(tempfile.mkdtemp(prefix=".old-", dir=out_dir))
                        old.rename(trash / top)
                        shutil.rmtree(trash)
                    (staging / top).rename(old)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            tmp = state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(wanted, indent=2) + "\n")
            os.replace(tmp, state_path)
            return {**result, "rebuilt": True}
        finally:
            stop_gpg_agent(gnupg_home)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.nvidia.repo",
                                     description="Build the lab's stand-in NVIDIA apt repos.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("gnupg_home", type=Path)
    parser.add_argument("--base-url", help="URL where OUT_DIR is served (for the .list file)")
    args = parser.parse_args(argv)
    result = build_repos(args.out_dir, args.gnupg_home, args.base_url)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Unit tests of the lab's NVIDIA stand-ins, their packages and signed repositories.

The stand-ins run here as subprocesses, installed from the built .debs into a
temporary root (dpkg-deb -x, then the package's postinst as dpkg would run it) and
pointed at it with FLEETLAB_ROOT. No Docker needed, but for the `lab` tests at the end:
a `systemctl daemon-reload` on a lab host whose Docker runs GPU containers.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from lab.nvidia import packages
from lab.nvidia.hardware import MODELS, simulated_gpus
from lab.nvidia.repo import build_repos, stop_gpg_agent
from tests.conftest import running_lab
from tests.labfleet import lab_cli

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("dpkg-deb", "gpg", "gpgv", "python3")),
    reason="needs dpkg-deb, gpg, gpgv and python3",
)

TOOLKIT = "1.17.8"
DRIVER = packages.DRIVER_BRANCHES["570"]
PINNED = packages.PINNED_VERSION
KERNEL = os.uname().release
MODULE = f"lib/modules/{KERNEL}/updates/dkms/nvidia.ko"
MARKER = "run/fleetlab/nvidia-driver-loaded"
FM_PID = "run/fleetlab/fabricmanager.pid"
PERSISTENCED_PID = "run/nvidia-persistenced/nvidia-persistenced.pid"
UUID_RE = re.compile(r"^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
             "Make sure that the latest NVIDIA driver is installed and running.\n")
NVLSM = f"{packages.NVLSM_VERSION}-1"  # NVLSM's own version scheme, not the driver's
DEBIAN12 = {"cuda-drivers-550": "550.163.01-1", "cuda-drivers-570": "570.172.08-1",
            "nvidia-open-570": "570.172.08-1", "nvidia-fabricmanager-570": "570.172.08-1",
            "nvidia-persistenced": "570.172.08-1", "nvlsm": NVLSM}
DEBIAN13 = {**{name: "590.44.01-1" for name in (
    "nvidia-driver-pinning-590", "nvidia-driver-cuda", "nvidia-kernel-open-dkms",
    "nvidia-kernel-dkms", "nvidia-persistenced", "nvidia-fabricmanager")}, "nvlsm": NVLSM}
H100_NVSWITCHES = [{"slot": f"0000:{bus:02x}:00.0", "device": "0x22a3"} for bus in range(5, 9)]


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    base = tmp_path_factory.mktemp("nvidia-repos")
    out, home = base / "out", base / "gnupg"
    result = build_repos(out, home)
    yield {"out": out, "home": home, **result}
    stop_gpg_agent(home)


def deb(repos, name: str, version: str | None = None, repo: str | None = None) -> Path:
    """The .deb of package NAME (in REPO: toolkit, debian12, debian13, kernel)."""
    if repo is None:
        repo = "toolkit" if name.startswith(("libnvidia-container", "nvidia-container")) \
            else "debian13" if name in DEBIAN13 and name not in DEBIAN12 else "debian12"
    found = [f for f in repos["files"][repo]
             if Path(f).name.startswith(f"{name}_") and (version is None or
                                                         f"_{version}_" in Path(f).name)]
    assert len(found) == 1, (name, version, repo, found)
    return repos["out"] / found[0]


def headers_deb(repos) -> Path:
    return repos["out"] / repos["files"]["kernel"][0]


def stub_path(root: Path) -> dict:
    """PATH with logging stubs of the systemd helpers: a maintainer script run in a test
    never reaches this machine's systemd. The calls are logged in ROOT/../calls."""
    stubs = root.parent / f"{root.name}-stubs"
    if not stubs.is_dir():
        stubs.mkdir()
        for name in ("deb-systemd-helper", "systemctl", "deb-systemd-invoke"):
            (stubs / name).write_text(
                f'#!/bin/sh\necho "{name} $*" >> "{root.parent / (root.name + "-calls")}"\n')
            (stubs / name).chmod(0o755)
    return {"PATH": f"{stubs}:{os.environ['PATH']}"}


def calls(root: Path) -> str:
    path = root.parent / f"{root.name}-calls"
    return path.read_text() if path.exists() else ""


def maintainer_script(root: Path, path: Path, script: str, *args: str
                      ) -> subprocess.CompletedProcess:
    """Run the package's maintainer SCRIPT (postinst, postrm) as dpkg would, in ROOT."""
    control = root.parent / f"{root.name}-control" / path.name
    if not control.is_dir():
        control.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-e", str(path), str(control)], check=True)
    if not (control / script).exists():
        return subprocess.CompletedProcess([script], 0, "", "")
    env = {**os.environ, "FLEETLAB_ROOT": str(root), **stub_path(root)}
    return subprocess.run(["sh", str(control / script), *args], capture_output=True,
                          text=True, env=env, timeout=60)


def install(root: Path, *debs: Path, scripts: bool = True) -> str:
    """Unpack DEBS into ROOT, then run their postinst (configure) as dpkg does: the
    module build of the packages that carry the kernel module. Returns their output."""
    root.mkdir(parents=True, exist_ok=True)
    for path in debs:
        subprocess.run(["dpkg-deb", "-x", str(path), str(root)], check=True)
    output = ""
    if scripts:
        for path in debs:
            result = maintainer_script(root, path, "postinst", "configure")
            assert result.returncode == 0, result.stdout + result.stderr
            output += result.stdout + result.stderr
    return output


def toolkit_debs(repos, version: str = TOOLKIT) -> list[Path]:
    v = packages.deb_version(version)
    return [deb(repos, name, v) for name in ("libnvidia-container1", "libnvidia-container-tools",
                                             "nvidia-container-toolkit-base",
                                             "nvidia-container-toolkit")]


def driver_deb(repos, branch: str = "570") -> Path:
    return deb(repos, f"cuda-drivers-{branch}")


def write_gpus(root: Path, count: int = 4, host: str = "gpu-1", model: str = "H100",
               device: str | None = None, nvswitches: list | None = None,
               board: str | None = None) -> list:
    """gpus.json as the lab writes it: GPUs, board, NVSwitches (an H100 host is HGX)."""
    gpus = simulated_gpus(host, count, model)
    if device is not None:
        for gpu in gpus:
            gpu["pci_device_id"] = device
    if nvswitches is None:
        nvswitches = H100_NVSWITCHES if model == "H100" and count else []
    doc = {"gpus": gpus, "board": board or MODELS[model]["board"], "nvswitches": nvswitches}
    path = root / "etc/fleetlab/gpus.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return gpus


def run(root: Path, program: str, *args: str, stdin: str | None = None, env: dict | None = None,
        sh: bool = False) -> subprocess.CompletedProcess:
    path = root / program.lstrip("/")
    cmd = ["sh", str(path)] if sh else [str(path)]
    full_env = {**os.environ, "FLEETLAB_ROOT": str(root), **(env or {})}
    return subprocess.run([*cmd, *args], input=stdin, capture_output=True, text=True,
                          env=full_env, timeout=60)


def smi(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run(root, "/usr/bin/nvidia-smi", *args)


def ctk(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run(root, "/usr/bin/nvidia-ctk", *args)


def boot(root: Path) -> subprocess.CompletedProcess:
    """What the enabled fleetlab-nvidia-kmod.service does at boot."""
    return run(root, "/usr/lib/fleetlab/nvidia-kmod-load")


def reboot(root: Path) -> subprocess.CompletedProcess:
    kill_daemons(root)
    shutil.rmtree(root / "run", ignore_errors=True)  # /run is a tmpfs
    return boot(root)


def read_pid(root: Path, pid_file: str) -> int | None:
    try:
        return int((root / pid_file).read_text())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def stop_daemon(root: Path, pid_file: str) -> None:
    """SIGTERM, as systemctl stop sends it; waits for the pid file to go."""
    pid = read_pid(root, pid_file)
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: not (root / pid_file).exists())
    assert wait_for(lambda: not alive(pid))


def kill_daemons(root: Path) -> None:
    for pid_file in (FM_PID, PERSISTENCED_PID):
        pid = read_pid(root, pid_file)
        if pid and alive(pid):
            os.kill(pid, signal.SIGKILL)
        (root / pid_file).unlink(missing_ok=True)


class HostRoot(type(Path())):
    """The root of a simulated host; .gpus are its simulated GPUs."""

    gpus: list


@pytest.fixture
def make_host(tmp_path, repos):
    """make_host(name, *packages, ...): a host root with the running kernel's headers
    and PACKAGES (debs) installed, and GPUs (write_gpus' keywords); not yet rebooted."""
    made = []

    def make(name: str, *debs: Path, headers: bool = True, **gpus) -> HostRoot:
        root = HostRoot(tmp_path / name)
        install(root, *(([headers_deb(repos)] if headers else []) + list(debs)))
        root.gpus = write_gpus(root, **gpus)
        made.append(root)
        return root

    yield make
    for root in made:
        kill_daemons(root)


@pytest.fixture
def host(make_host, repos) -> HostRoot:
    """An HGX H100 host with the 570 driver (proprietary modules, built by DKMS) and
    toolkit 1.17.8 installed, not yet rebooted."""
    return make_host("host", driver_deb(repos), *toolkit_debs(repos))


def pinned_host(make_host, repos, name: str = "d13", flavour: str = "open",
                fabricmanager: bool = True, **gpus) -> HostRoot:
    """A Debian 13 host with the 590 packages NVIDIA's guide installs for a compute-only
    system (and Fabric Manager), rebooted into the driver."""
    kernel = "nvidia-kernel-open-dkms" if flavour == "open" else "nvidia-kernel-dkms"
    names = ["nvidia-driver-pinning-590", kernel, "nvidia-driver-cuda", "nvidia-persistenced"]
    if fabricmanager:
        names.append("nvidia-fabricmanager")
    root = make_host(name, *(deb(repos, n, repo="debian13") for n in names), **gpus)
    boot(root)
    return root


# ---------------------------------------------------------------- simulated hardware

def test_simulated_gpus_are_stable_and_real():
    gpus = simulated_gpus("gpu-1", 8)
    assert gpus == simulated_gpus("gpu-1", 8)
    assert [g["index"] for g in gpus] == list(range(8))
    assert all(UUID_RE.match(g["uuid"]) for g in gpus)
    assert len({g["uuid"] for g in gpus}) == 8
    assert {g["uuid"] for g in gpus}.isdisjoint(g["uuid"] for g in simulated_gpus("gpu-2", 8))
    assert gpus[0]["name"] == "NVIDIA H100 80GB HBM3"
    assert gpus[0]["memory_total_mib"] == 81559
    assert gpus[0]["pci_bus_id"] == "00000000:18:00.0"
    assert len({g["pci_bus_id"] for g in gpus}) == 8
    assert all(re.fullmatch(r"\d{13}", g["serial"]) for g in gpus)
    assert simulated_gpus("h", 1, "A100")[0]["memory_total_mib"] == 81920
    assert simulated_gpus("h", 1, "NVIDIA L40S")[0]["memory_total_mib"] == 46068
    assert {"H100", "A100", "L40S"} <= set(MODELS) <= {"H100", "A100", "L40S", "B200", "B100",
                                                       "B300"}
    assert simulated_gpus("cpu-1", 0) == []
    with pytest.raises(ValueError):
        simulated_gpus("h", 1, "RTX 9999")


# ---------------------------------------------------------------- repositories

def armored(repos, path: str) -> str:
    return (repos["out"] / path).read_text()


def test_repository_layout(repos):
    out = repos["out"]
    assert repos["toolkit_repo"] == "libnvidia-container/stable/deb/amd64"
    assert repos["toolkit_versions"] == ["1.17.8-1", "1.18.0-1", "1.18.1-1", "1.18.2-1",
                                         "1.19.1-1"]
    d12, d13 = repos["cuda_repos"]["debian12"], repos["cuda_repos"]["debian13"]
    assert set(repos["cuda_repos"]) == {"debian12", "debian13"}
    assert d12["repo"] == "compute/cuda/repos/debian12/x86_64"
    assert d12["key"] == "compute/cuda/repos/debian12/x86_64/3bf863cc.pub"
    assert d13["repo"] == "compute/cuda/repos/debian13/x86_64"
    assert d13["key"] == "compute/cuda/repos/debian13/x86_64/8793F200.pub"
    assert d12["packages"] == DEBIAN12
    assert d13["packages"] == DEBIAN13
    assert repos["kernel_repo"] == "debian-kernel"
    assert repos["kernel_key"] == "debian-kernel/fleetlab.pub"
    assert repos["kernel_headers"] == f"linux-headers-{KERNEL}".lower()
    assert repos["kernel"] == KERNEL
    key = armored(repos, "libnvidia-container/gpgkey")
    assert key.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    # NVIDIA signs debian12 and debian13 with different keys; toolkit and kernel: the lab's
    assert armored(repos, d12["key"]) == key == armored(repos, repos["kernel_key"])
    assert armored(repos, d13["key"]).startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert armored(repos, d13["key"]) != key
    assert d12["fingerprint"] == repos["fingerprint"] != d13["fingerprint"]
    assert not (out / d13["repo"] / "fleetlab.pub").exists()
    for repo in (repos["toolkit_repo"], d12["repo"], d13["repo"], repos["kernel_repo"]):
        for name in ("Packages", "Packages.gz", "Release", "Release.gpg", "InRelease"):
            assert (out / repo / name).is_file(), name
    for paths in repos["files"].values():
        for path in paths:
            assert (out / path).is_file(), path
    assert set(repos["files"]) == {"toolkit", "debian12", "debian13", "kernel"}
    assert "apt_lines" not in repos


def test_build_with_base_url_returns_apt_lines(repos, tmp_path):
    out = tmp_path / "out"
    result = build_repos(out, repos["home"], base_url="http://apt.lab:8080/")
    lines = result["apt_lines"]
    assert lines["debian13"] == ("deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] "
                                 "http://apt.lab:8080/compute/cuda/repos/debian13/x86_64/ /")
    assert lines["debian12"].endswith(" http://apt.lab:8080/compute/cuda/repos/debian12/x86_64/ /")
    assert lines["kernel"] == ("deb [signed-by=/usr/share/keyrings/fleetlab-debian-kernel.asc] "
                               "http://apt.lab:8080/debian-kernel/ /")
    assert lines["toolkit"].endswith(" http://apt.lab:8080/libnvidia-container/stable/deb/amd64 /")
    assert (out / result["toolkit_list"]).read_text() == (
        "deb http://apt.lab:8080/libnvidia-container/stable/deb/$(ARCH) /\n")
    # same keys: the gnupg home keeps them
    assert result["cuda_repos"]["debian13"]["fingerprint"] == \
        repos["cuda_repos"]["debian13"]["fingerprint"]


def dearmor(repos, key: str, dest: Path) -> Path:
    dest.write_bytes(subprocess.run(["gpg", "--dearmor"], input=(repos["out"] / key).read_bytes(),
                                    capture_output=True, check=True).stdout)
    return dest


def gpgv(keyring: Path, *files: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["gpgv", "--keyring", str(keyring), *map(str, files)],
                          capture_output=True, text=True)


def test_repositories_are_signed_by_their_keys(repos, tmp_path):
    out = repos["out"]
    d12, d13 = repos["cuda_repos"]["debian12"], repos["cuda_repos"]["debian13"]
    signed = {repos["toolkit_repo"]: repos["toolkit_key"], d12["repo"]: d12["key"],
              d13["repo"]: d13["key"], repos["kernel_repo"]: repos["kernel_key"]}
    for number, (repo_path, key) in enumerate(signed.items()):
        repo = out / repo_path
        keyring = dearmor(repos, key, tmp_path / f"{repo.name}-{Path(key).name}.gpg")
        inline = gpgv(keyring, repo / "InRelease")
        assert inline.returncode == 0, inline.stderr
        detached = gpgv(keyring, repo / "Release.gpg", repo / "Release")
        assert detached.returncode == 0, detached.stderr
        # gpg --verify with only the published key in a fresh home
        home = tmp_path / f"v{number}"  # short: gpg-agent's socket path
        home.mkdir(mode=0o700)
        try:
            subprocess.run(["gpg", "--homedir", str(home), "--batch", "--import",
                            str(out / key)], check=True, capture_output=True)
            verify = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--verify",
                                     str(repo / "InRelease")], capture_output=True, text=True)
            assert verify.returncode == 0, verify.stderr
            uid = ("Fleet lab CUDA debian13 apt signing <cuda-debian13@localhost>"
                   if repo_path == d13["repo"] else "Fleet lab apt signing <lab@localhost>")
            assert uid in verify.stderr
        finally:
            stop_gpg_agent(home)
        # a tampered Release no longer verifies
        tampered = tmp_path / "Release"
        tampered.write_text((repo / "Release").read_text().replace("Fleet lab", "Someone"))
        assert gpgv(keyring, repo / "Release.gpg", tampered).returncode != 0


def test_debian12_and_debian13_keys_do_not_cross(repos, tmp_path):
    """Like NVIDIA's: the debian13 repository verifies with 8793F200.pub only, debian12's
    with 3bf863cc.pub only."""
    out = repos["out"]
    d12, d13 = repos["cuda_repos"]["debian12"], repos["cuda_repos"]["debian13"]
    key12 = dearmor(repos, d12["key"], tmp_path / "3bf863cc.gpg")
    key13 = dearmor(repos, d13["key"], tmp_path / "8793F200.gpg")
    assert gpgv(key13, out / d13["repo"] / "InRelease").returncode == 0
    for keyring, repo in ((key12, d13["repo"]), (key13, d12["repo"])):
        for files in ((out / repo / "InRelease",),
                      (out / repo / "Release.gpg", out / repo / "Release")):
            wrong = gpgv(keyring, *files)
            assert wrong.returncode != 0
            assert "No public key" in wrong.stderr


def parse_stanzas(text: str) -> list[dict]:
    stanzas = []
    for block in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line.startswith(" "):
                fields[key] += "\n" + line
            else:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        stanzas.append(fields)
    return stanzas


def index(repos, repo: str) -> dict[str, dict]:
    path = repos["out"] / repo / "Packages"
    return {s["Package"]: s for s in parse_stanzas(path.read_text())}


def test_packages_index_lists_every_deb_with_its_hash(repos):
    out = repos["out"]
    for repo, expected in ((repos["toolkit_repo"], 4 * len(packages.TOOLKIT_VERSIONS)),
                           (repos["cuda_repos"]["debian12"]["repo"], 6),
                           (repos["cuda_repos"]["debian13"]["repo"], 7),
                           (repos["kernel_repo"], 3)):
        path = out / repo
        text = (path / "Packages").read_text()
        assert gzip.decompress((path / "Packages.gz").read_bytes()).decode() == text
        stanzas = parse_stanzas(text)
        assert len(stanzas) == expected == len(list(path.glob("*.deb")))
        for stanza in stanzas:
            data = (path / stanza["Filename"]).read_bytes()
            assert stanza["Filename"].startswith("./")
            assert int(stanza["Size"]) == len(data)
            assert stanza["SHA256"] == hashlib.sha256(data).hexdigest()
            assert stanza["MD5sum"] == hashlib.md5(data).hexdigest()
            assert stanza["Maintainer"] == "Fleet lab <lab@localhost>"
            assert "stand-in" in stanza["Description"]
            assert "NOT NVIDIA software" in stanza["Description"] or \
                "NOT Debian's package" in stanza["Description"]
        release = (path / "Release").read_text()
        assert re.search(r"^Date: \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} UTC$", release, re.M)
        assert "Origin: " in release and "Label: " in release
        for name in ("Packages", "Packages.gz"):
            data = (path / name).read_bytes()
            assert f" {hashlib.sha256(data).hexdigest()} {len(data):>16} {name}\n" in release
            assert f" {hashlib.md5(data).hexdigest()} {len(data):>16} {name}\n" in release


def test_package_relations(repos):
    toolkit = {(s["Package"], s["Version"]): s for s in
               parse_stanzas((repos["out"] / repos["toolkit_repo"] / "Packages").read_text())}
    for version in ("1.17.8-1", "1.18.0-1", "1.18.1-1", "1.18.2-1", "1.19.1-1"):
        assert toolkit[("libnvidia-container-tools", version)]["Depends"].startswith(
            f"libnvidia-container1 (= {version})")
        depends = toolkit[("nvidia-container-toolkit", version)]["Depends"]
        assert f"nvidia-container-toolkit-base (= {version})" in depends
        assert "libnvidia-container-tools (>= 1.17.8-1)" in depends
        assert toolkit[("libnvidia-container1", version)]["Architecture"] == "amd64"

    d12 = index(repos, repos["cuda_repos"]["debian12"]["repo"])
    assert {name: s["Version"] for name, s in d12.items()} == DEBIAN12
    for branch in ("550", "570"):
        stanza = d12[f"cuda-drivers-{branch}"]
        assert stanza["Provides"] == "cuda-drivers"
        assert stanza["Conflicts"] == "cuda-drivers, nvidia-open"
        assert "nvidia-persistenced" in stanza["Depends"]
    assert d12["nvidia-open-570"]["Conflicts"] == "nvidia-open, cuda-drivers"
    for name in ("cuda-drivers-570", "nvidia-open-570"):  # dkms only recommends headers
        assert d12[name]["Recommends"] == "linux-headers-amd64 | linux-headers-generic"
        assert "linux-headers" not in d12[name]["Depends"]

    d13 = index(repos, repos["cuda_repos"]["debian13"]["repo"])
    assert {name: s["Version"] for name, s in d13.items()} == DEBIAN13
    assert not [name for name in d13 if name.startswith(("cuda-drivers", "nvidia-open-"))]
    assert not [name for name in d13 if re.search(r"-\d{3}$", name)
                and name != "nvidia-driver-pinning-590"]
    assert d13["nvidia-kernel-open-dkms"]["Conflicts"] == "nvidia-kernel-dkms"
    assert d13["nvidia-kernel-dkms"]["Conflicts"] == "nvidia-kernel-open-dkms"
    assert d13["nvidia-driver-cuda"]["Depends"] == (
        "python3, nvidia-kernel-open-dkms (= 590.44.01-1) | nvidia-kernel-dkms (= 590.44.01-1)")
    assert d13["nvidia-driver-pinning-590"]["Architecture"] == "all"
    for name in ("nvidia-kernel-open-dkms", "nvidia-kernel-dkms"):
        assert d13[name]["Recommends"] == "linux-headers-amd64 | linux-headers-generic"

    kernel = index(repos, repos["kernel_repo"])
    flavour = "-".join(w for w in KERNEL.split("-")[1:] if not w.isdigit())
    assert sorted(kernel) == sorted([repos["kernel_headers"], f"linux-headers-{flavour}",
                                     "mokutil"])
    assert kernel[f"linux-headers-{flavour}"]["Depends"] == repos["kernel_headers"]


def test_build_is_reused_when_sources_unchanged(repos):
    before = {p: p.stat().st_mtime_ns for p in (repos["out"] / repos["toolkit_repo"]).iterdir()}
    again = build_repos(repos["out"], repos["home"])
    assert again["rebuilt"] is False
    assert again["fingerprint"] == repos["fingerprint"]
    assert again["cuda_repos"] == repos["cuda_repos"]
    after = {p: p.stat().st_mtime_ns for p in (repos["out"] / repos["toolkit_repo"]).iterdir()}
    assert before == after
    state = json.loads((repos["out"] / ".fleetlab-nvidia-build.json").read_text())
    assert state["kernel"] == KERNEL
    assert state["fingerprints"] == {"lab": repos["fingerprint"],
                                     "debian13": repos["cuda_repos"]["debian13"]["fingerprint"]}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # noqa: D102
        pass


needs_apt = pytest.mark.skipif(shutil.which("apt-get") is None or os.geteuid() != 0,
                               reason="needs apt-get and root")


@pytest.fixture
def apt(repos, tmp_path):
    """apt(sources_text, *args): this machine's apt-get on a private state, with the
    repositories served over HTTP; the sources text gets {base} and the keyrings
    {toolkit}, {d12}, {d13}, {kernel} filled in."""
    out = repos["out"]
    handler = lambda *a, **kw: _QuietHandler(*a, directory=str(out), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    keys = {"toolkit": repos["toolkit_key"], "d12": repos["cuda_repos"]["debian12"]["key"],
            "d13": repos["cuda_repos"]["debian13"]["key"], "kernel": repos["kernel_key"]}
    keyrings = {name: str(dearmor(repos, key, tmp_path / f"{name}.gpg"))
                for name, key in keys.items()}
    for d in ("lists/partial", "cache/archives/partial", "prefs"):
        (tmp_path / d).mkdir(parents=True)
    sources = tmp_path / "sources.list"

    def call(text: str, *args: str, **fmt) -> subprocess.CompletedProcess:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        sources.write_text(text.format(base=base, **keyrings, **fmt))
        opts = [f"-oDir::Etc::SourceList={sources}", "-oDir::Etc::SourceParts=/nonexistent",
                f"-oDir::State::Lists={tmp_path / 'lists'}",
                f"-oDir::Cache={tmp_path / 'cache'}",
                "-oDir::Etc::Preferences=/nonexistent",
                f"-oDir::Etc::PreferencesParts={tmp_path / 'prefs'}",
                "-oAPT::Sandbox::User=root", "-oDebug::NoLocking=1",
                "-oAcquire::Retries=0", "-oAcquire::http::Timeout=10"]
        tool = "apt-cache" if args and args[0] == "policy" else "apt-get"
        return subprocess.run([tool, *opts, *args], capture_output=True, text=True,
                              timeout=120)

    call.prefs = tmp_path / "prefs"
    try:
        yield call
    finally:
        server.shutdown()
        server.server_close()


ALL_SOURCES = ("deb [signed-by={toolkit}] {base}/libnvidia-container/stable/deb/amd64 /\n"
               "deb [signed-by={d12}] {base}/compute/cuda/repos/debian12/x86_64/ /\n"
               "deb [signed-by={d13}] {base}/compute/cuda/repos/debian13/x86_64/ /\n"
               "deb [signed-by={kernel}] {base}/debian-kernel/ /\n")


@needs_apt
def test_apt_accepts_the_repositories(repos, apt):
    """apt of this machine verifies, indexes and resolves the repos over HTTP."""
    update = apt(ALL_SOURCES, "update")
    assert update.returncode == 0, update.stdout + update.stderr
    assert "NO_PUBKEY" not in update.stderr and "not signed" not in update.stderr
    pinned = apt(ALL_SOURCES, "-s", "install",
                 *(f"{p}=1.17.8-1" for p in repos["toolkit_packages"]))
    assert pinned.returncode == 0, pinned.stdout + pinned.stderr
    for name in repos["toolkit_packages"]:
        assert f"Inst {name} (1.17.8-1 " in pinned.stdout
    driver = apt(ALL_SOURCES, "-s", "install", "cuda-drivers-570")
    assert driver.returncode == 0, driver.stdout + driver.stderr
    assert "Inst nvidia-persistenced (" in driver.stdout
    # the headers are only recommended: apt does not bring them
    assert repos["kernel_headers"] not in driver.stdout
    for pair in (("cuda-drivers-550", "cuda-drivers-570"), ("cuda-drivers-570", "nvidia-open-570"),
                 ("nvidia-kernel-open-dkms", "nvidia-kernel-dkms")):
        both = apt(ALL_SOURCES, "-s", "install", *pair)
        assert both.returncode != 0, pair
        assert "Conflicts: " in both.stdout
    headless = apt(ALL_SOURCES, "-s", "install", repos["kernel_headers"],
                   "nvidia-driver-pinning-590", "nvidia-driver-cuda", "nvidia-kernel-open-dkms",
                   "nvidia-persistenced=590.44.01-1", "nvidia-fabricmanager")
    assert headless.returncode == 0, headless.stdout + headless.stderr
    assert f"Inst {repos['kernel_headers']} (" in headless.stdout
    assert "Inst nvidia-kernel-open-dkms (590.44.01-1 " in headless.stdout
    assert "Inst nvidia-kernel-dkms" not in headless.stdout
    # the pinning package's preferences hold the 590 names on 590
    pin = deb(repos, "nvidia-driver-pinning-590")
    unpacked = apt.prefs.parent / "pin"
    subprocess.run(["dpkg-deb", "-x", str(pin), str(unpacked)], check=True)
    shutil.copy(unpacked / "etc/apt/preferences.d/nvidia-driver-pin", apt.prefs)
    policy = apt(ALL_SOURCES, "policy", "nvidia-persistenced")
    assert policy.returncode == 0, policy.stderr
    assert "Candidate: 590.44.01-1\n" in policy.stdout
    assert re.search(r"^ +590\.44\.01-1 1000$", policy.stdout, re.M), policy.stdout
    assert re.search(r"^ +570\.172\.08-1 500$", policy.stdout, re.M), policy.stdout


@needs_apt
@pytest.mark.parametrize("repo,wrong", [("debian13", "d12"), ("debian12", "d13")])
def test_apt_refuses_a_cuda_repository_signed_by_the_other_key(apt, repo, wrong):
    """A host that trusts only the debian12 key cannot use the debian13 repository (and
    the other way round): apt-get update fails with NO_PUBKEY."""
    sources = ("deb [signed-by={" + wrong + "}] {base}/compute/cuda/repos/" + repo
               + "/x86_64/ /\n")
    update = apt(sources, "update")
    assert update.returncode != 0
    assert "NO_PUBKEY" in update.stdout + update.stderr
    assert "is not signed" in update.stdout + update.stderr


# ---------------------------------------------------------------- kernel headers and DKMS

def test_headers_package_contents(repos, tmp_path):
    root = tmp_path / "root"
    install(root, headers_deb(repos), scripts=False)
    src = f"/usr/src/linux-headers-{KERNEL}"
    readme = (root / src.lstrip("/") / "README.fleetlab").read_text()
    assert "NOT Debian's package" in readme
    build = root / "lib/modules" / KERNEL / "build"
    assert build.is_symlink()
    assert os.readlink(build) == src
    listing = subprocess.run(["dpkg-deb", "-c", str(headers_deb(repos))], capture_output=True,
                             text=True, check=True).stdout
    assert f"./lib/modules/{KERNEL}/build -> {src}" in listing
    assert f"./usr/src/linux-headers-{KERNEL}/README.fleetlab" in listing
    assert (root / src.lstrip("/") / "include/generated/utsrelease.h").read_text() == \
        f'#define UTS_RELEASE "{KERNEL}"\n'
    assert "root/root" in listing


@pytest.mark.parametrize("name,flavour", [("nvidia-kernel-open-dkms", "open"),
                                          ("nvidia-kernel-dkms", "proprietary"),
                                          ("cuda-drivers-570", "proprietary"),
                                          ("nvidia-open-570", "open")])
def test_dkms_builds_the_module_with_the_headers(repos, tmp_path, name, flavour):
    root = tmp_path / "root"
    version = PINNED if name.startswith("nvidia-kernel") else DRIVER
    output = install(root, headers_deb(repos), deb(repos, name))
    assert (root / MODULE).read_text() == f"{version} {flavour}\n"
    assert (f"Loading new nvidia/{version} DKMS files...\n"
            f"Building for {KERNEL}\n\n"
            f"Building initial module nvidia/{version} for {KERNEL}\n"
            "Building module(s)... done.\n"
            f"Installing /lib/modules/{KERNEL}/updates/dkms/nvidia.ko\n"
            "Running depmod... done.\n") in output
    status = run(root, "/usr/lib/fleetlab/nvidia-dkms", "status")
    assert status.stdout == f"nvidia/{version}, {KERNEL}, x86_64: installed\n"
    removed = maintainer_script(root, deb(repos, name), "postrm", "remove")
    assert removed.returncode == 0, removed.stderr
    assert f"Deleting module nvidia/{version} completely from the DKMS tree." in removed.stdout
    assert not (root / MODULE).exists()


def test_dkms_skips_the_module_without_the_headers(repos, tmp_path):
    root = tmp_path / "root"
    output = install(root, deb(repos, "nvidia-kernel-open-dkms"))  # postinst exits 0
    assert (f"Module build for kernel {KERNEL} was skipped since the\n"
            "kernel headers for this kernel do not seem to be installed.\n") in output
    assert not (root / MODULE).exists()
    # as dkms checks build/include: a dangling build link, or a tree without include,
    # is no headers either
    (root / "lib/modules" / KERNEL).mkdir(parents=True, exist_ok=True)
    (root / "lib/modules" / KERNEL / "build").symlink_to("/usr/src/linux-headers-nowhere")
    for tree in (False, True):
        if tree:
            (root / "usr/src/linux-headers-nowhere").mkdir(parents=True)
        again = maintainer_script(root, deb(repos, "nvidia-kernel-open-dkms"), "postinst",
                                  "configure")
        assert again.returncode == 0 and "was skipped" in again.stdout
        assert not (root / MODULE).exists()


def test_headers_installed_later_build_the_module(repos, tmp_path):
    """As Debian's header_postinst.d/dkms hook: installing the headers afterwards has DKMS
    build the module of an installed package."""
    root = tmp_path / "root"
    install(root, deb(repos, "nvidia-kernel-dkms"))
    assert not (root / MODULE).exists()
    output = install(root, headers_deb(repos))
    assert (f"Autoinstall of module nvidia/{PINNED} for kernel {KERNEL} (x86_64)\n"
            "Building module(s)... done.\n") in output
    assert f"Autoinstall on {KERNEL} succeeded for module(s) nvidia." in output
    assert (root / MODULE).read_text() == f"{PINNED} proprietary\n"


# ---------------------------------------------------------------- what arrives later

NEXT = packages.next_kernel(KERNEL)
NEXT_MODULE = f"lib/modules/{NEXT}/updates/dkms/nvidia.ko"
UPDATE = packages.UPDATE_VERSION


def update_deb(repos, name: str, repo: str) -> Path:
    """The .deb of package NAME in the updates repository REPO (debian13, kernel)."""
    found = [f for f in repos["updates"][repo]["files"] if Path(f).name.startswith(f"{name}_")]
    assert len(found) == 1, (name, repo, found)
    return repos["out"] / found[0]


def upgrade(root: Path, old: Path, new: Path) -> str:
    """Upgrade OLD to NEW in ROOT as dpkg does: old prerm upgrade, unpack, old postrm
    upgrade, new postinst configure. Returns the scripts' output."""
    new_version = subprocess.run(["dpkg-deb", "-f", str(new), "Version"], capture_output=True,
                                 text=True, check=True).stdout.strip()
    old_version = subprocess.run(["dpkg-deb", "-f", str(old), "Version"], capture_output=True,
                                 text=True, check=True).stdout.strip()
    output = ""
    for path, script, args in ((old, "prerm", ("upgrade", new_version)), (new, None, ()),
                               (old, "postrm", ("upgrade", new_version)),
                               (new, "postinst", ("configure", old_version))):
        if script is None:
            subprocess.run(["dpkg-deb", "-x", str(path), str(root)], check=True)
            continue
        result = maintainer_script(root, path, script, *args)
        assert result.returncode == 0, result.stdout + result.stderr
        output += result.stdout + result.stderr
    return output


def test_updates_are_served_apart_signed_as_their_namesakes(repos, tmp_path):
    """The next 590 release and the next kernel: a fresh deploy does not see them (not in
    the repositories a host has), a host that adds the updates lines does."""
    out = repos["out"]
    updates = repos["updates"]
    # the driver's packages (nvlsm has its own versions and no update here)
    assert updates["debian13"]["packages"] == {name: f"{UPDATE}-1" for name in DEBIAN13
                                               if name != "nvlsm"}
    assert UPDATE.startswith("590.") and UPDATE != PINNED
    assert NEXT != KERNEL and packages.kernel_flavour(NEXT) == packages.kernel_flavour(KERNEL)
    version = packages.kernel_package_version(NEXT)
    flavour = packages.kernel_flavour(KERNEL)
    assert updates["kernel"]["packages"] == {
        f"linux-image-{NEXT}".lower(): version, f"linux-headers-{NEXT}".lower(): version,
        f"linux-headers-{flavour}": version, f"linux-image-{flavour}": version}
    assert subprocess.run(["dpkg", "--compare-versions", version, "gt",
                           packages.kernel_package_version(KERNEL)]).returncode == 0
    kernel = index(repos, updates["kernel"]["repo"])
    # Debian's headers depend on their image; the flavour's meta-packages follow the kernel
    assert kernel[f"linux-headers-{NEXT}".lower()]["Depends"] == \
        f"linux-image-{NEXT} (= {version})".lower()
    assert kernel[f"linux-headers-{flavour}"]["Depends"] == f"linux-headers-{NEXT}".lower()
    assert kernel[f"linux-image-{flavour}"]["Depends"] == f"linux-image-{NEXT}".lower()
    for name, key in (("debian13", repos["cuda_repos"]["debian13"]["key"]),
                      ("kernel", repos["kernel_key"])):
        repo = out / updates[name]["repo"]
        keyring = dearmor(repos, key, tmp_path / f"{name}.gpg")
        assert gpgv(keyring, repo / "InRelease").returncode == 0
        assert updates[name]["fingerprint"] == (repos["cuda_repos"]["debian13"]["fingerprint"]
                                                if name == "debian13" else repos["fingerprint"])
    # none of it in the repositories a deploy installs from
    assert {s["Version"] for n, s in index(repos, repos["cuda_repos"]["debian13"]["repo"]).items()
            if n != "nvlsm"} == {f"{PINNED}-1"}
    assert NEXT.lower() not in (out / repos["kernel_repo"] / "Packages").read_text()


def test_a_new_kernel_gets_the_module_from_dkmss_kernel_hooks(repos, tmp_path):
    """As on Debian: the image's postinst runs /etc/kernel/postinst.d, the headers'
    header_postinst.d; dkms's hook there builds the module for the new kernel once its
    headers are in. No /run/reboot-required: Debian's image postinst writes none."""
    root = tmp_path / "root"
    install(root, headers_deb(repos), deb(repos, "nvidia-kernel-open-dkms"))
    assert (root / MODULE).read_text() == f"{PINNED} open\n"
    image = install(root, update_deb(repos, f"linux-image-{NEXT}".lower(), "kernel"))
    assert (f"Automatic installation of modules for kernel {NEXT} was skipped since the "
            "kernel headers for this kernel do not seem to be installed.") in image
    assert (root / "boot" / f"vmlinuz-{NEXT}").is_file()
    assert (root / "boot" / f"config-{NEXT}").is_file()
    assert not (root / NEXT_MODULE).exists()
    headers = install(root, update_deb(repos, f"linux-headers-{NEXT}".lower(), "kernel"))
    assert (f"Autoinstall of module nvidia/{PINNED} for kernel {NEXT} (x86_64)\n"
            "Building module(s)... done.\n") in headers
    assert (root / NEXT_MODULE).read_text() == f"{PINNED} open\n"
    assert (root / MODULE).read_text() == f"{PINNED} open\n"  # the running kernel's stays
    # configured again (both unpacked before either is configured): nothing to build
    again = maintainer_script(root, update_deb(repos, f"linux-image-{NEXT}".lower(), "kernel"),
                              "postinst", "configure")
    assert again.returncode == 0 and "Autoinstall" not in again.stdout
    assert not (root / "run/reboot-required").exists()
    assert not (root / "var/run/reboot-required").exists()


def test_an_in_branch_update_waits_for_the_reboot(repos, make_host):
    """590.44.01 booted, 590.48.01 installed by an upgrade: the old version's module goes
    from every kernel (dh_dkms's prerm), the new one is built for the running kernel and
    the newest installed (dkms's common.postinst); until the reboot the loaded module is
    the old one, nvidia-smi says so and Fabric Manager of the new version refuses it."""
    root = pinned_host(make_host, repos, name="upd")
    install(root, update_deb(repos, f"linux-image-{NEXT}".lower(), "kernel"),
            update_deb(repos, f"linux-headers-{NEXT}".lower(), "kernel"))
    assert (root / NEXT_MODULE).read_text() == f"{PINNED} open\n"
    assert start_fm(root).returncode == 0
    output = ""
    for name in ("nvidia-kernel-open-dkms", "nvidia-driver-cuda", "nvidia-persistenced",
                 "nvidia-fabricmanager"):
        output += upgrade(root, deb(repos, name, repo="debian13"),
                          update_deb(repos, name, "debian13"))
    assert (f"Deleting /lib/modules/{KERNEL}/updates/dkms/nvidia.ko\n" in output
            and f"Deleting /lib/modules/{NEXT}/updates/dkms/nvidia.ko\n" in output)
    assert f"Building for {KERNEL} and {NEXT}\n" in output
    for module in (MODULE, NEXT_MODULE):
        assert (root / module).read_text() == f"{UPDATE} open\n"
    assert (root / MARKER).read_text() == f"{PINNED}\n"
    mismatch = smi(root, "--query-gpu=driver_version", "--format=csv,noheader")
    assert mismatch.returncode == 18
    assert mismatch.stdout == ("Failed to initialize NVML: Driver/library version mismatch\n"
                               f"NVML library version: {UPDATE.rsplit('.', 1)[0]}\n")
    kill_daemons(root)
    refused = start_fm(root)
    assert refused.returncode == 1 and "don't match with driver version" in refused.stderr
    reboot(root)
    assert (root / MARKER).read_text() == f"{UPDATE}\n"
    assert smi(root, "--query-gpu=driver_version", "--format=csv,noheader").stdout == \
        f"{UPDATE}\n" * len(root.gpus)
    assert start_fm(root).returncode == 0


# ---------------------------------------------------------------- driver package

def test_driver_unit_is_enabled_but_never_started(repos, tmp_path):
    root = tmp_path / "root"
    output = install(root, headers_deb(repos), driver_deb(repos))
    unit = (root / "usr/lib/systemd/system/fleetlab-nvidia-kmod.service").read_text()
    assert "Type=oneshot" in unit
    assert "WantedBy=multi-user.target" in unit
    assert "ExecStart=/usr/lib/fleetlab/nvidia-kmod-load" in unit
    assert "simulation" in unit.lower()

    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "-e", str(driver_deb(repos)), str(control)], check=True)
    postinst = (control / "postinst").read_text()
    assert "start" not in re.sub(r"#.*", "", postinst).replace("started", "")
    logged = calls(root)
    assert "deb-systemd-helper enable fleetlab-nvidia-kmod.service" in logged
    assert "start" not in logged
    assert "reboot" in output
    assert not (root / MARKER).exists()


def test_kernel_module_loads_only_at_boot(host):
    assert not (host / MARKER).exists()
    assert smi(host).returncode == 9
    loaded = boot(host)
    assert loaded.returncode == 0
    assert (host / MARKER).read_text() == f"{DRIVER}\n"
    assert "(proprietary) loaded" in loaded.stdout
    assert smi(host, "-L").returncode == 0


def test_kernel_module_does_not_load_without_gpus(repos, make_host):
    root = make_host("cpu", driver_deb(repos), count=0)
    assert (root / MODULE).exists()
    result = boot(root)
    assert result.returncode == 0
    assert "No NVIDIA GPU found" in result.stderr
    assert not (root / MARKER).exists()
    assert smi(root).returncode == 9


def test_boot_without_the_module(repos, make_host):
    """Installed without the running kernel's headers: the install succeeded, but at the
    boot modprobe finds no module and nvidia-smi fails."""
    root = make_host("noheaders", driver_deb(repos), headers=False)
    assert not (root / MODULE).exists()
    result = boot(root)
    assert result.returncode == 0
    assert result.stderr == f"modprobe: FATAL: Module nvidia not found in directory " \
                            f"/lib/modules/{KERNEL}\n"
    assert not (root / MARKER).exists()
    assert smi(root, "-L").stdout == NO_DRIVER


def test_blackwell_refuses_the_proprietary_modules(repos, make_host):
    root = make_host("b200", driver_deb(repos), count=2, model="H100", device="0x2901",
                     nvswitches=[])
    result = boot(root)
    assert result.returncode == 0
    assert ("NVRM: The NVIDIA GPU 0000:18:00.0 (PCI ID: 10de:2901)\n"
            "NVRM: installed in this system requires use of the NVIDIA open kernel modules.\n"
            ) in result.stderr
    assert "0000:2a:00.0 (PCI ID: 10de:2901)" in result.stderr
    assert not (root / MARKER).exists()
    assert smi(root).returncode == 9
    # the open modules drive it
    open_root = make_host("b200-open", deb(repos, "nvidia-open-570"), count=2, device="0x2901",
                          nvswitches=[])
    assert "(open) loaded" in boot(open_root).stdout
    assert smi(open_root, "-L").returncode == 0


@pytest.mark.parametrize("device", ["0x2b85", "0x3182", "0x31c2", "0x31C3"])
def test_blackwell_ids(repos, make_host, device):
    root = make_host("bw", deb(repos, "nvidia-kernel-dkms", repo="debian13"),
                     deb(repos, "nvidia-driver-cuda"), count=1, device=device, nvswitches=[])
    assert f"(PCI ID: 10de:{device[2:].lower()})" in boot(root).stderr
    assert not (root / MARKER).exists()


@pytest.mark.parametrize("doc", [
    lambda gpus: {"gpus": [{k: v for k, v in g.items() if k != "pci_device_id"} for g in gpus]},
    lambda gpus: {"gpus": [{**g, "pci_device_id": "not-hex"} for g in gpus], "board": "?"},
    lambda gpus: [{k: v for k, v in g.items() if k != "pci_device_id"} for g in gpus],
])
def test_gpus_json_is_read_tolerantly(repos, make_host, doc):
    """An older or partial gpus.json: a PCIe board, no NVSwitch, device ids unknown (not
    Blackwell): the proprietary module loads, Fabric Manager has nothing to do."""
    root = make_host("old-json", driver_deb(repos), deb(repos, "nvidia-fabricmanager-570"),
                     count=2)
    (root / "etc/fleetlab/gpus.json").write_text(json.dumps(doc(root.gpus)))
    assert "(proprietary) loaded" in boot(root).stdout
    assert smi(root, "-L").stdout.count("GPU ") == 2
    assert "Device Id                         : N/A" in smi(root, "-q").stdout
    fm = start_fm(root)
    assert fm.returncode == 1 and "NV_WARN_NOTHING_TO_DO" in fm.stderr


def test_debian13_headless_driver(repos, make_host):
    root = pinned_host(make_host, repos, flavour="proprietary", fabricmanager=False)
    assert (root / MARKER).read_text() == f"{PINNED}\n"
    assert (root / MODULE).read_text() == f"{PINNED} proprietary\n"
    version = smi(root, "--version")
    assert f"DRIVER version      : {PINNED}" in version.stdout
    assert "CUDA Version        : 13.1" in version.stdout
    pin = (root / "etc/apt/preferences.d/nvidia-driver-pin").read_text()
    assert ("Package: nvidia-driver-cuda nvidia-kernel-open-dkms nvidia-kernel-dkms "
            "nvidia-persistenced nvidia-fabricmanager\n") in pin
    assert "Pin: version 590.*\n" in pin and "Pin-Priority: 1000\n" in pin
    assert "stand-in" in pin


def test_conffiles(repos, tmp_path):
    for name, conffile in (("nvidia-fabricmanager", "/usr/share/nvidia/nvswitch/fabricmanager.cfg"),
                           ("nvidia-fabricmanager-570",
                            "/usr/share/nvidia/nvswitch/fabricmanager.cfg"),
                           ("nvidia-driver-pinning-590",
                            "/etc/apt/preferences.d/nvidia-driver-pin")):
        control = tmp_path / name
        subprocess.run(["dpkg-deb", "-e", str(deb(repos, name)), str(control)], check=True)
        assert (control / "conffiles").read_text() == f"{conffile}\n"


# ---------------------------------------------------------------- nvidia-smi

def test_nvidia_smi_without_driver(host):
    for args in ((), ("-L",), ("--query-gpu=index", "--format=csv")):
        result = smi(host, *args)
        assert result.returncode == 9
        assert result.stdout == NO_DRIVER


def test_nvidia_smi_list(host):
    boot(host)
    result = smi(host, "-L")
    assert result.returncode == 0
    assert result.stdout == "".join(f"GPU {g['index']}: NVIDIA H100 80GB HBM3 (UUID: {g['uuid']})\n"
                                    for g in host.gpus)
    assert smi(host, "--list-gpus").stdout == result.stdout


def test_nvidia_smi_query_csv(host):
    boot(host)
    fields = ("index,uuid,name,memory.total,memory.used,memory.free,utilization.gpu,"
              "utilization.memory,driver_version,pci.bus_id,persistence_mode,temperature.gpu,"
              "power.draw,compute_cap,count")
    result = smi(host, f"--query-gpu={fields}", "--format=csv")
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert lines[0] == ("index, uuid, name, memory.total [MiB], memory.used [MiB], "
                        "memory.free [MiB], utilization.gpu [%], utilization.memory [%], "
                        "driver_version, pci.bus_id, persistence_mode, temperature.gpu, "
                        "power.draw [W], compute_cap, count")
    assert len(lines) == 5
    row = lines[2].split(", ")
    gpu = host.gpus[1]
    assert row[:4] == ["1", gpu["uuid"], "NVIDIA H100 80GB HBM3", "81559 MiB"]
    assert row[4] == "1 MiB" and row[5] == "81558 MiB"
    assert row[6:11] == ["0 %", "0 %", DRIVER, "00000000:2A:00.0", "Disabled"]
    assert re.fullmatch(r"\d+", row[11])
    assert re.fullmatch(r"\d+\.\d\d W", row[12])
    assert row[13:] == ["9.0", "4"]

    noheader = smi(host, "--query-gpu=index,memory.total", "--format=csv,noheader")
    assert noheader.stdout == "".join(f"{i}, 81559 MiB\n" for i in range(4))
    nounits = smi(host, "--query-gpu=index,memory.total,utilization.gpu",
                  "--format=csv,nounits")
    assert nounits.stdout.splitlines()[0] == "index, memory.total [MiB], utilization.gpu [%]"
    assert nounits.stdout.splitlines()[1] == "0, 81559, 0"
    both = smi(host, "--query-gpu=gpu_uuid,gpu_name", "--format=csv,noheader,nounits")
    assert both.stdout.splitlines()[0] == f"{host.gpus[0]['uuid']}, NVIDIA H100 80GB HBM3"


def test_nvidia_smi_invalid_field_and_arguments(host):
    boot(host)
    result = smi(host, "--query-gpu=index,bogus", "--format=csv")
    assert result.returncode == 2
    assert result.stdout == 'Field "bogus" is not a valid field to query.\n\n'
    assert smi(host, "--query-gpu=index").returncode == 2  # no --format
    assert smi(host, "--frobnicate").returncode == 2


def test_nvidia_smi_select_gpus(host):
    boot(host)
    by_index = smi(host, "--query-gpu=uuid", "--format=csv,noheader", "-i", "1")
    assert by_index.stdout == f"{host.gpus[1]['uuid']}\n"
    by_uuid = smi(host, "--query-gpu=index", "--format=csv,noheader",
                  f"--id={host.gpus[3]['uuid']}")
    assert by_uuid.stdout == "3\n"
    two = smi(host, "-L", "-i", "0,2")
    assert [line.split(":")[0] for line in two.stdout.splitlines()] == ["GPU 0", "GPU 2"]
    missing = smi(host, "-L", "-i", "9")
    assert missing.returncode == 6
    assert missing.stdout == "No devices were found\n"


def test_nvidia_smi_no_devices(host):
    (host / "etc/fleetlab/gpus.json").write_text('{"gpus": []}')
    (host / "run/fleetlab").mkdir(parents=True)
    (host / "run/fleetlab/nvidia-driver-loaded").write_text(DRIVER + "\n")
    result = smi(host, "-L")
    assert (result.returncode, result.stdout) == (6, "No devices were found\n")


def test_nvidia_smi_table_and_version(host, repos, make_host):
    boot(host)
    table = smi(host)
    assert table.returncode == 0
    assert f"NVIDIA-SMI {DRIVER}" in table.stdout
    assert f"Driver Version: {DRIVER}" in table.stdout
    assert "CUDA Version: 12.8" in table.stdout
    assert table.stdout.count("NVIDIA H100 80GB HBM3") == 4
    assert "81559MiB" in table.stdout
    widths = {len(line) for line in table.stdout.splitlines()[1:] if line.startswith(("|", "+"))}
    assert widths == {91}
    version = smi(host, "--version")
    assert f"DRIVER version      : {DRIVER}" in version.stdout
    assert "CUDA Version        : 12.8" in version.stdout

    old = make_host("old", driver_deb(repos, "550"), count=1)
    boot(old)
    assert "CUDA Version: 12.4" in smi(old).stdout
    assert "Driver Version: 550.163.01" in smi(old).stdout


def test_nvidia_smi_persistence_mode(host):
    boot(host)
    result = smi(host, "-pm", "1", "-i", "1")
    assert result.returncode == 0
    assert result.stdout == "Enabled persistence mode for GPU 00000000:2A:00.0.\nAll done.\n"
    query = smi(host, "--query-gpu=persistence_mode", "--format=csv,noheader")
    assert query.stdout.splitlines() == ["Disabled", "Enabled", "Disabled", "Disabled"]
    again = smi(host, "--persistence-mode=1", "-i", "1")
    assert again.stdout.startswith("Persistence mode is already Enabled for GPU")
    assert smi(host, "-pm", "1").stdout.endswith("All done.\n")
    assert set(smi(host, "--query-gpu=persistence_mode", "--format=csv,noheader")
               .stdout.split()) == {"Enabled"}
    reboot(host)  # like the real setting, lost on reboot
    assert set(smi(host, "--query-gpu=persistence_mode", "--format=csv,noheader")
               .stdout.split()) == {"Disabled"}


def test_nvidia_smi_usage_file(host):
    boot(host)
    usage = {host.gpus[2]["uuid"]: {"memory_used_mib": 40000, "utilization_gpu": 87}}
    (host / "run/fleetlab/gpu-usage.json").write_text(json.dumps(usage))
    result = smi(host, "--query-gpu=memory.used,memory.free,utilization.gpu",
                 "--format=csv,noheader,nounits", "-i", "2")
    assert result.stdout == "40000, 41559, 87\n"


def test_new_driver_needs_a_reboot(host, repos):
    """Upgrading 550 -> 570 without a reboot: the loaded module is still 550."""
    (host / "run/fleetlab").mkdir(parents=True)
    (host / "run/fleetlab/nvidia-driver-loaded").write_text("550.163.01\n")
    result = smi(host, "-L")
    assert result.returncode == 18
    assert result.stdout.startswith("Failed to initialize NVML: Driver/library version mismatch")
    boot(host)  # an already loaded module stays loaded
    assert smi(host, "-L").returncode == 18
    reboot(host)
    assert smi(host, "-L").returncode == 0


def test_nvidia_smi_query_report(host):
    boot(host)
    report = smi(host, "-q", "-i", "1")
    assert report.returncode == 0, report.stdout
    lines = report.stdout.splitlines()
    assert "==============NVSMI LOG==============" in lines
    assert f"Driver Version                            : {DRIVER}" in lines
    assert "Attached GPUs                             : 4" in lines
    assert "GPU 00000000:2A:00.0" in lines
    assert "    Persistence Mode                      : Disabled" in lines
    assert f"    GPU UUID                              : {host.gpus[1]['uuid']}" in lines
    assert "        Device Id                         : 0x233010DE" in lines
    assert report.stdout.count("Product Name") == 1


# ---------------------------------------------------------------- nvidia-persistenced

def persistenced(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run(root, "/usr/bin/nvidia-persistenced", *args)


def persistence(root: Path) -> list[str]:
    return smi(root, "--query-gpu=persistence_mode", "--format=csv,noheader").stdout.split()


@pytest.fixture
def pd_host(repos, make_host) -> HostRoot:
    return make_host("pd", driver_deb(repos), deb(repos, "nvidia-persistenced", repo="debian12"))


def test_persistenced_package(repos, pd_host):
    unit = (pd_host / "usr/lib/systemd/system/nvidia-persistenced.service").read_text()
    assert "Type=forking" in unit
    assert "PIDFile=/run/nvidia-persistenced/nvidia-persistenced.pid" in unit
    assert "ExecStart=/usr/bin/nvidia-persistenced --user nvidia-persistenced --verbose" in unit
    assert "WantedBy=multi-user.target" in unit
    assert "not NVIDIA software" in unit
    assert "nvidia-persistenced.service" in calls(pd_host)
    assert "start" not in calls(pd_host)
    version = persistenced(pd_host, "--version")
    assert version.returncode == 0 and f"version {DRIVER}" in version.stdout


def test_persistenced_refuses_to_start_without_the_driver(pd_host):
    result = persistenced(pd_host, "--verbose")
    assert result.returncode == 1
    assert "Failed to query NVIDIA devices." in result.stderr
    assert result.stderr.endswith(
        "nvidia-persistenced failed to initialize. Check syslog for more details.\n")
    assert not (pd_host / PERSISTENCED_PID).exists()


def test_persistenced_keeps_persistence_on_while_it_runs(pd_host):
    boot(pd_host)
    assert set(persistence(pd_host)) == {"Disabled"}
    started = persistenced(pd_host, "--verbose")
    assert started.returncode == 0, started.stderr
    assert "device 0000:18:00.0 - persistence mode enabled." in started.stderr
    pid = read_pid(pd_host, PERSISTENCED_PID)
    assert pid and alive(pid)
    assert persistence(pd_host) == ["Enabled"] * 4
    assert "    Persistence Mode                      : Enabled" in smi(pd_host, "-q").stdout
    assert "   On  |" in smi(pd_host).stdout
    again = persistenced(pd_host)
    assert again.returncode == 1 and "failed to initialize" in again.stderr
    stop_daemon(pd_host, PERSISTENCED_PID)
    assert persistence(pd_host) == ["Disabled"] * 4
    quiet = persistenced(pd_host, "--no-persistence-mode")
    assert quiet.returncode == 0
    assert persistence(pd_host) == ["Disabled"] * 4
    stop_daemon(pd_host, PERSISTENCED_PID)


# ---------------------------------------------------------------- Fabric Manager

FM_CONFIG = "usr/share/nvidia/nvswitch/fabricmanager.cfg"


def fabricmanager(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run(root, "/usr/bin/nv-fabricmanager", *args)


def start_fm(root: Path, config: str = "/" + FM_CONFIG) -> subprocess.CompletedProcess:
    """What nvidia-fabricmanager.service runs."""
    return fabricmanager(root, "-c", config)


@pytest.fixture
def fm_host(repos, make_host) -> HostRoot:
    """HGX H100 (four NVSwitches), driver 570 and Fabric Manager 570, not rebooted."""
    return make_host("fm", driver_deb(repos), deb(repos, "nvidia-fabricmanager-570"))


def test_fabricmanager_package(fm_host):
    unit = (fm_host / "usr/lib/systemd/system/nvidia-fabricmanager.service").read_text()
    assert "Type=forking" in unit
    assert "PIDFile=/run/fleetlab/fabricmanager.pid" in unit
    assert f"ExecStart=/usr/bin/nv-fabricmanager -c /{FM_CONFIG}" in unit
    assert "not NVIDIA software" in unit
    config = (fm_host / FM_CONFIG).read_text()
    assert "LOG_LEVEL=4\n" in config and "FABRIC_MODE=0\n" in config
    assert "DAEMONIZE=1\n" in config and "not NVIDIA software" in config
    for line in config.splitlines():
        assert not line or line.startswith("#") or re.fullmatch(r"[A-Z_]+=.*", line), line
    assert fabricmanager(fm_host, "--version").stdout == f"Fabric Manager version is : {DRIVER}\n"
    # enabled by its postinst, not started
    assert "deb-systemd-helper enable nvidia-fabricmanager.service" in calls(fm_host)
    assert "start" not in calls(fm_host)


def test_fabricmanager_refuses_without_the_driver(fm_host):
    result = start_fm(fm_host)
    assert result.returncode == 1
    assert ("failed to allocate handle (client) to NVIDIA GPU driver. Make sure that the "
            "NVIDIA driver is installed and running") in result.stderr
    assert not (fm_host / FM_PID).exists()


def test_fabricmanager_refuses_another_driver_version(fm_host):
    (fm_host / "run/fleetlab").mkdir(parents=True)
    (fm_host / MARKER).write_text("550.163.01\n")
    result = start_fm(fm_host)
    assert result.returncode == 1
    assert (f"fabric manager NVIDIA GPU driver interface version {DRIVER} don't match with "
            "driver version 550.163.01. Please update with matching NVIDIA driver package."
            ) in result.stderr
    assert not (fm_host / FM_PID).exists()


def test_fabricmanager_refuses_a_bad_config(fm_host):
    boot(fm_host)
    config = fm_host / FM_CONFIG
    good = config.read_text()
    config.write_text(good + "FABRIC_MODE 1\n")
    result = start_fm(fm_host)
    assert result.returncode == 1
    assert f"line {len(good.splitlines()) + 1} is not KEY=VALUE" in result.stderr
    config.unlink()
    missing = start_fm(fm_host)
    assert missing.returncode == 1
    assert "No such file or directory" in missing.stderr
    assert not (fm_host / FM_PID).exists()


def test_fabricmanager_refuses_a_board_without_nvswitch(repos, make_host):
    root = make_host("pcie", driver_deb(repos), deb(repos, "nvidia-fabricmanager-570"),
                     model="L40S")
    boot(root)
    assert smi(root, "-L").returncode == 0
    result = start_fm(root)
    assert result.returncode == 1
    assert ("request to query NVSwitch device information from NVSwitch driver failed with "
            "error:WARNING Nothing to do [NV_WARN_NOTHING_TO_DO]") in result.stderr
    assert not (root / FM_PID).exists()
    # an older gpus.json (GPUs only) is a PCIe board too
    (root / "etc/fleetlab/gpus.json").write_text(json.dumps({"gpus": root.gpus}))
    assert start_fm(root).returncode == 1


def test_fabricmanager_runs_on_an_nvswitch_board(fm_host):
    boot(fm_host)
    result = start_fm(fm_host)
    assert result.returncode == 0, result.stderr
    pid = read_pid(fm_host, FM_PID)
    assert pid and alive(pid)
    log = (fm_host / "var/log/fabricmanager.log").read_text()
    assert "Successfully configured all the available NVSwitches" in log
    again = start_fm(fm_host)
    assert again.returncode == 1 and "another instance" in again.stderr
    assert read_pid(fm_host, FM_PID) == pid
    stop_daemon(fm_host, FM_PID)
    assert "Received an interrupt to exit" in (fm_host / "var/log/fabricmanager.log").read_text()


def test_fabricmanager_in_the_foreground(fm_host):
    boot(fm_host)
    config = fm_host / FM_CONFIG
    config.write_text(config.read_text().replace("DAEMONIZE=1", "DAEMONIZE=0"))
    env = {**os.environ, "FLEETLAB_ROOT": str(fm_host)}
    proc = subprocess.Popen([str(fm_host / "usr/bin/nv-fabricmanager"), "-c", "/" + FM_CONFIG],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: read_pid(fm_host, FM_PID) == proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert not (fm_host / FM_PID).exists()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("model", ["B200", "B100", "B300"])
def test_fabricmanager_on_hgx_b200(repos, make_host, tmp_path, model):
    """HGX B100/B200/B300's NVSwitches are not on the host's PCI bus: its GPUs say the
    board needs Fabric Manager, and that it is an NVLink 5 one: without NVLSM Fabric
    Manager's start refuses, naming the package, the GPUs stay In Progress with the fabric
    and CUDA answers 802 in a container; with nvlsm installed it runs."""
    root = make_host("hgx-b200", deb(repos, "nvidia-open-570"),
                     deb(repos, "nvidia-fabricmanager-570"), *toolkit_debs(repos), count=8,
                     model=model, nvswitches=[])
    boot(root)
    refused = start_fm(root)
    assert refused.returncode == 1
    assert refused.stderr.startswith(
        '/opt/nvidia/nvlsm/sbin/nvlsm does not exist. Please install "Nvidia NVLink Subnet '
        'Manager" (nvlsm) package\n')
    log = (root / "var/log/fabricmanager.log").read_text()
    assert "Detected NVL5+ system" in log and "Nvidia NVLink Subnet Manager" in log
    assert not (root / FM_PID).exists()
    fabric = smi(root, "--query-gpu=fabric.state,fabric.status", "--format=csv,noheader")
    assert fabric.stdout == "In Progress, N/A\n" * 8
    before = make_bundle(tmp_path / "before", ["NVIDIA_VISIBLE_DEVICES=all"])
    assert hook(root, before).returncode == 0
    assert json.loads((before / "rootfs/etc/fleetlab/cuda.json").read_text())["init_error"] \
        == 802

    install(root, deb(repos, "nvlsm", repo="debian12"))
    assert start_fm(root).returncode == 0
    assert alive(read_pid(root, FM_PID))
    log = (root / "var/log/fabricmanager.log").read_text()
    assert 'Started "Nvidia NVLink Subnet Manager"' in log
    fabric = smi(root, "--query-gpu=fabric.state,fabric.status", "--format=csv,noheader")
    assert fabric.stdout == "Completed, Success\n" * 8
    after = make_bundle(tmp_path / "after", ["NVIDIA_VISIBLE_DEVICES=all"])
    assert hook(root, after).returncode == 0
    assert json.loads((after / "rootfs/etc/fleetlab/cuda.json").read_text())["init_error"] == 0


def test_fabricmanager_on_hgx_b200_needs_ib_umad(repos, make_host):
    """NVLink 5 with NVLSM installed but a kernel without ib_umad (the lab lists it in
    /etc/fleetlab/kernel-modules-missing, as an Ubuntu kernel without
    linux-modules-extra-$(uname -r)): Fabric Manager's start refuses with upstream's line
    (nvidia-fabricmanager-start.sh, spectrocloud/CanvOS#700), nothing runs and the fabric
    stays In Progress; with the module it starts."""
    root = make_host("hgx-b200-umad", deb(repos, "nvidia-open-570"),
                     deb(repos, "nvidia-fabricmanager-570"), deb(repos, "nvlsm", repo="debian12"),
                     count=8, model="B200", nvswitches=[])
    boot(root)
    missing = root / "etc/fleetlab/kernel-modules-missing"
    missing.parent.mkdir(parents=True, exist_ok=True)
    missing.write_text("ib_umad\n")
    refused = start_fm(root)
    assert refused.returncode == 1
    assert refused.stderr.startswith('Kernel module "ib_umad" has not been loaded, fabric '
                                     "manager cannot be started\n")
    log = (root / "var/log/fabricmanager.log").read_text()
    assert "Detected NVL5+ system" in log
    assert '[ERROR]' in log and 'Kernel module "ib_umad" has not been loaded' in log
    assert "Nvidia NVLink Subnet Manager" not in log  # refused before NVLSM
    assert not (root / FM_PID).exists()
    fabric = smi(root, "--query-gpu=fabric.state,fabric.status", "--format=csv,noheader")
    assert fabric.stdout == "In Progress, N/A\n" * 8

    missing.unlink()  # the module is there (linux-modules-extra installed, modprobe'd)
    assert start_fm(root).returncode == 0
    assert alive(read_pid(root, FM_PID))
    assert 'Started "Nvidia NVLink Subnet Manager"' in \
        (root / "var/log/fabricmanager.log").read_text()
    stop_daemon(root, FM_PID)


def test_fabricmanager_on_hgx_h100_needs_no_ib_umad(fm_host):
    """ib_umad is NVLSM's: a pre-NVL5 board starts without it."""
    missing = fm_host / "etc/fleetlab/kernel-modules-missing"
    missing.parent.mkdir(parents=True, exist_ok=True)
    missing.write_text("ib_umad\n")
    boot(fm_host)
    assert start_fm(fm_host).returncode == 0
    stop_daemon(fm_host, FM_PID)


def test_fabricmanager_on_hgx_h100_needs_no_nvlsm(fm_host):
    boot(fm_host)
    assert start_fm(fm_host).returncode == 0
    assert "Detected Pre-NVL5 system" in (fm_host / "var/log/fabricmanager.log").read_text()


@pytest.mark.parametrize("model, cap", [("H100", "9.0"), ("A100", "8.0"), ("L40S", "8.9"),
                                        ("B200", "10.0"), ("B100", "10.0"), ("B300", "10.3")])
def test_nvidia_smi_compute_cap(repos, make_host, model, cap):
    """`nvidia-smi --query-gpu=index,uuid,compute_cap --format=csv,noheader`: one line per
    GPU, the values joined by `, `, the capability as MAJOR.MINOR."""
    root = make_host("cc", deb(repos, "nvidia-open-570"), count=2, model=model)
    boot(root)
    result = smi(root, "--query-gpu=index,uuid,compute_cap", "--format=csv,noheader")
    assert result.returncode == 0, result.stdout
    assert result.stdout == "".join(f"{g['index']}, {g['uuid']}, {cap}\n" for g in root.gpus)
    header = smi(root, "--query-gpu=compute_cap", "--format=csv")
    assert header.stdout.splitlines() == ["compute_cap", cap, cap]


def test_fabricmanager_debian13(repos, make_host):
    root = pinned_host(make_host, repos)
    assert (root / MODULE).read_text() == f"{PINNED} open\n"
    assert start_fm(root).returncode == 0
    stop_daemon(root, FM_PID)
    # Fabric Manager of another branch refuses the loaded 590 driver
    install(root, deb(repos, "nvidia-fabricmanager-570"))
    old = start_fm(root)
    assert old.returncode == 1
    assert f"version {DRIVER} don't match with driver version {PINNED}" in old.stderr


# ---------------------------------------------------------------- nvidia-ctk

FOREIGN = {
    "data-root": "/srv/docker",
    "default-address-pools": [{"base": "10.200.0.0/16", "size": 24}],
    "registry-mirrors": ["http://172.29.1.2:5000"],
    "log-opts": {"max-size": "10m", "max-file": "3"},
}

EXPECTED = """{
    "data-root": "/srv/docker",
    "default-address-pools": [
        {
            "base": "10.200.0.0/16",
            "size": 24
        }
    ],
    "log-opts": {
        "max-file": "3",
        "max-size": "10m"
    },
    "registry-mirrors": [
        "http://172.29.1.2:5000"
    ],
    "runtimes": {
        "nvidia": {
            "args": [],
            "path": "nvidia-container-runtime"
        }
    }
}"""


def daemon_json(root: Path) -> Path:
    return root / "etc/docker/daemon.json"


@pytest.mark.parametrize("version", packages.TOOLKIT_VERSIONS)
def test_nvidia_ctk_version(repos, tmp_path, version):
    install(tmp_path, *toolkit_debs(repos, version))
    result = ctk(tmp_path, "--version")
    assert result.returncode == 0
    assert result.stdout.splitlines()[0] == f"NVIDIA Container Toolkit CLI version {version}"
    assert result.stdout.splitlines()[1].startswith("commit: ")
    cli = run(tmp_path, "/usr/bin/nvidia-container-cli", "--version")
    assert f"cli-version: {version}" in cli.stdout and f"lib-version: {version}" in cli.stdout
    hook = run(tmp_path, "/usr/bin/nvidia-container-runtime-hook", "--version")
    assert f"version {version}" in hook.stdout


def test_nvidia_ctk_configure_keeps_foreign_keys(host):
    path = daemon_json(host)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(FOREIGN, indent=2) + "\n")
    result = ctk(host, "runtime", "configure", "--runtime=docker")
    assert result.returncode == 0, result.stderr
    assert path.read_text() == EXPECTED  # MarshalIndent: 4 spaces, sorted, no newline
    assert "Wrote updated config to /etc/docker/daemon.json" in result.stderr
    assert "It is recommended that docker daemon be restarted." in result.stderr
    assert 'level=info msg="Loading config from /etc/docker/daemon.json"' in result.stderr
    first = path.stat()
    again = ctk(host, "runtime", "configure", "--runtime", "docker")
    assert again.returncode == 0
    assert path.read_text() == EXPECTED
    assert "Wrote updated config" in again.stderr  # rewritten on every run
    assert path.stat().st_mtime_ns >= first.st_mtime_ns


def test_nvidia_ctk_set_as_default_and_cdi(host):
    path = daemon_json(host)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({**FOREIGN, "features": {"buildkit": True}}))
    result = ctk(host, "runtime", "configure", "--runtime=docker", "--set-as-default",
                 "--cdi.enabled")
    assert result.returncode == 0, result.stderr
    config = json.loads(path.read_text())
    assert config["default-runtime"] == "nvidia"
    assert config["runtimes"] == {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}
    # upstream EnableCDI replaces "features" (its map[string]bool assertion never matches)
    assert config["features"] == {"cdi": True}
    for key, value in FOREIGN.items():
        assert config[key] == value
    assert list(config) == sorted(config)


def test_nvidia_ctk_creates_missing_file(host):
    result = ctk(host, "runtime", "configure", "--runtime=docker")
    assert result.returncode == 0, result.stderr
    assert "Config file does not exist; using empty config" in result.stderr
    assert daemon_json(host).read_text() == (
        '{\n    "runtimes": {\n        "nvidia": {\n            "args": [],\n'
        '            "path": "nvidia-container-runtime"\n        }\n    }\n}')
    other = ctk(host, "runtime", "configure", "--config=/etc/docker/other.json")
    assert other.returncode == 0
    assert (host / "etc/docker/other.json").is_file()


def test_nvidia_ctk_rejects_invalid_json(host):
    path = daemon_json(host)
    path.parent.mkdir(parents=True)
    for text, message in (('{"data-root": "/srv",', "unexpected EOF"),
                          ("not json", "invalid character 'n' looking for beginning of value")):
        path.write_text(text)
        result = ctk(host, "runtime", "configure", "--runtime=docker")
        assert result.returncode == 1
        assert f"unable to load config for runtime docker: {message}" in result.stderr
        assert "level=error" in result.stderr
        assert path.read_text() == text


def test_nvidia_ctk_dry_run_and_other_runtimes(host):
    path = daemon_json(host)
    path.parent.mkdir(parents=True)
    path.write_text('{"data-root": "/srv/docker"}')
    dry = ctk(host, "runtime", "configure", "--runtime=docker", "--dry-run")
    assert dry.returncode == 0
    assert json.loads(dry.stdout)["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    assert path.read_text() == '{"data-root": "/srv/docker"}'
    for runtime in ("containerd", "crio", "podman"):
        assert ctk(host, "runtime", "configure", f"--runtime={runtime}").returncode == 1
    assert "unrecognized runtime 'podman'" in ctk(host, "runtime", "configure",
                                                  "--runtime=podman").stderr
    assert ctk(host, "runtime", "configure", "--bogus").returncode == 1


def test_nvidia_ctk_cdi(host):
    failed = ctk(host, "cdi", "generate", "--output=/var/run/cdi/nvidia.yaml")
    assert failed.returncode == 1
    assert "failed to initialize NVML: Driver Not Loaded" in failed.stderr
    assert not (host / "var/run/cdi/nvidia.yaml").exists()
    boot(host)
    result = ctk(host, "cdi", "generate", "--output=/var/run/cdi/nvidia.yaml")
    assert result.returncode == 0, result.stderr
    spec = (host / "var/run/cdi/nvidia.yaml").read_text()
    assert spec.startswith("---\ncdiVersion: ")
    assert "\nkind: nvidia.com/gpu\n" in spec
    assert '  name: "0"\n' in spec and "  name: all\n" in spec
    assert f"  name: {host.gpus[3]['uuid']}\n" in spec
    listed = ctk(host, "cdi", "list")
    assert listed.returncode == 0
    names = listed.stdout.split()
    assert len(names) == 9 and "nvidia.com/gpu=all" in names
    assert f"nvidia.com/gpu={host.gpus[0]['uuid']}" in names
    assert "Found 9 CDI devices" in listed.stderr
    as_json = ctk(host, "cdi", "generate", "--output=/etc/cdi/nvidia.json")
    assert as_json.returncode == 0
    assert json.loads((host / "etc/cdi/nvidia.json").read_text())["kind"] == "nvidia.com/gpu"


# ---------------------------------------------------------------- the prestart hook

def make_bundle(tmp_path: Path, env: list[str], python: bool = True) -> Path:
    bundle = tmp_path / "bundle"
    (bundle / "rootfs/usr/bin").mkdir(parents=True)
    if python:
        (bundle / "rootfs/usr/bin/python3").symlink_to("python3.13")
        (bundle / "rootfs/usr/bin/python3.13").write_text("")
    (bundle / "config.json").write_text(json.dumps({
        "ociVersion": "1.2.0", "root": {"path": "rootfs"},
        "process": {"args": ["sleep", "1"], "env": ["PATH=/usr/bin:/bin", *env]}}))
    return bundle


def hook(root: Path, bundle: Path, container_id: str = "c0ffee") -> subprocess.CompletedProcess:
    state = json.dumps({"ociVersion": "1.2.0", "id": container_id, "status": "creating",
                        "pid": 4242, "bundle": str(bundle)})
    return run(root, "/usr/bin/nvidia-container-runtime-hook", "prestart", stdin=state)


def assignments(root: Path) -> list[dict]:
    path = root / "var/lib/fleetlab/gpu-assignments.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("by", ["index", "uuid"])
def test_hook_assigns_the_requested_gpu(host, tmp_path, by):
    boot(host)
    gpu = host.gpus[1]
    requested = "1" if by == "index" else gpu["uuid"]
    bundle = make_bundle(tmp_path, [f"NVIDIA_VISIBLE_DEVICES={requested}"])
    result = hook(host, bundle)
    assert result.returncode == 0, result.stderr
    (record,) = assignments(host)
    assert record["container_id"] == "c0ffee"
    assert record["requested"] == requested
    assert (record["indexes"], record["uuids"]) == ([1], [gpu["uuid"]])
    assert record["time"]

    rootfs = bundle / "rootfs"
    inside = json.loads((rootfs / "etc/fleetlab/gpus.json").read_text())["gpus"]
    assert [g["uuid"] for g in inside] == [gpu["uuid"]]
    assert (rootfs / "run/fleetlab/nvidia-driver-loaded").read_text().strip() == DRIVER
    listed = run(rootfs, "/usr/bin/nvidia-smi", "-L")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    # NVML numbers the devices a container sees from 0; the UUID is the host's GPU 1
    assert listed.stdout == f"GPU 0: NVIDIA H100 80GB HBM3 (UUID: {gpu['uuid']})\n"
    bus = run(rootfs, "/usr/bin/nvidia-smi", "--query-gpu=pci.bus_id", "--format=csv,noheader")
    assert bus.stdout == "00000000:2A:00.0\n"


def test_hook_all_and_legacy_images(host, tmp_path):
    boot(host)
    result = hook(host, make_bundle(tmp_path / "a", ["NVIDIA_VISIBLE_DEVICES=all"]))
    assert result.returncode == 0, result.stderr
    legacy = hook(host, make_bundle(tmp_path / "b", ["CUDA_VERSION=12.4.1"]), "legacy")
    assert legacy.returncode == 0, legacy.stderr
    records = assignments(host)
    assert [r["indexes"] for r in records] == [[0, 1, 2, 3], [0, 1, 2, 3]]


@pytest.mark.parametrize("env", [["NVIDIA_VISIBLE_DEVICES=void"], ["NVIDIA_VISIBLE_DEVICES="],
                                 []])
def test_hook_leaves_other_containers_alone(host, tmp_path, env):
    # even without a loaded driver: nothing is asked for
    bundle = make_bundle(tmp_path, env)
    result = hook(host, bundle)
    assert result.returncode == 0, result.stderr
    assert assignments(host) == []
    assert not (bundle / "rootfs/etc/fleetlab").exists()
    assert not (bundle / "rootfs/usr/bin/nvidia-smi").exists()


def test_hook_fails_for_unknown_device(host, tmp_path):
    boot(host)
    result = hook(host, make_bundle(tmp_path, ["NVIDIA_VISIBLE_DEVICES=1,7"]))
    assert result.returncode == 1
    assert result.stderr.strip() == "nvidia-container-cli: device error: 7: unknown device"
    assert assignments(host) == []
    uuid = hook(host, make_bundle(tmp_path / "u", ["NVIDIA_VISIBLE_DEVICES=GPU-deadbeef"]))
    assert uuid.returncode == 1 and "GPU-deadbeef: unknown device" in uuid.stderr


def test_hook_fails_without_loaded_driver(host, tmp_path):
    for env in (["NVIDIA_VISIBLE_DEVICES=0"], ["NVIDIA_VISIBLE_DEVICES=none"]):
        result = hook(host, make_bundle(tmp_path / env[0][-1], env))
        assert result.returncode == 1
        assert result.stderr.strip() == ("nvidia-container-cli: initialization error: "
                                         "nvml error: driver not loaded")
    assert assignments(host) == []


def test_hook_fails_without_driver_package(repos, tmp_path):
    root = tmp_path / "nodriver"
    install(root, *toolkit_debs(repos))
    write_gpus(root)
    result = hook(root, make_bundle(tmp_path, ["NVIDIA_VISIBLE_DEVICES=all"]))
    assert result.returncode == 1
    assert "load library failed: libnvidia-ml.so.1" in result.stderr


def test_hook_fails_on_driver_library_mismatch(host, tmp_path):
    (host / "run/fleetlab").mkdir(parents=True)
    (host / "run/fleetlab/nvidia-driver-loaded").write_text("550.163.01\n")
    result = hook(host, make_bundle(tmp_path, ["NVIDIA_VISIBLE_DEVICES=0"]))
    assert result.returncode == 1
    assert "driver/library version mismatch" in result.stderr


def test_hook_nvidia_smi_without_python_in_image(host, tmp_path):
    boot(host)
    gpu = host.gpus[2]
    bundle = make_bundle(tmp_path, [f"NVIDIA_VISIBLE_DEVICES={gpu['uuid']}"], python=False)
    assert hook(host, bundle).returncode == 0
    rootfs = bundle / "rootfs"
    script = (rootfs / "usr/bin/nvidia-smi").read_text()
    assert script.startswith("#!/bin/sh")
    listed = run(rootfs, "/usr/bin/nvidia-smi", "-L", sh=True)
    assert listed.stdout == f"GPU 0: NVIDIA H100 80GB HBM3 (UUID: {gpu['uuid']})\n"
    query = run(rootfs, "/usr/bin/nvidia-smi", "--query-gpu=index,uuid,memory.total",
                "--format=csv,nounits", sh=True)
    assert query.stdout == f"index, uuid, memory.total [MiB]\n0, {gpu['uuid']}, 81559\n"
    bad = run(rootfs, "/usr/bin/nvidia-smi", "--query-gpu=nope", "--format=csv", sh=True)
    assert (bad.returncode, bad.stdout) == (2, 'Field "nope" is not a valid field to query.\n\n')
    assert f"Driver Version: {DRIVER}" in run(rootfs, "/usr/bin/nvidia-smi", sh=True).stdout


def test_hook_keeps_writes_inside_the_container(host, tmp_path):
    boot(host)
    bundle = make_bundle(tmp_path, ["NVIDIA_VISIBLE_DEVICES=0"])
    outside = tmp_path / "outside"
    (bundle / "rootfs/run").symlink_to(str(outside))  # absolute link, resolved in the rootfs
    assert hook(host, bundle).returncode == 0
    assert not outside.exists()
    inner = bundle / "rootfs" / str(outside).lstrip("/") / "fleetlab/nvidia-driver-loaded"
    assert inner.read_text().strip() == DRIVER


# ---------------------------------------------------------------- runtime and cli

def test_runtime_adds_the_hook_and_execs_runc(host, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    argv_file = tmp_path / "runc-argv"
    (fake / "runc").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {argv_file}\n')
    (fake / "runc").chmod(0o755)
    bundle = make_bundle(tmp_path, ["NVIDIA_VISIBLE_DEVICES=all"])
    env = {"PATH": f"{fake}:{os.environ['PATH']}"}
    args = ["--root", "/var/run/docker/runtime-runc/moby", "--log", "/x/log.json",
            "--log-format", "json", "create", "--bundle", str(bundle), "--pid-file",
            "/x/pid", "c0ffee"]
    for _ in range(2):
        result = run(host, "/usr/bin/nvidia-container-runtime", *args, env=env)
        assert result.returncode == 0, result.stderr
        assert argv_file.read_text().splitlines() == args
    spec = json.loads((bundle / "config.json").read_text())
    assert spec["hooks"]["prestart"] == [{"path": "/usr/bin/nvidia-container-runtime-hook",
                                          "args": ["nvidia-container-runtime-hook", "prestart"]}]
    state = run(host, "/usr/bin/nvidia-container-runtime", "state", "c0ffee", env=env)
    assert state.returncode == 0
    assert argv_file.read_text().splitlines() == ["state", "c0ffee"]
    log = (host / "var/log/nvidia-container-runtime.log").read_text().splitlines()
    assert [json.loads(line)["argv"] for line in log] == [args, args, ["state", "c0ffee"]]
    assert json.loads(log[0])["hook_added"] is True and json.loads(log[1])["hook_added"] is False


def test_nvidia_container_cli_info(host):
    failed = run(host, "/usr/bin/nvidia-container-cli", "info")
    assert failed.returncode == 1
    assert "nvml error: driver not loaded" in failed.stderr
    boot(host)
    info = run(host, "/usr/bin/nvidia-container-cli", "-k", "-d", "/dev/tty", "info")
    assert info.returncode == 0, info.stderr
    assert f"NVRM version:   {DRIVER}" in info.stdout
    assert info.stdout.count("Model:          NVIDIA H100 80GB HBM3") == 4
    assert f"GPU UUID:       {host.gpus[3]['uuid']}" in info.stdout


# ---------------------------------------------------------------- hook and Fabric Manager

def test_hook_cuda_needs_fabricmanager_on_an_nvswitch_board(repos, fm_host, tmp_path):
    """The container hook reads Fabric Manager's pid file: on an NVSwitch board CUDA
    initialises in a container only while Fabric Manager runs."""
    install(fm_host, *toolkit_debs(repos))
    boot(fm_host)
    before = make_bundle(tmp_path / "before", ["NVIDIA_VISIBLE_DEVICES=all"])
    assert hook(fm_host, before).returncode == 0
    cuda = json.loads((before / "rootfs/etc/fleetlab/cuda.json").read_text())
    assert cuda["init_error"] == 802
    assert start_fm(fm_host).returncode == 0
    after = make_bundle(tmp_path / "after", ["NVIDIA_VISIBLE_DEVICES=all"])
    assert hook(fm_host, after).returncode == 0
    assert json.loads((after / "rootfs/etc/fleetlab/cuda.json").read_text())["init_error"] == 0
    stop_daemon(fm_host, FM_PID)
    stopped = make_bundle(tmp_path / "stopped", ["NVIDIA_VISIBLE_DEVICES=all"])
    assert hook(fm_host, stopped).returncode == 0
    assert json.loads((stopped / "rootfs/etc/fleetlab/cuda.json").read_text())["init_error"] \
        == 802


# ---------------------------------------------------------------- a daemon-reload, with Docker

RELOAD_LAB = "fleetlab-reload"
# a driver stand-in that is "loaded": enough for the toolkit (no DKMS, no reboot)
FAKE_DRIVER = ("mkdir -p /usr/lib/fleetlab /run/fleetlab && "
               f"echo {DRIVER} > /usr/lib/fleetlab/libnvidia-ml.version && "
               f"echo {DRIVER} > /run/fleetlab/nvidia-driver-loaded")


@pytest.fixture(scope="module")
def reload_lab(tmp_path_factory):
    """One GPU host (H100, 1 GPU) with Docker from Debian, the lab's registry as its mirror,
    the toolkit's apt repository, and the driver stand-in's nvidia-smi."""
    smi = tmp_path_factory.mktemp("smi") / "nvidia-smi"
    smi.write_text(packages.render_standin("nvidia_smi.py", driver_version=DRIVER,
                                           package="cuda-drivers-570"))
    with running_lab(RELOAD_LAB, "--gpu-hosts", "1", "--gpus-per-host", "1",
                     "--registry-port", "5070", "--model-scale", "0.05") as fleet:
        apt = fleet.endpoint("apt_repository", "nvidia_container_toolkit")
        mirror = fleet.endpoint("image_registry", "mirror")
        fleet.ssh("gpu-1", "export DEBIAN_FRONTEND=noninteractive && "
                           f"curl -fsS {apt}/gpgkey | gpg --dearmor --yes "
                           "-o /usr/share/keyrings/tk.gpg && "
                           "echo 'deb [signed-by=/usr/share/keyrings/tk.gpg] "
                           f"{apt}/stable/deb/amd64 /' > /etc/apt/sources.list.d/tk.list && "
                           "apt-get update -qq && apt-get install -y -qq docker.io && "
                           f"echo '{{\"registry-mirrors\": [\"{mirror}\"]}}' "
                           "> /etc/docker/daemon.json && " + FAKE_DRIVER, timeout=600)
        client = fleet._client("gpu-1").open_sftp()
        client.put(str(smi), "/usr/bin/nvidia-smi")
        client.chmod("/usr/bin/nvidia-smi", 0o755)
        client.close()
        yield fleet


def toolkit(fleet, version: str, daemon: dict) -> None:
    """Install toolkit VERSION, write daemon.json (the mirror kept), restart Docker."""
    mirror = fleet.endpoint("image_registry", "mirror")
    names = ("nvidia-container-toolkit", "nvidia-container-toolkit-base",
             "libnvidia-container-tools", "libnvidia-container1")
    pins = " ".join(f"{n}={version}-1" for n in names)
    doc = json.dumps({**daemon, "registry-mirrors": [mirror]})
    fleet.ssh("gpu-1", "docker rm -f $(docker ps -aq) >/dev/null 2>&1; "
                       "export DEBIAN_FRONTEND=noninteractive && apt-get install -y -qq "
                       f"--allow-downgrades {pins} && echo '{doc}' > /etc/docker/daemon.json && "
                       "systemctl reset-failed docker.service docker.socket; "
                       "systemctl restart docker && timeout 60 sh -c "
                       "'until docker info >/dev/null 2>&1; do sleep 1; done'", timeout=300)


def gpu_container(fleet, name: str, *options: str) -> None:
    """A GPU container as the stack runs one: Compose's `driver: nvidia` is `--gpus`."""
    fleet.ssh("gpu-1", f"docker run -d --name {name} --gpus all --read-only --cap-drop ALL "
                       f"{' '.join(options)} --entrypoint sleep nginx:stable 600", timeout=300)


def smi_in(fleet, name: str) -> tuple[int, str]:
    status, out, _ = fleet.ssh("gpu-1", f"docker exec {name} nvidia-smi -L", check=False)
    return status, out


RUNTIME = {"runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}}


@pytest.mark.lab
@pytest.mark.parametrize(("version", "daemon", "options", "cut"), [
    # --gpus with runc as the default runtime: dockerd's prestart hook, any version
    ("1.17.8", RUNTIME, (), True),
    ("1.18.1", RUNTIME, (), True),
    # the nvidia runtime: legacy (the hook) in 1.17.x, jit-cdi (CDI edits) from 1.18.0
    ("1.17.8", {**RUNTIME, "default-runtime": "nvidia"}, (), True),
    ("1.18.1", {**RUNTIME, "default-runtime": "nvidia"}, (), False),
    ("1.19.1", RUNTIME, ("--runtime", "nvidia"), False),
    # Docker's cgroupfs driver: systemd does not manage the containers' cgroups
    ("1.17.8", {**RUNTIME, "exec-opts": ["native.cgroupdriver=cgroupfs"]}, (), False),
])
def test_a_daemon_reload_cuts_the_containers_the_hook_gave_gpus(reload_lab, version, daemon,
                                                                 options, cut):
    fleet = reload_lab
    toolkit(fleet, version, daemon)
    gpu_container(fleet, "gpu-c", *options)
    assert smi_in(fleet, "gpu-c") == (0, f"GPU 0: NVIDIA H100 80GB HBM3 (UUID: "
                                     f"{fleet.host('gpu-1')['gpus'][0]['uuid']})\n")
    fleet.ssh("gpu-1", "systemctl daemon-reload")
    # the reload itself cuts the container off (no wait)
    status, out = smi_in(fleet, "gpu-c")
    if cut:
        assert (status, out) == (255, "Failed to initialize NVML: Unknown Error\n")
        fleet.ssh("gpu-1", "docker restart gpu-c")  # the hook runs again
        assert smi_in(fleet, "gpu-c")[0] == 0
    else:
        assert status == 0, out
    # the host keeps its GPUs either way
    assert fleet.ssh("gpu-1", "nvidia-smi -L")[1].startswith("GPU 0: NVIDIA H100")


@pytest.mark.lab
def test_a_reload_at_boot_cuts_nothing_and_the_fabric_delay_reaches_the_host(reload_lab):
    fleet = reload_lab
    toolkit(fleet, "1.17.8", RUNTIME)
    lab_cli("fabric-delay", "gpu-1", "20", name=RELOAD_LAB)  # as tests set it
    doc = json.loads(fleet.ssh("gpu-1", "cat /etc/fleetlab/gpus.json")[1])
    assert doc["fabric_init_seconds"] == 20
    # the generator ran at boot; the package noted a running system as booted
    assert fleet.ssh("gpu-1", "test -e /run/fleetlab/systemd-generator-ran", check=False)[0] == 0
    assert fleet.ssh("gpu-1", "systemctl is-active fleetlab-nvidia-device-cgroup.path")[1] \
        .strip() == "active"


"""Unit tests of the lab's NVIDIA stand-ins, their packages and signed repositories.

The stand-ins run here as subprocesses, installed from the built .debs into a
temporary root (dpkg-deb -x) and pointed at it with FLEETLAB_ROOT. No Docker needed.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from lab.nvidia import packages
from lab.nvidia.hardware import MODELS, simulated_gpus
from lab.nvidia.repo import build_repos, stop_gpg_agent

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("dpkg-deb", "gpg", "gpgv", "python3")),
    reason="needs dpkg-deb, gpg, gpgv and python3",
)

TOOLKIT = "1.17.8"
DRIVER = packages.DRIVER_BRANCHES["570"]
UUID_RE = re.compile(r"^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
             "Make sure that the latest NVIDIA driver is installed and running.\n")


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    base = tmp_path_factory.mktemp("nvidia-repos")
    out, home = base / "out", base / "gnupg"
    result = build_repos(out, home)
    yield {"out": out, "home": home, **result}
    stop_gpg_agent(home)


def deb(repos, name: str, version: str) -> Path:
    repo = repos["driver_repo"] if name.startswith("cuda-drivers") else repos["toolkit_repo"]
    return repos["out"] / repo / f"{name}_{version}_amd64.deb"


def install(root: Path, *debs: Path) -> None:
    for path in debs:
        subprocess.run(["dpkg-deb", "-x", str(path), str(root)], check=True)


def toolkit_debs(repos, version: str = TOOLKIT) -> list[Path]:
    v = packages.deb_version(version)
    return [deb(repos, name, v) for name in ("libnvidia-container1", "libnvidia-container-tools",
                                             "nvidia-container-toolkit-base",
                                             "nvidia-container-toolkit")]


def driver_deb(repos, branch: str = "570") -> Path:
    return deb(repos, f"cuda-drivers-{branch}",
               packages.deb_version(packages.DRIVER_BRANCHES[branch]))


def write_gpus(root: Path, count: int = 4, host: str = "gpu-1", model: str = "H100") -> list:
    gpus = simulated_gpus(host, count, model)
    path = root / "etc/fleetlab/gpus.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"gpus": gpus}))
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
    return run(root, "/usr/lib/fleetlab/nvidia-kmod-load", sh=True)


def reboot(root: Path) -> None:
    shutil.rmtree(root / "run", ignore_errors=True)  # /run is a tmpfs
    boot(root)


class HostRoot(type(Path())):
    """The root of a simulated host; .gpus are its simulated GPUs."""

    gpus: list


@pytest.fixture
def host(tmp_path, repos) -> HostRoot:
    """A GPU host with the 570 driver and toolkit 1.17.8 installed, not yet rebooted."""
    root = HostRoot(tmp_path / "host")
    root.mkdir()
    install(root, driver_deb(repos), *toolkit_debs(repos))
    root.gpus = write_gpus(root)
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
    assert set(MODELS) == {"H100", "A100", "L40S"}
    assert simulated_gpus("cpu-1", 0) == []
    with pytest.raises(ValueError):
        simulated_gpus("h", 1, "RTX 9999")


# ---------------------------------------------------------------- repositories

def test_repository_layout(repos):
    out = repos["out"]
    assert repos["toolkit_repo"] == "libnvidia-container/stable/deb/amd64"
    assert repos["driver_repo"] == "compute/cuda/repos/debian13/x86_64"
    assert repos["toolkit_versions"] == ["1.17.8-1", "1.18.0-1"]
    assert repos["driver_versions"] == {"550": "550.163.01-1", "570": "570.172.08-1"}
    key = (out / "libnvidia-container/gpgkey").read_text()
    assert key.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert (out / repos["driver_key"]).read_text() == key
    for repo in (repos["toolkit_repo"], repos["driver_repo"]):
        for name in ("Packages", "Packages.gz", "Release", "Release.gpg", "InRelease"):
            assert (out / repo / name).is_file(), name
    for path in repos["files"]["toolkit"] + repos["files"]["driver"]:
        assert (out / path).is_file(), path


def test_repositories_are_signed_by_the_exported_key(repos, tmp_path):
    out = repos["out"]
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(subprocess.run(["gpg", "--dearmor"], input=(
        out / repos["toolkit_key"]).read_bytes(), capture_output=True, check=True).stdout)
    for repo in (out / repos["toolkit_repo"], out / repos["driver_repo"]):
        inline = subprocess.run(["gpgv", "--keyring", str(keyring), str(repo / "InRelease")],
                                capture_output=True, text=True)
        assert inline.returncode == 0, inline.stderr
        detached = subprocess.run(["gpgv", "--keyring", str(keyring), str(repo / "Release.gpg"),
                                   str(repo / "Release")], capture_output=True, text=True)
        assert detached.returncode == 0, detached.stderr
        # gpg --verify with only the exported key in a fresh home
        home = tmp_path / f"verify-{repo.name}"
        home.mkdir(mode=0o700)
        try:
            subprocess.run(["gpg", "--homedir", str(home), "--batch", "--import",
                            str(out / repos["toolkit_key"])], check=True, capture_output=True)
            verify = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--verify",
                                     str(repo / "InRelease")], capture_output=True, text=True)
            assert verify.returncode == 0, verify.stderr
            assert "Fleet lab apt signing <lab@localhost>" in verify.stderr
        finally:
            stop_gpg_agent(home)
        # a tampered Release no longer verifies
        tampered = tmp_path / "Release"
        tampered.write_text((repo / "Release").read_text().replace("Fleet lab", "Someone"))
        bad = subprocess.run(["gpgv", "--keyring", str(keyring), str(repo / "Release.gpg"),
                              str(tampered)], capture_output=True)
        assert bad.returncode != 0


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


def test_packages_index_lists_every_deb_with_its_hash(repos):
    out = repos["out"]
    for repo, expected in ((repos["toolkit_repo"], 8), (repos["driver_repo"], 2)):
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
        release = (path / "Release").read_text()
        assert re.search(r"^Date: \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} UTC$", release, re.M)
        assert "Origin: " in release and "Label: " in release
        for name in ("Packages", "Packages.gz"):
            data = (path / name).read_bytes()
            assert f" {hashlib.sha256(data).hexdigest()} {len(data):>16} {name}\n" in release
            assert f" {hashlib.md5(data).hexdigest()} {len(data):>16} {name}\n" in release


def test_package_relations(repos):
    out = repos["out"]
    toolkit = {(s["Package"], s["Version"]): s for s in
               parse_stanzas((out / repos["toolkit_repo"] / "Packages").read_text())}
    for version in ("1.17.8-1", "1.18.0-1"):
        assert toolkit[("libnvidia-container-tools", version)]["Depends"].startswith(
            f"libnvidia-container1 (= {version})")
        depends = toolkit[("nvidia-container-toolkit", version)]["Depends"]
        assert f"nvidia-container-toolkit-base (= {version})" in depends
        assert "libnvidia-container-tools (>= 1.17.8-1)" in depends
        assert toolkit[("libnvidia-container1", version)]["Architecture"] == "amd64"
    drivers = parse_stanzas((out / repos["driver_repo"] / "Packages").read_text())
    assert {d["Package"]: d["Version"] for d in drivers} == {
        "cuda-drivers-550": "550.163.01-1", "cuda-drivers-570": "570.172.08-1"}
    for stanza in drivers:
        assert stanza["Provides"] == "cuda-drivers"
        assert stanza["Conflicts"] == "cuda-drivers"


def test_build_is_reused_when_sources_unchanged(repos):
    before = {p: p.stat().st_mtime_ns for p in (repos["out"] / repos["toolkit_repo"]).iterdir()}
    again = build_repos(repos["out"], repos["home"])
    assert again["rebuilt"] is False
    assert again["fingerprint"] == repos["fingerprint"]
    after = {p: p.stat().st_mtime_ns for p in (repos["out"] / repos["toolkit_repo"]).iterdir()}
    assert before == after


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # noqa: D102
        pass


@pytest.mark.skipif(shutil.which("apt-get") is None or os.geteuid() != 0,
                    reason="needs apt-get and root")
def test_apt_accepts_the_repositories(repos, tmp_path):
    """apt of this machine verifies, indexes and resolves the repos over HTTP."""
    out = repos["out"]
    handler = lambda *a, **kw: _QuietHandler(*a, directory=str(out), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        keyring = tmp_path / "key.gpg"
        keyring.write_bytes(subprocess.run(["gpg", "--dearmor"], input=(
            out / repos["toolkit_key"]).read_bytes(), capture_output=True, check=True).stdout)
        sources = tmp_path / "sources.list"
        sources.write_text(
            f"deb [signed-by={keyring}] {base}/{repos['toolkit_repo']} /\n"
            f"deb [signed-by={keyring}] {base}/{repos['driver_repo']}/ /\n")
        for d in ("lists/partial", "cache/archives/partial", "prefs"):
            (tmp_path / d).mkdir(parents=True)
        opts = [f"-oDir::Etc::SourceList={sources}", "-oDir::Etc::SourceParts=/nonexistent",
                f"-oDir::State::Lists={tmp_path / 'lists'}", f"-oDir::Cache={tmp_path / 'cache'}",
                "-oDir::Etc::Preferences=/nonexistent",
                f"-oDir::Etc::PreferencesParts={tmp_path / 'prefs'}",
                "-oAPT::Sandbox::User=root", "-oDebug::NoLocking=1",
                "-oAcquire::Retries=0", "-oAcquire::http::Timeout=10"]

        def apt(*args):
            return subprocess.run(["apt-get", *opts, *args], capture_output=True, text=True,
                                  timeout=120)

        update = apt("update")
        assert update.returncode == 0, update.stdout + update.stderr
        assert "NO_PUBKEY" not in update.stderr and "not signed" not in update.stderr
        pinned = apt("-s", "install", *(f"{p}=1.17.8-1" for p in repos["toolkit_packages"]))
        assert pinned.returncode == 0, pinned.stdout + pinned.stderr
        for name in repos["toolkit_packages"]:
            assert f"Inst {name} (1.17.8-1 " in pinned.stdout
        driver = apt("-s", "install", "cuda-drivers-570")
        assert driver.returncode == 0, driver.stdout + driver.stderr
        both = apt("-s", "install", "cuda-drivers-550", "cuda-drivers-570")
        assert both.returncode != 0
        assert "Conflicts: cuda-drivers" in both.stdout
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- driver package

def test_driver_unit_is_enabled_but_never_started(repos, tmp_path):
    root = tmp_path / "root"
    install(root, driver_deb(repos))
    unit = (root / "usr/lib/systemd/system/fleetlab-nvidia-kmod.service").read_text()
    assert "Type=oneshot" in unit
    assert "WantedBy=multi-user.target" in unit
    assert "ExecStart=/usr/lib/fleetlab/nvidia-kmod-load" in unit
    assert "simulation" in unit.lower()

    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "-e", str(driver_deb(repos)), str(control)], check=True)
    postinst = (control / "postinst").read_text()
    assert "start" not in re.sub(r"#.*", "", postinst).replace("started", "")
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    calls = tmp_path / "calls"
    for name in ("deb-systemd-helper", "systemctl", "deb-systemd-invoke"):
        (stubs / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\n')
        (stubs / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"}
    result = subprocess.run(["sh", str(control / "postinst"), "configure"], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    logged = calls.read_text()
    assert "deb-systemd-helper enable fleetlab-nvidia-kmod.service" in logged
    assert "start" not in logged
    assert "reboot" in result.stdout


def test_kernel_module_loads_only_at_boot(host):
    assert not (host / "run/fleetlab/nvidia-driver-loaded").exists()
    assert smi(host).returncode == 9
    boot(host)
    assert (host / "run/fleetlab/nvidia-driver-loaded").read_text() == f"{DRIVER}\n"
    assert smi(host, "-L").returncode == 0


def test_kernel_module_does_not_load_without_gpus(repos, tmp_path):
    root = tmp_path / "cpu"
    install(root, driver_deb(repos))
    result = boot(root)
    assert result.returncode == 0
    assert "No NVIDIA GPU found" in result.stderr
    assert not (root / "run/fleetlab/nvidia-driver-loaded").exists()
    assert smi(root).returncode == 9


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


def test_nvidia_smi_table_and_version(host, repos, tmp_path):
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

    old = tmp_path / "old"
    install(old, driver_deb(repos, "550"))
    write_gpus(old, 1)
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

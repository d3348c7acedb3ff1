"""The lab's stand-in NVIDIA packages: what each .deb contains, and building them.

Package names, versions and dependencies are those of NVIDIA's repositories; the
contents are the stand-ins of ``lab/nvidia/standins`` (Python 3 / sh), clearly
described as lab stand-ins in every control file.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

STANDINS = Path(__file__).resolve().parent / "standins"

TOOLKIT_VERSIONS = ("1.17.8", "1.18.0")
DRIVER_BRANCHES = {"550": "550.163.01", "570": "570.172.08"}
DEB_REVISION = "1"
ARCH = "amd64"
MAINTAINER = "Fleet lab <lab@localhost>"
MTIME = 1_735_689_600  # 2025-01-01, for reproducible packages

COMMON_BEGIN = "# fleetlab:common-begin"
COMMON_END = "# fleetlab:common-end"


def deb_version(upstream: str) -> str:
    return f"{upstream}-{DEB_REVISION}"


@dataclass
class Package:
    name: str
    version: str  # Debian version, e.g. 1.17.8-1
    summary: str
    description: str
    section: str = "utils"
    arch: str = ARCH
    depends: list[str] = field(default_factory=list)
    provides: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    replaces: list[str] = field(default_factory=list)
    homepage: str = ""
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # path -> (data, mode)
    scripts: dict[str, str] = field(default_factory=dict)  # postinst/postrm -> text

    @property
    def filename(self) -> str:
        return f"{self.name}_{self.version}_{self.arch}.deb"

    def control(self) -> str:
        size = sum(math.ceil(len(data) / 1024) for data, _ in self.files.values())
        lines = [
            f"Package: {self.name}",
            f"Version: {self.version}",
            f"Architecture: {self.arch}",
            f"Maintainer: {MAINTAINER}",
            f"Installed-Size: {size}",
        ]
        for key, values in (("Depends", self.depends), ("Provides", self.provides),
                            ("Conflicts", self.conflicts), ("Replaces", self.replaces)):
            if values:
                lines.append(f"{key}: {', '.join(values)}")
        lines += [f"Section: {self.section}", "Priority: optional"]
        if self.homepage:
            lines.append(f"Homepage: {self.homepage}")
        lines.append(f"Description: {self.summary} (fleet lab stand-in)")
        for paragraph in self.description.strip().split("\n\n"):
            if not lines[-1].startswith("Description:"):
                lines.append(" .")
            lines += [f" {line}" for line in paragraph.strip().splitlines()]
        return "\n".join(lines) + "\n"


def render_standin(source: str, *, toolkit_version: str | None = None,
                   driver_version: str | None = None, package: str = "") -> str:
    """A stand-in with the shared code inlined and build-time values filled in."""
    text = (STANDINS / source).read_text()
    if COMMON_BEGIN in text:
        head, rest = text.split(COMMON_BEGIN, 1)
        _, tail = rest.split(COMMON_END, 1)
        common = (STANDINS / "fleetlab_common.py").read_text()
        text = (f"{head}# ---- shared fleet lab code (lab/nvidia/standins/fleetlab_common.py)\n"
                f"{common}# ---- end of shared code{tail}")
    if toolkit_version:
        text = text.replace("@FLEETLAB_TOOLKIT_VERSION@", toolkit_version)
    if driver_version:
        text = text.replace("@FLEETLAB_DRIVER_VERSION@", driver_version)
    text = text.replace("@PACKAGE@", package)
    if source.endswith(".py"):
        compile(text, source, "exec")
    return text


def _readme(package: str, what: str) -> bytes:
    return (
        f"{package} -- fleet lab stand-in\n\n"
        "This package is NOT NVIDIA software. It is part of the ollama-fleet lab, which\n"
        "simulates GPU servers without GPUs: the package carries the real name and\n"
        "version so that deployments install it exactly as in production, and the\n"
        "programs in it behave as NVIDIA documents them, on simulated GPUs\n"
        "(/etc/fleetlab/gpus.json). There is no kernel driver and no device.\n\n"
        f"{what}\n"
    ).encode()


LAB_NOTE = ("This is NOT NVIDIA software: a stand-in of the ollama-fleet lab, which\n"
            "simulates GPU servers (no GPU, no kernel driver). It carries the real\n"
            "package name and version and behaves as NVIDIA documents on the\n"
            "simulated GPUs of /etc/fleetlab/gpus.json.")

TOOLKIT_HOME = "https://github.com/NVIDIA/nvidia-container-toolkit"


def toolkit_packages(upstream: str) -> list[Package]:
    v = deb_version(upstream)

    def script(source: str, package: str) -> tuple[bytes, int]:
        return render_standin(source, toolkit_version=upstream, package=package).encode(), 0o755

    lib = Package(
        "libnvidia-container1", v, "NVIDIA container runtime library",
        "Marker standing for libnvidia-container.so.1 (no library code).\n\n" + LAB_NOTE,
        section="libs", homepage="https://github.com/NVIDIA/libnvidia-container",
        files={"/usr/lib/fleetlab/libnvidia-container.version": (f"{upstream}\n".encode(), 0o644)},
    )
    tools = Package(
        "libnvidia-container-tools", v, "NVIDIA container runtime library (command-line tools)",
        "nvidia-container-cli stand-in: --version and info.\n\n" + LAB_NOTE,
        homepage="https://github.com/NVIDIA/libnvidia-container",
        depends=[f"libnvidia-container1 (= {v})", "python3"],
        files={"/usr/bin/nvidia-container-cli":
               script("nvidia_container_cli.py", "libnvidia-container-tools")},
    )
    base = Package(
        "nvidia-container-toolkit-base", v, "NVIDIA Container Toolkit Base",
        "nvidia-ctk (runtime configure, cdi generate/list) and nvidia-container-runtime\n"
        "stand-ins.\n\n" + LAB_NOTE,
        homepage=TOOLKIT_HOME, depends=["python3"],
        files={
            "/usr/bin/nvidia-ctk": script("nvidia_ctk.py", "nvidia-container-toolkit-base"),
            "/usr/bin/nvidia-container-runtime":
                script("nvidia_container_runtime.py", "nvidia-container-toolkit-base"),
        },
    )
    toolkit = Package(
        "nvidia-container-toolkit", v, "NVIDIA Container toolkit",
        "nvidia-container-runtime-hook stand-in, which dockerd runs as a prestart hook\n"
        "for containers that request GPUs.\n\n" + LAB_NOTE,
        homepage=TOOLKIT_HOME,
        depends=[f"nvidia-container-toolkit-base (= {v})",
                 "libnvidia-container-tools (>= 1.17.8-1)",
                 "libnvidia-container-tools (<< 2.0.0)", "python3"],
        files={"/usr/bin/nvidia-container-runtime-hook":
               script("nvidia_container_runtime_hook.py", "nvidia-container-toolkit")},
    )
    for pkg in (lib, tools, base, toolkit):
        pkg.files[f"/usr/share/doc/{pkg.name}/README.fleetlab"] = (
            _readme(pkg.name, pkg.description.split("\n\n")[0]), 0o644)
    return [lib, tools, base, toolkit]


def driver_package(branch: str) -> Package:
    upstream = DRIVER_BRANCHES[branch]
    name = f"cuda-drivers-{branch}"

    def render(source: str) -> bytes:
        return render_standin(source, driver_version=upstream, package=name).encode()

    what = ("Simulated NVIDIA driver: nvidia-smi, and fleetlab-nvidia-kmod.service, which\n"
            "stands for the kernel loading the module at boot. The package enables that\n"
            "service but does not start it: nvidia-smi works after the next reboot.")
    return Package(
        name, deb_version(upstream), f"CUDA Driver meta-package, branch {branch}",
        what + "\n\n" + LAB_NOTE,
        homepage="https://developer.nvidia.com/cuda-downloads",
        depends=["python3"], provides=["cuda-drivers"], conflicts=["cuda-drivers"],
        replaces=["cuda-drivers"],
        files={
            "/usr/bin/nvidia-smi": (render("nvidia_smi.py"), 0o755),
            "/usr/lib/fleetlab/nvidia-kmod-load": (render("nvidia-kmod-load.sh"), 0o755),
            "/usr/lib/systemd/system/fleetlab-nvidia-kmod.service":
                (render("fleetlab-nvidia-kmod.service"), 0o644),
            "/usr/lib/fleetlab/libnvidia-ml.version": (f"{upstream}\n".encode(), 0o644),
            f"/usr/share/doc/{name}/README.fleetlab": (_readme(name, what), 0o644),
        },
        scripts={"postinst": render("cuda-drivers.postinst").decode(),
                 "postrm": render("cuda-drivers.postrm").decode()},
    )


def all_packages() -> dict[str, list[Package]]:
    """Packages per repository: {"toolkit": [...], "driver": [...]}."""
    toolkit = [p for v in TOOLKIT_VERSIONS for p in toolkit_packages(v)]
    drivers = [driver_package(b) for b in DRIVER_BRANCHES]
    return {"toolkit": toolkit, "driver": drivers}


def build_deb(pkg: Package, out_dir: Path) -> Path:
    """Build one .deb with dpkg-deb (files owned by root)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / pkg.filename
    with tempfile.TemporaryDirectory(prefix=f".{pkg.name}-", dir=out_dir) as tmp:
        root = Path(tmp) / "root"
        debian = root / "DEBIAN"
        debian.mkdir(parents=True)
        (debian / "control").write_text(pkg.control())
        for name, text in pkg.scripts.items():
            (debian / name).write_text(text)
            (debian / name).chmod(0o755)
        for path, (data, mode) in pkg.files.items():
            dest = root / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            dest.chmod(mode)
        for dirpath, dirnames, filenames in os.walk(root):
            os.chmod(dirpath, 0o755)  # noqa: S103 (a package's directory)
            for name in filenames + dirnames:
                os.utime(os.path.join(dirpath, name), (MTIME, MTIME), follow_symlinks=False)
            os.utime(dirpath, (MTIME, MTIME))
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(MTIME)}
        built = Path(tmp) / pkg.filename
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root),
                        str(built)], check=True, capture_output=True, text=True, env=env)
        shutil.move(str(built), target)
    return target

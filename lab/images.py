"""Lab images, built locally and rebuilt only when their recipe changes.

- the server image: a debootstrapped Debian 13 with systemd as PID 1, sshd and
  python3, and nothing else (no Docker, no NVIDIA software); its `uname` reports the
  kernel the host booted: the newest lab kernel package installed in /boot, else the
  machine's own (lab/recipes/host/fleetlab-booted-kernel, fleetlab-uname);
- the app base: a minimal Debian 13 with python3 only (no curl, no wget, like
  the official Ollama image), the base of the stand-in application images;
- the services image: the server image plus Debian's docker-registry and nginx,
  which serves the lab's image registry, apt repository and model registry;
- stand-ins under production names, pushed to the lab registry:
  `ollama/ollama:<tag>` (lab/ollama/ollama.py), `nginx:<tag>` (Debian's nginx),
  `redis:<tag>` (Debian's redis-server) and `fleetlab/chat-app:<tag>`
  (lab/app/chatapp.py, an application to run beside the fleet).

Every image carries the hash of its recipe as a label; a changed recipe gives a
new tag, so an old image is never mistaken for a current one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lab.engine import LabError, docker, image_exists

LAB_DIR = Path(__file__).resolve().parent
RECIPES = LAB_DIR / "recipes"
SUITE = "trixie"
HASH_LABEL = "fleetlab.recipe"


@dataclass(frozen=True)
class Debootstrap:
    """A Debian root made by debootstrap and imported as an image."""

    name: str
    packages: tuple[str, ...]
    files: dict[str, str] = field(default_factory=dict)  # recipe file -> path in root
    customize: str | None = None  # recipe script run in the root (chroot)
    config: tuple[str, ...] = ()  # docker import --change lines
    suite: str = SUITE  # the Debian release debootstrap installs

    def digest(self) -> str:
        h = hashlib.sha256()
        # the mirror too: it is the one the hosts' apt uses, so another one is another image
        h.update(repr((self.suite, debian_mirror(), self.name, self.packages,
                       sorted(self.files.items()), self.customize, self.config)).encode())
        for src in [*self.files, *([self.customize] if self.customize else [])]:
            h.update((RECIPES / src).read_bytes())
        return h.hexdigest()[:12]

    @property
    def tag(self) -> str:
        return f"fleetlab/{self.name}:{self.suite}-{self.digest()}"


SERVER = Debootstrap(
    name="server",
    packages=("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "curl",
              "ca-certificates", "iproute2", "procps", "sudo", "gnupg", "kmod",
              "apt-transport-https"),
    files={
        "host/fleetlab-uptime": "/usr/local/sbin/fleetlab-uptime",
        "host/fleetlab-uptime.service": "/etc/systemd/system/fleetlab-uptime.service",
        "host/fleetlab-sshd-keygen.service": "/etc/systemd/system/fleetlab-sshd-keygen.service",
        "host/sshd-fleetlab.conf": "/etc/ssh/sshd_config.d/fleetlab.conf",
        "host/fleetlab-booted-kernel": "/usr/local/sbin/fleetlab-booted-kernel",
        "host/fleetlab-booted-kernel.service":
            "/etc/systemd/system/fleetlab-booted-kernel.service",
        "host/fleetlab-uname": "/usr/local/lib/fleetlab/uname",  # customize.sh installs it
        "host/fleetlab-kmod": "/usr/local/sbin/modprobe",  # and links modinfo to it
    },
    customize="host/customize.sh",
    # The stop signal systemd wants (SIGRTMIN+3) is set on the container: import can't.
    config=('ENV container=docker', 'CMD ["/sbin/init"]'),
)

# Debian 12 lab hosts: the driver steps against NVIDIA's debian12 repository (Docker's
# Compose v2 is not in bookworm's archive: the deploy refuses it there, by design)
SERVER_SUITES = {"trixie": SERVER, "bookworm": dataclasses.replace(SERVER, suite="bookworm")}

APP_BASE = Debootstrap(
    name="appbase",
    packages=("python3", "ca-certificates"),
    customize="app/customize.sh",
    config=('CMD ["/bin/bash"]',),
)


MIRROR_ENV = "FLEETLAB_DEBIAN_MIRROR"
DEBIAN_SUITES = ("bookworm", "trixie", "forky", "sid", "stable", "testing", "unstable")


def os_release_field(os_release: str, key: str) -> str:
    """KEY's value in os-release(5) text ('' when absent), quotes removed."""
    m = re.search(rf"^{key}=(.*)$", os_release, re.M)
    return m.group(1).strip().strip("'\"") if m else ""


def _apt_entries(sources: str) -> list[tuple[str, list[str], list[str]]]:
    """(URI, suites, components) of each binary entry in apt sources text: one-line
    sources.list entries and deb822 .sources paragraphs, in the order given."""
    entries = []
    for block in re.split(r"\n\s*\n", sources):
        fields = dict(re.findall(r"^([A-Za-z][\w-]*):[ \t]*(.*)$", block, re.M))
        if "URIs" in fields:
            if "deb" not in fields.get("Types", "deb").split() \
                    or fields.get("Enabled", "yes").strip().lower() == "no":
                continue
            suites, components = fields.get("Suites", "").split(), \
                fields.get("Components", "").split()
            entries += [(uri, suites, components) for uri in fields["URIs"].split()]
            continue
        for line in block.splitlines():
            m = re.match(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)(.*)$", line)
            if m:
                entries.append((m.group(1), [m.group(2)], m.group(3).split("#")[0].split()))
    return entries


def choose_debian_mirror(os_release: str, apt_sources: str, override: str | None = None) -> str:
    """The Debian mirror debootstrap and the lab hosts' apt use, read at run time.

    OVERRIDE ($FLEETLAB_DEBIAN_MIRROR) when set; else the mirror this machine's own apt
    uses for Debian (APT_SOURCES: its sources.list and .sources text): on a Debian
    machine its release's main archive; on another (Ubuntu) any Debian suite it has. No
    mirror is written into the code: an Ubuntu machine without a Debian source is told to
    set the knob.
    """
    if override and override.strip():
        return override.strip().rstrip("/")
    debian = os_release_field(os_release, "ID") == "debian"
    codename = os_release_field(os_release, "VERSION_CODENAME") if debian else ""
    candidates = [(uri.rstrip("/"), suites) for uri, suites, components in
                  _apt_entries(apt_sources)
                  if "main" in components and "security" not in uri
                  and re.match(r"^(https?://|file:/)", uri)
                  and (debian or any(s.split("-")[0] in DEBIAN_SUITES for s in suites))]
    for uri, suites in candidates:  # an entry for this release first: not a third party's
        if codename and any(s.split("-")[0] == codename for s in suites):
            return uri
    if candidates:
        return candidates[0][0]
    where = "this machine's apt sources" if debian else \
        f"this {os_release_field(os_release, 'ID') or 'unknown'} machine's apt sources"
    raise LabError(f"{MIRROR_ENV}: no Debian mirror in {where}; set {MIRROR_ENV} to a Debian "
                   "mirror's URL (the lab's hosts are Debian 13, built with debootstrap)")


def read_apt_sources(etc: Path = Path("/etc/apt")) -> str:
    """This machine's apt sources, in apt's order: sources.list, then sources.list.d; a
    `mirror+file:PATH` URI (Debian's cloud images) as the first mirror PATH lists."""
    parts = [etc / "sources.list", *sorted(
        p for p in (etc / "sources.list.d").glob("*") if p.suffix in (".list", ".sources"))]
    text = "\n\n".join(p.read_text(errors="replace") for p in parts if p.is_file())

    def first_mirror(m: re.Match) -> str:
        path = Path(m.group(1))
        lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
        return next((line.split()[0] for line in lines
                     if line.strip() and not line.lstrip().startswith("#")), m.group(0))

    return re.sub(r"mirror\+file:(?://)?(/[^\s\]]+)", first_mirror, text)


def debian_mirror() -> str:
    """The Debian mirror of this machine: see choose_debian_mirror (read at run time)."""
    os_release = next((p.read_text() for p in (Path("/etc/os-release"),
                                               Path("/usr/lib/os-release")) if p.is_file()), "")
    return choose_debian_mirror(os_release, read_apt_sources(), os.environ.get(MIRROR_ENV))


def ensure_debootstrap_image(recipe: Debootstrap, log=print) -> str:
    """Build RECIPE's image unless an image of the same recipe exists; return its tag."""
    tag = recipe.tag
    if image_exists(tag):
        return tag
    if shutil.which("debootstrap") is None:
        raise LabError("debootstrap: command not found (`make machine` installs it)")
    mirror = debian_mirror()
    log(f"building {tag} with debootstrap (once per recipe, about a minute)")
    with tempfile.TemporaryDirectory(prefix=f"fleetlab-{recipe.name}-") as tmp:
        root = Path(tmp) / "root"
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(recipe.packages)}",
               recipe.suite, str(root), mirror]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            raise LabError(f"debootstrap {recipe.suite} from {mirror} failed: "
                           f"{' / '.join(tail)}")
        for src, dest in recipe.files.items():
            target = root / dest.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(RECIPES / src, target)
        (root / "etc/apt/sources.list").write_text(
            f"deb {mirror} {recipe.suite} main\ndeb {mirror} {recipe.suite}-updates main\n")
        if recipe.customize:
            script = root / "tmp/customize.sh"
            shutil.copy2(RECIPES / recipe.customize, script)
            proc = subprocess.run(["chroot", str(root), "/bin/sh", "/tmp/customize.sh"],
                                  capture_output=True, text=True, timeout=300)
            script.unlink()
            if proc.returncode != 0:
                raise LabError(f"customizing {recipe.name} failed: {proc.stderr.strip()[-300:]}")
        changes: list[str] = []
        for line in (*recipe.config, f"LABEL {HASH_LABEL}={recipe.digest()}"):
            changes += ["-c", line]
        tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."],
                               stdout=subprocess.PIPE)
        imp = subprocess.run(["docker", "import", *changes, "-", tag], stdin=tar.stdout,
                             capture_output=True, timeout=600)
        tar.stdout.close()  # so tar gets SIGPIPE rather than blocking when import failed
        tar.wait()
        if imp.returncode != 0:
            raise LabError(f"docker import {tag}: {imp.stderr.decode().strip()}")
    return tag


def build_image(tag: str, base: str, files: dict[str, Path | bytes],
                dockerfile: str, log=print) -> str:
    """`docker build` TAG from DOCKERFILE (with {base} filled in) unless it exists.

    The tag given is the lab-internal one; its content hash goes into a label so a
    changed recipe is rebuilt.
    """
    h = hashlib.sha256(base.encode() + dockerfile.encode())
    for name in sorted(files):
        data = files[name]
        h.update(name.encode() + (data if isinstance(data, bytes) else data.read_bytes()))
    digest = h.hexdigest()[:12]
    from lab.engine import image_label  # local: keeps the module's public surface small

    if image_label(tag, HASH_LABEL) == digest:
        return tag
    log(f"building {tag}")
    with tempfile.TemporaryDirectory(prefix="fleetlab-build-") as tmp:
        ctx = Path(tmp)
        for name, data in files.items():
            target = ctx / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, bytes):
                target.write_bytes(data)
            else:
                shutil.copy2(data, target)
        (ctx / "Dockerfile").write_text(
            dockerfile.format(base=base) + f"\nLABEL {HASH_LABEL}={digest}\n")
        docker("build", "-q", "-t", tag, str(ctx), env={"DOCKER_BUILDKIT": "0"}, timeout=900)
    return tag


def build_redis_image(tag: str, base: str, log=print) -> str:
    """The stand-in `redis:TAG` (Debian's redis-server, official layout); local tag."""
    recipe = RECIPES / "redis"
    return build_image(f"fleetlab/redis:{tag}", base,
                       {"docker-entrypoint.sh": recipe / "docker-entrypoint.sh"},
                       (recipe / "Dockerfile").read_text(), log=log)


def build_chat_app_image(tag: str, base: str, log=print) -> str:
    """The stand-in application `fleetlab/chat-app:TAG` (lab/app/chatapp.py); local tag."""
    return build_image(f"fleetlab/chat-app:{tag}", base,
                       {"chatapp.py": LAB_DIR / "app" / "chatapp.py"},
                       (RECIPES / "chat-app" / "Dockerfile").read_text(), log=log)

"""Every knob of the deploy, declared once: name, type, default, one-line meaning.

Inventory data (host, group, `all`, `--data`) is validated here for every host
before any operation runs on any host. Problems come out as `host: key: problem`
lines; the README's knob table is generated from these declarations
(`python -m ollama_fleet.tasks.kit.settings --markdown`).
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import sys
import types
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ollama_fleet.tasks.kit.ollama_builds import image_release

# Data keys that belong to pyinfra itself (connectors, global operation arguments).
PYINFRA_KEY = re.compile(r"^(ssh_|_)")

Topology = Literal["per_gpu", "shared", "cpu"]

# Where an Ollama instance may listen without ollama_bind_unsafe: loopback, and the private
# ranges (a LAN's own, or a Docker bridge's) that the internet does not route to.
SAFE_BIND = tuple(ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
# docker0's address, which host.docker.internal (host-gateway) names in every container,
# unless daemon.json's `bip` sets another; it exists whenever dockerd runs.
DOCKER_BRIDGE_GATEWAY = "172.17.0.1"


# -- value grammars: what a knob's text may be, checked before it reaches a shell, a
# Compose file or an nginx config. ASCII only everywhere (no look-alikes, no controls).

def _pattern(regex: str, what: str, empty: bool = False) -> AfterValidator:
    """Text that REGEX matches whole (or, with EMPTY, nothing at all)."""
    compiled = re.compile(regex, re.ASCII)

    def check(value: str) -> str:
        if not (empty and value == "") and not compiled.fullmatch(value):
            raise ValueError(f"{value!r} is not {what}")
        return value

    return AfterValidator(check)


def _text(value: str) -> str:
    """Printable ASCII, no newline: anything else in a knob is a mistake or an attack."""
    if not re.fullmatch(r"[ -~]*", value, re.ASCII):
        raise ValueError(f"{value!r} has characters other than printable ASCII")
    return value


# Digits, dots and colons only: Python also reads a zone (`fe80::1%eth0`), whose text may be
# anything, `;` and `}` included, and would land in nginx's allow lines as written.
_IP_TEXT = re.compile(r"[0-9A-Fa-f.:]+", re.ASCII)


def _address(value: str) -> str:
    if not is_ip(value):
        raise ValueError(f"{value!r} is not an IP address like 127.0.0.1 or ::1 (no zone)")
    if isinstance(ip := ipaddress.ip_address(value), ipaddress.IPv6Address) and ip.ipv4_mapped:
        raise ValueError(f"{value!r} is an IPv4 address written as IPv6; write "
                         f"{ip.ipv4_mapped}")
    return value


def _network(value: str) -> str:
    address, _, _ = value.partition("/")
    try:
        if not re.fullmatch(r"[0-9A-Fa-f.:]+(/\d{1,3})?", value, re.ASCII):
            raise ValueError
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a network like 10.0.0.0/24") from None
    if network.network_address != ipaddress.ip_address(address):  # nginx would allow it all
        raise ValueError(f"{value!r} has host bits set: it means all of {network}; write "
                         f"{network}, or {address} alone for one address")
    return value


def _abs_path(value: str) -> str:
    if not re.fullmatch(r"(/[A-Za-z0-9_.@+-]+)+/?", value, re.ASCII) or \
            any(part in (".", "..") for part in value.split("/")):
        raise ValueError(f"{value!r} is not an absolute path (letters, digits, _ . @ + -; no "
                         "'..')")
    return value


# Host directories no store, stack or app volume may be: the directory itself (mounted or
# owned, it hands a container or the deploy the system's files) ...
SYSTEM_DIRS = frozenset({
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32",
    "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/snap", "/srv", "/sys",
    "/usr", "/usr/bin", "/usr/lib", "/usr/local", "/usr/local/bin", "/usr/sbin", "/usr/share",
    "/var", "/var/cache", "/var/lib", "/var/log", "/var/mail", "/var/opt", "/var/run",
    "/var/spool",
    "/tmp", "/var/tmp"})  # noqa: S108 (names them to refuse them)
# ... and these with everything in them: the kernel's, the runtime's sockets (the Docker
# socket is root on the host), Docker's and containerd's own state, root's home.
SYSTEM_TREES = ("/proc", "/sys", "/dev", "/run", "/var/run", "/boot", "/var/lib/docker",
                "/var/lib/containerd", "/etc/docker", "/root")
# An app may read these (certificates, time zone) but never write them: written, they are
# the host's programs and configuration (cron, sudoers, systemd units).
READ_ONLY_TREES = ("/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
                   "/var/spool")


def _inside(path: str, trees: tuple[str, ...]) -> bool:
    return any(path == tree or path.startswith(tree + "/") for tree in trees)


def system_path(path: str) -> bool:
    """True for a host path that must not be a store, a stack directory or a volume."""
    path = path.rstrip("/") or "/"
    return path in SYSTEM_DIRS or _inside(path, SYSTEM_TREES)


# Native Ollama's own store (its Linux installer's `ollama` user lives there): a store the
# deploy may take over, though it is under /usr.
NATIVE_STORE = "/usr/share/ollama"


def _own_directory(use: str) -> AfterValidator:
    """An absolute path that is not a system directory, nor inside the host's programs or
    configuration (written there, a container's root would write /etc/cron.d); USE says
    what the deploy does with it, for the message."""

    def check(value: str) -> str:
        path = value.rstrip("/") or "/"
        if value and (system_path(value) or (_inside(path, READ_ONLY_TREES)
                                             and not _inside(path, (NATIVE_STORE,)))):
            raise ValueError(f"{value!r} is a system directory ({use}); give one of its own, "
                             "like /srv/ollama")
        return value

    return AfterValidator(check)


def _model_name(value: str) -> str:
    from ollama_fleet.tasks.kit.modelname import parse

    parse(value)  # ValueError naming the bad part
    return value


Text = Annotated[str, AfterValidator(_text)]
Address = Annotated[str, AfterValidator(_address)]
Network = Annotated[str, AfterValidator(_network)]
AbsPath = Annotated[str, AfterValidator(_abs_path)]
StackDir = Annotated[AbsPath, _own_directory("the deploy would own it: mode 755, its files in "
                                             "it")]
StorePath = Annotated[str, AfterValidator(lambda v: v and _abs_path(v)), _own_directory(
    "every Ollama instance would mount it read-write")]
ModelRef = Annotated[str, AfterValidator(_model_name)]
# http(s)://host[:port][/path]; the scheme is checked against fleet_insecure_http.
# (a `%` only as an escape of two hex digits, a port up to 65535: dockerd's own URL parser
# refuses the rest at its start, after `dockerd --validate` has passed them)
_URL = (r"https?://[A-Za-z0-9.-]+(:(6553[0-5]|655[0-2]\d|65[0-4]\d\d|6[0-4]\d{3}|[1-5]\d{4}"
        r"|[1-9]\d{0,3}))?(/([A-Za-z0-9._~+/-]|%[0-9A-Fa-f]{2})*)?",
        "an http(s) URL (host, optional port 1-65535 and path, `%` only before two hex digits; "
        "no spaces, quotes or shell characters)")
Url = Annotated[str, _pattern(*_URL), AfterValidator(lambda url: url.rstrip("/"))]
UrlOrEmpty = Annotated[str, _pattern(*_URL, empty=True), AfterValidator(lambda u: u.rstrip("/"))]
# A URL with `{distro}` in it, which the deploy fills in (e.g. debian12)
UrlTemplate = Annotated[str, _pattern(
    r"https?://[A-Za-z0-9.-]+(:\d{1,5})?(/([A-Za-z0-9._~%+-]|\{distro\})*)*",
    "an http(s) URL (no spaces, quotes or shell characters; {distro} the only braces)"),
    AfterValidator(lambda url: url.rstrip("/"))]
URL_KNOBS = ("docker_repo_url", "docker_registry_mirrors", "nvidia_driver_repo_url",
             "nvidia_driver_gpgkey_url", "nvidia_toolkit_repo_url", "nvidia_toolkit_gpgkey_url",
             "ollama_registry", "ollama_registry_mirror")
Size = Annotated[str, _pattern(r"[1-9]\d{0,12}[bkmgBKMG]?", "a size like 512m or 64g")]


def _memory_limit(value: str) -> str:
    """Docker refuses a container a limit under 6 MiB, at its start: after the deploy has
    replaced the running one."""
    unit = value[-1:].lower() if value[-1:].isalpha() else "b"
    if value and int(value.rstrip("bkmgBKMG")) * 1024 ** "bkmg".index(unit) < 6 * 1024 ** 2:
        raise ValueError(f"{value!r} is under 6m, the least memory Docker starts a container "
                         "with")
    return value


MemoryLimit = Annotated[str, _pattern(r"[1-9]\d{0,12}[bkmgBKMG]?", "a size like 512m or 64g",
                                      empty=True), AfterValidator(_memory_limit)]
EnvName = Annotated[str, _pattern(r"[A-Za-z_][A-Za-z0-9_]{0,127}",
                                  "an environment variable name (letters, digits, _)")]
ImageRef = Annotated[str, _pattern(
    r"[a-z0-9][a-z0-9._-]*(:\d{1,5})?(/[a-z0-9][a-z0-9._-]*)*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
    r"(@sha256:[0-9a-f]{64})?", "an image pinned by tag (name:tag)")]
ServiceName = Annotated[str, _pattern(r"[a-z0-9][a-z0-9_-]{0,62}", "a service name")]
_GO_UNITS = {"ns": 1, "us": 10 ** 3, "ms": 10 ** 6, "s": 10 ** 9, "m": 60 * 10 ** 9,
             "h": 3600 * 10 ** 9}


def _go_duration(value: str) -> str:
    """Past 2^63 ns Go's parser fails and Ollama quietly takes its default (5m) instead."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", value) or [(value.lstrip("-"), "s")]
    if sum(Fraction(number) * _GO_UNITS[unit] for number, unit in parts) >= 2 ** 63:
        raise ValueError(f"{value!r} is longer than Go's durations reach (about 290 years); "
                         "-1 keeps a model loaded for good")
    return value


# Go's time.ParseDuration (e.g. 5m, 1h30m, -1s) or a number of seconds (-1: forever).
GoDuration = Annotated[str, _pattern(r"-?(\d+(\.\d+)?(ns|us|ms|s|m|h))+|-?\d+",
                                     "a duration like 5m, 1h30m or -1"),
                       AfterValidator(_go_duration)]
Version = Annotated[str, _pattern(r"\d{1,4}(\.\d{1,4}){1,3}(~rc\.\d{1,3})?",
                                  "a version like 1.17.8")]


def _nginx_size(value: str) -> str:
    if int(value.rstrip("kmg")) == 0:
        raise ValueError(f"{value!r} turns the cap off to nginx; give a size like 100m")
    return value


NginxSize = Annotated[str, _pattern(r"\d{1,9}[kmg]?", "a size like 100m"),
                      AfterValidator(_nginx_size)]
NginxRate = Annotated[str, _pattern(r"|[1-9]\d{0,6}r/[sm]", "a rate like 10r/s or 600r/m")]
RedisSize = Annotated[str, _pattern(r"[1-9]\d{0,12}(b|kb|mb|gb|k|m|g)?", "a Redis size like 256mb")]
RedisPolicy = Literal["noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random",
                      "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"]


def nginx_ms(value: str) -> int:
    """An nginx time (`600s`, `10m`, `1h`, `500ms`, `600`) in milliseconds."""
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h)?", value).groups()  # type: ignore[union-attr]
    return int(number) * {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}[unit or "s"]


def nginx_seconds(value: str) -> int:
    """An NginxTime in whole seconds, rounded up (`600s`, `10m`, `1h`, `500ms`, `600`)."""
    return -(-nginx_ms(value) // 1000)


def _nginx_time(value: str) -> str:
    if not 1000 <= nginx_ms(value) <= 3_600_000:
        raise ValueError(f"{value!r} is not from 1s to 1h (0 is no time at all to nginx)")
    return value


NginxTime = Annotated[str, _pattern(r"\d{1,9}(ms|s|m|h)?", "an nginx time like 600s"),
                      AfterValidator(_nginx_time)]


class SecretRef(BaseModel):
    """Where a secret comes from on the operator's machine; never from the repository."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: Text | None = None
    env: EnvName | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.file is None) == (self.env is None):
            raise ValueError("give exactly one of `file` or `env`")
        return self


class AppService(BaseModel):
    """An application container beside Ollama (see the README's app stack example)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: ImageRef
    command: list[Text] | None = None
    environment: dict[EnvName, Text] = Field(default_factory=dict)
    secrets: dict[EnvName, SecretRef] = Field(default_factory=dict)
    ports: list[str] = Field(default_factory=list)
    volumes: list[Annotated[str, _pattern(
        r"([A-Za-z0-9][A-Za-z0-9_.-]*|(/[A-Za-z0-9_.@+-]+)+):(/[A-Za-z0-9_.@+-]+)+(:ro|:rw)?",
        "a volume like NAME:/path or /host/path:/path[:ro]")]] = Field(default_factory=list)
    healthcheck: list[Text] | None = None
    memory_limit: MemoryLimit = ""
    cpus: float | None = Field(None, gt=0, le=1024)
    depends_on: list[ServiceName] = Field(default_factory=list)
    uses_ollama: bool = True
    ollama_model: ModelRef | None = None
    ollama_instance: int | None = None

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: list[str]) -> list[str]:
        for port in value:
            parts = port.split(":")
            if not re.fullmatch(r"(\d{1,3}(\.\d{1,3}){3}:)?\d{1,5}:\d{1,5}", port, re.ASCII) \
                    or not all(0 < int(p) < 65536 for p in parts[-2:]) \
                    or (len(parts) == 3 and not is_ip(parts[0])):
                raise ValueError(f"{port!r} is not HOST_PORT:CONTAINER_PORT "
                                 "(optionally ADDRESS:HOST_PORT:CONTAINER_PORT)")
        return value

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, value: list[str]) -> list[str]:
        for volume in value:
            if any(part in (".", "..") for part in re.split(r"[/:]", volume)):
                raise ValueError(f"{volume!r}: no '.' or '..' in volume paths")
            source = volume.split(":")[0].rstrip("/")
            if not source.startswith("/"):
                continue  # a named volume: Docker's own directory for it
            if system_path(source):
                raise ValueError(f"{volume!r}: {source} is a system directory or the "
                                 "runtime's (the Docker socket is root on the host); mount a "
                                 "directory of the app's own")
            if _inside(source, READ_ONLY_TREES) and not volume.endswith(":ro"):
                raise ValueError(f"{volume!r}: {source} holds the host's programs or "
                                 "configuration; mount it read-only (:ro)")
        return value

    def published(self) -> list[tuple[str, int, int]]:
        """(address, host port, container port); loopback unless an address is given."""
        result = []
        for port in self.ports:
            parts = port.split(":")
            address = parts[0] if len(parts) == 3 else "127.0.0.1"
            result.append((address, int(parts[-2]), int(parts[-1])))
        return result


class Settings(BaseModel):
    """The deploy's knobs for one host. Defaults are what a fleet usually starts from."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)

    # -- the server --------------------------------------------------------
    gpu_count: int = Field(0, ge=0, le=16, description=(
        "NVIDIA GPUs the server has; 0 for a CPU-only server (skips all NVIDIA work)"))

    fleet_insecure_http: bool = Field(False, description=(
        "allow plain `http://` in the repository, registry and mirror URLs (a mirror on a "
        "trusted LAN); apt still checks signatures and models their sha256. Default: "
        "https only"))

    # -- Docker engine -----------------------------------------------------
    docker_package_source: Literal["docker", "distribution"] = Field("docker", description=(
        "`docker`: Docker's own apt repository (docker-ce); `distribution`: the OS's docker.io"))
    docker_repo_url: Url = Field("https://download.docker.com/linux", description=(
        "base of Docker's apt repository (the OS id and suite are appended)"))
    docker_registry_mirrors: list[Url] = Field(default_factory=list, description=(
        "registry mirrors for Docker Hub, written to daemon.json"))
    docker_log_max_size: Size = Field("50m", description=(
        "json-file log rotation: size of one container log file"))
    docker_log_max_file: int = Field(3, ge=1, le=100, description=(
        "json-file log rotation: files kept per container"))
    docker_live_restore: bool = Field(True, description=(
        "daemon.json live-restore: containers (Ollama, nginx) keep serving while dockerd "
        "restarts, as when a deploy changes daemon.json; off only for Swarm mode"))

    # -- NVIDIA driver -----------------------------------------------------
    nvidia_driver_branch: int | None = Field(None, ge=550, le=999, description=(
        "driver branch to install (Ollama needs 550 or newer); unset: the distribution's "
        "own (580, the long-term branch; 590 on Debian 13, whose NVIDIA repository "
        "carries 590 and later only)"))
    nvidia_driver_flavour: Literal["auto", "open", "proprietary"] = Field("auto", description=(
        "kernel modules: open or proprietary; auto: open from branch 560 on (NVIDIA's "
        "default) unless a GPU older than Turing needs the proprietary ones"))
    nvidia_driver_ubuntu_modules: Literal["precompiled", "dkms"] = Field(
        "precompiled", description=(
            "Ubuntu: Canonical's signed precompiled modules for the running kernel (load "
            "under Secure Boot, no headers), or DKMS built from the headers"))
    nvidia_driver_repo_url: UrlTemplate = Field(
        "https://developer.download.nvidia.com/compute/cuda/repos/{distro}/x86_64",
        description=("NVIDIA's CUDA apt repository for Debian; `{distro}` becomes e.g. "
                     "debian12 (Ubuntu uses Canonical's packages)"))
    nvidia_driver_gpgkey_url: UrlOrEmpty = Field("", description=(
        "key of that repository; empty: NVIDIA's key for the distribution "
        "(`<repo>/3bf863cc.pub` for debian12, `<repo>/8793F200.pub` for debian13)"))
    nvidia_driver_allow_reboot: bool = Field(True, description=(
        "reboot after a new driver is installed; if false the run stops and says so"))
    nvidia_driver_reboot_timeout: int = Field(1200, ge=60, le=7200, description=(
        "seconds a rebooting GPU host may take to answer SSH again (an HGX board can "
        "take over 10 minutes to POST)"))
    nvidia_driver_reboot_all_at_once: bool = Field(False, description=(
        "a host whose driver serves already (a branch change) reboots one at a time; "
        "true: all such hosts at once. Hosts with no working driver reboot together"))
    nvidia_driver_mok_key: Text = Field("", description=(
        "Secure Boot with DKMS modules: the private key (PEM) on the operator's machine of "
        "a MOK already enrolled on the hosts; installed where DKMS signs with it before "
        "the driver. Empty: a DKMS host with Secure Boot on stops before the driver "
        "unless its own DKMS key is enrolled"))
    nvidia_driver_mok_cert: Text = Field("", description=(
        "the certificate (DER or PEM) of nvidia_driver_mok_key, on the operator's machine; "
        "the deploy checks with `mokutil --test-key` that it is enrolled"))

    @field_validator("nvidia_driver_mok_cert")
    @classmethod
    def _mok_pair(cls, value: str, info: ValidationInfo) -> str:
        if bool(value) != bool(info.data.get("nvidia_driver_mok_key")):
            raise ValueError("nvidia_driver_mok_key and nvidia_driver_mok_cert go together: "
                             "give both (a key enrolled in MOK and its certificate) or none")
        return value

    nvidia_fabricmanager: Literal["auto", "always", "never"] = Field("auto", description=(
        "NVIDIA Fabric Manager, of the driver's version: auto installs and runs it where "
        "the host has NVSwitch devices (HGX/DGX boards), read from its PCI bus"))
    nvidia_persistence_mode: bool = Field(True, description=(
        "keep the driver loaded between jobs: nvidia-persistenced enabled and running"))

    # -- NVIDIA Container Toolkit ------------------------------------------
    nvidia_toolkit_repo_url: Url = Field("https://nvidia.github.io/libnvidia-container",
                                         description=("NVIDIA Container Toolkit repository "
                                                      "base (mirrors, air-gapped fleets)"))
    nvidia_toolkit_gpgkey_url: UrlOrEmpty = Field("", description=(
        "key of that repository; empty: `<repo>/gpgkey`"))
    nvidia_toolkit_version: Version = Field("1.19.1", description=(
        "toolkit version; its four packages are pinned together to `<version>-1`. From "
        "1.18 the nvidia runtime injects GPUs so that a `systemctl daemon-reload` leaves "
        "running instances their GPUs; with 1.17 the GPU guard restarts those it cuts off"))
    nvidia_toolkit_default_runtime: bool = Field(False, description=(
        "make nvidia Docker's default runtime (--set-as-default)"))
    nvidia_toolkit_cdi: bool = Field(False, description=(
        "enable CDI in Docker and generate /var/run/cdi/nvidia.yaml"))
    nvidia_gpu_ready_timeout: int = Field(300, ge=30, le=3600, description=(
        "seconds Docker waits at boot for the GPU stack (nvidia-smi lists every GPU, "
        "Fabric Manager done with the fabric) before it starts the instances anyway"))

    # The health agent on every gpu_servers host (tasks/steps/health.py)
    health_heal: bool = Field(True, description=(
        "the health agent heals what it takes out (restarts, recreates, GPU resets, "
        "Fabric Manager restarts); false: it detects and evicts only"))
    health_allow_reboot: bool = Field(False, description=(
        "the health agent may reboot a host whose fault only a reboot clears (a GPU off "
        "the bus); off: it keeps the host's sick GPUs out and reports it"))
    health_max_unavailable: int = Field(1, ge=0, le=1000, description=(
        "at most this many hosts out of rotation at the front doors (drained, held out by "
        "a roll, evicted) when the health agent reboots one; 0: it never reboots"))
    health_interval: int = Field(1, ge=1, le=30, description=(
        "seconds between the health agent's checks"))
    health_return_after: int = Field(3, ge=1, le=100, description=(
        "good checks in a row before an instance the agent took out may return (after the "
        "GPU proof)"))

    nvidia_exporter: bool = Field(False, description=(
        "run NVIDIA's DCGM exporter (GPU metrics for Prometheus) on each GPU server"))
    nvidia_exporter_image: ImageRef = Field(
        "nvcr.io/nvidia/k8s/dcgm-exporter:4.4.2-4.7.1-ubuntu22.04",
        description="DCGM exporter image, pinned by tag")
    nvidia_exporter_listen: Text = Field("127.0.0.1:9400", description=(
        "address:port the exporter's /metrics listens on (loopback: scrape through a tunnel "
        "or an agent on the host)"))

    # -- the Ollama stack --------------------------------------------------
    ollama_topology: Topology | None = Field(None, description=(
        "`per_gpu`: one instance per GPU; `shared`: one instance with all GPUs; `cpu`: no "
        "GPU. Unset: per_gpu with GPUs, cpu without"))
    ollama_gpus: list[int] | None = Field(None, description=(
        "GPU indexes the stack uses (default: all of them)"))
    ollama_image: ImageRef = Field("ollama/ollama:0.32.15", description=(
        "Ollama image, pinned by tag; the deploy refuses one with no CUDA build for the "
        "host's GPUs (it would serve from the CPU)"))
    ollama_allow_cloud: bool = Field(False, description=(
        "let prompts leave the fleet: Ollama's cloud models (`:cloud`, `-cloud` names) and "
        "its web search/fetch endpoints, which call ollama.com. False (the default): every "
        "instance runs with OLLAMA_NO_CLOUD=1 and the front doors refuse both"))
    ollama_base_port: int = Field(11434, ge=1024, le=65000, description=(
        "port of the first instance; instance N listens on base + N"))
    ollama_bind_unsafe: bool = Field(False, description=(
        "let ollama_bind_address be a wildcard (0.0.0.0, ::) or outside loopback and the "
        "private ranges: every instance's whole API (pull, delete, create included) then "
        "answers whoever reaches that address, past nginx and its keys (the deploy has no "
        "firewall). Default: such an address is refused"))
    ollama_bind_address: Address = Field("127.0.0.1", description=(
        "address each Ollama instance listens on (host networking); loopback keeps them "
        "behind nginx. For app services pinned to an instance: the Docker bridge's gateway "
        f"({DOCKER_BRIDGE_GATEWAY} unless daemon.json sets another)"))
    ollama_models: list[ModelRef] = Field(default_factory=list, description=(
        "models every instance has (pulled when missing), e.g. `llama3.2:1b`"))
    ollama_warm_models: list[ModelRef] = Field(default_factory=list, description=(
        "models kept loaded on every instance (keep_alive -1), loaded after every start "
        "and recreate before the host serves again; each one of ollama_models"))
    ollama_keep_alive: GoDuration | None = Field(None, description=(
        "OLLAMA_KEEP_ALIVE: how long a model stays loaded (-1: forever); unset: Ollama's own "
        "default (5m)"))
    ollama_num_parallel: int | None = Field(None, ge=1, le=64, description=(
        "OLLAMA_NUM_PARALLEL: concurrent requests per loaded model; unset: Ollama's own "
        "default, which depends on its version and the GPU's memory"))
    ollama_max_loaded_models: int = Field(0, ge=0, le=64, description=(
        "OLLAMA_MAX_LOADED_MODELS (0: Ollama's default, 3 x GPUs)"))
    ollama_max_queue: int | None = Field(None, ge=1, le=1_000_000, description=(
        "OLLAMA_MAX_QUEUE: queued requests before Ollama answers 503; unset: Ollama's own "
        "default (512)"))
    ollama_environment: dict[EnvName, Text] = Field(default_factory=dict, description=(
        "extra environment for every instance (OLLAMA_* settings not listed here)"))
    ollama_models_path: StorePath = Field("", description=(
        "host directory for the model store; empty: the named volume `ollama-models`"))
    ollama_memory_limit: MemoryLimit = Field("", description=(
        "memory limit per instance (Compose syntax, e.g. 64g); empty: none"))
    ollama_stack_dir: StackDir = Field("/opt/ollama", description=(
        "where the Compose project and nginx config live on the host"))
    ollama_registry: Url = Field("https://registry.ollama.ai", description=(
        "where the deploy checks, before any pull, that Ollama's default registry knows "
        "every model; Ollama itself always pulls from registry.ollama.ai and has no "
        "setting to change that (only the lab points this at its stand-in registry)"))
    ollama_registry_mirror: Url | None = Field(None, description=(
        "an operator's mirror of registry.ollama.ai (the same /v2/ API) for fleets that "
        "cannot reach it: models of the default registry are checked there and the first "
        "host that needs one gets it from there through the deploy's own verified "
        "fetcher (Ollama lists it without pulling); the others copy it over the LAN"))
    ollama_fanout: bool = Field(True, description=(
        "models cross the internet once per fleet: one host pulls, the others copy its "
        "verified blobs over the LAN; false: every host pulls from the registry"))
    ollama_fanout_port: int = Field(11380, ge=1024, le=65535, description=(
        "port the host's nginx serves its verified model store on, to fleet peers only"))
    ollama_fanout_rate: Text = Field("", description=(
        "bandwidth per peer download (nginx limit_rate, e.g. 100m); empty: unlimited"))
    ollama_fanout_allow: list[Network] = Field(default_factory=list, description=(
        "networks (CIDR) that may copy models, besides the gpu_servers addresses that are IPs"))
    ollama_read_only: bool = Field(True, description=(
        "run Ollama and nginx with a read-only root filesystem (tmpfs for /tmp); all "
        "capabilities are dropped from Ollama either way"))
    ollama_health_timeout: int = Field(300, ge=10, le=3600, description=(
        "seconds a deploy waits for every instance to report healthy before failing the "
        "host (the bound for a slow start; unhealthy, exited or looping is called at once)"))
    ollama_health_start_period: int = Field(30, ge=5, le=600, description=(
        "seconds Docker gives a new instance before failed healthchecks count (then 3 "
        "failures 10 s apart make it unhealthy and fail the deploy)"))

    # -- nginx in front of the instances -----------------------------------
    nginx_image: ImageRef = Field("nginx:1.30", description=(
        "nginx image, pinned by tag (1.30: the stable branch, with njs)"))
    nginx_port: int = Field(80, ge=1, le=65535, description=(
        "port the host's nginx listens on (the host's inference entry point)"))
    nginx_timeout: NginxTime = Field("600s", description=(
        "proxy read/send timeout: long generations must not be cut"))
    nginx_max_body: NginxSize = Field("100m", description=(
        "largest request body accepted (client_max_body_size); larger gets 413"))
    nginx_status: bool = Field(False, description=(
        "nginx request counters (stub_status) at /nginx_status, from loopback only"))

    # -- the gate: TLS, API keys, limits (the host's nginx, or the front door on lb_servers)
    nginx_tls: Literal["off", "files", "self_signed"] = Field("off", description=(
        "`files`: certificate and key from nginx_tls_cert/nginx_tls_key; `self_signed`: a "
        "pair generated on the host once; `off`: plain HTTP"))
    nginx_tls_cert: Text = Field("", description=(
        "certificate chain (PEM) on the operator's machine, for nginx_tls `files`"))
    nginx_tls_key: Text = Field("", description=(
        "private key (PEM) on the operator's machine, for nginx_tls `files`; kept mode 600"))
    nginx_tls_port: int = Field(443, ge=1, le=65535, description="port TLS is served on")
    nginx_http: Literal["redirect", "refuse"] = Field("redirect", description=(
        "with TLS on, the plain HTTP port: `redirect` (308 to https) or `refuse` (closed)"))
    nginx_allow: list[Network] | None = Field(None, description=(
        "addresses or networks (CIDR) that may use the API besides loopback, the front "
        "doors and the host's app services (/health stays open to all); `[]`: everyone. "
        "Unset: on gpu_servers behind a front door, only those (the front door is the "
        "fleet's one entry); elsewhere everyone"))
    nginx_api_keys: SecretRef | None = Field(None, description=(
        "bearer keys that may use the API (a file of `[name] key` lines, or an environment "
        "variable of keys separated by spaces), read on the operator's machine: 32 to 256 of "
        "A-Z a-z 0-9 - . _ ~ + / (then = padding), letter case counting; names unique. A "
        "re-run rotates them with a reload. Unset: no key needed"))
    nginx_admin_keys: SecretRef | None = Field(None, description=(
        "keys that may also pull, push, create, copy and delete models through nginx; "
        "unset: those endpoints are refused (403) except from loopback"))
    nginx_rate_limit: NginxRate = Field("", description=(
        "requests per key (or per client address without keys), e.g. `10r/s`; past it "
        "and the burst: 429. Empty: no limit"))
    nginx_rate_burst: int = Field(20, ge=0, le=100000, description=(
        "requests above the rate served at once before 429 (0: the rate alone)"))
    nginx_conn_limit: int = Field(0, ge=0, le=100000, description=(
        "requests at once per API key (per address without one); over it: 429; 0: no "
        "limit"))

    # -- application services beside Ollama ---------------------------------
    app_services: dict[ServiceName, AppService] = Field(default_factory=dict, description=(
        "extra containers on the host's private app network (image, command, environment, "
        "secrets, ports, volumes, healthcheck, memory_limit, cpus, depends_on, uses_ollama, "
        "ollama_model); see the README's app stack"))
    app_network: Text = Field("172.31.254.0/24", description=(
        "subnet of the app services' private network, pinned so the host's nginx knows "
        "them: they call Ollama without a key and past nginx_allow, but not the admin "
        "endpoints. Must not overlap the host's networks (checked before it is created)"))
    app_cache: bool = Field(False, description=(
        "a Redis cache (`redis` on the app network, persistent, not published)"))
    app_cache_image: ImageRef = Field("redis:7", description="Redis image, pinned by tag")
    app_cache_memory: RedisSize = Field("256mb", description="Redis maxmemory")
    app_cache_policy: RedisPolicy = Field("allkeys-lru", description="Redis maxmemory-policy")

    # -- the fleet's front door (lb_servers) --------------------------------
    front_door_port: int = Field(80, ge=1, le=65535, description=(
        "port the front door listens on"))
    front_door_lists_port: int = Field(11390, ge=1024, le=65535, description=(
        "loopback-only port on which the front door asks itself for one host's lists "
        "(/api/tags, /api/ps, /v1/models), which it merges into the fleet's"))
    front_door_health_port: int = Field(11391, ge=1024, le=65535, description=(
        "plain-HTTP port of the front door's rotation view (GET /fleet/rotation: each host "
        "in, drained, held, evicted or unreachable, and why), open to loopback and the "
        "gpu_servers' addresses only"))
    front_door_upstream: Literal["nginx", "instances"] = Field("nginx", description=(
        "`nginx`: each GPU server's nginx (its gate: keys, admin endpoints, limits). "
        "`instances` (Ollama's ports directly) is refused: it would open them, admin "
        "endpoints included, to the network with nothing in front"))
    front_door_drained: list[Text] = Field(default_factory=list, description=(
        "gpu_servers hosts kept out of the front door by the inventory (maintenance)"))
    front_door_out: list[Text] | None = Field(None, description=(
        "set by `ollama-fleet` roll, drain and undrain (--data), not in inventories: the "
        "hosts they hold out of the front door, kept on it (FRONT_DIR/held-out) so that a "
        "plain deploy keeps them out; unset: what the front door holds now"))
    front_door_out_roll: list[Text] | None = Field(None, description=(
        "set by `ollama-fleet` with front_door_out, not in inventories: those of its hosts "
        "that a roll holds out (`held` at the front door; the others an operator's `drain`); "
        "unset: the causes the front door kept"))
    front_door_drain_timeout: int = Field(600, ge=1, le=3600, description=(
        "seconds a reload waits for requests in flight on the old config to finish; at "
        "least nginx_timeout, the longest a request may wait for its answer"))
    front_door_max_fails: int = Field(2, ge=1, le=100, description=(
        "passive health: failures within fail_timeout that take an upstream out (from 1: "
        "nginx reads 0 as never)"))
    front_door_fail_timeout: NginxTime = Field("10s", description=(
        "passive health: how long a failed upstream stays out"))
    front_door_dir: StackDir = Field("/opt/ollama-front", description=(
        "where the front door's Compose project and nginx config live"))

    @field_validator(*URL_KNOBS)
    @classmethod
    def _https(cls, value: str | list[str], info: ValidationInfo) -> str | list[str]:
        """Plain http only where the operator said so (fleet_insecure_http, declared
        before every URL knob, so its value is known here)."""
        for url in [value] if isinstance(value, str) else value or []:
            if url.startswith("http://") and not info.data.get("fleet_insecure_http"):
                raise ValueError(f"{url!r} is plain http; use https, or set "
                                 "fleet_insecure_http: true for a mirror on a trusted network")
        return value

    @field_validator("ollama_bind_address")
    @classmethod
    def _bind(cls, value: str, info: ValidationInfo) -> str:
        """Loopback or private unless the operator said otherwise (ollama_bind_unsafe,
        declared before it, so its value is known here)."""
        if info.data.get("ollama_bind_unsafe"):
            return value
        address = ipaddress.ip_address(value)
        if address.is_unspecified:
            problem = "listens on every address of the host"
        elif not any(address in network for network in SAFE_BIND):
            problem = ("is not loopback or private (10/8, 172.16/12, 192.168/16, fc00::/7): "
                       "it may be reached from beyond the LAN")
        else:
            return value
        raise ValueError(f"{value!r} {problem}, and every instance's whole API (pull, delete "
                         "and create included) would answer there, past nginx; use "
                         f"127.0.0.1, or {DOCKER_BRIDGE_GATEWAY} (the Docker bridge's gateway) "
                         "for app services pinned to an instance, or set ollama_bind_unsafe: "
                         "true")

    @field_validator("ollama_fanout_rate")
    @classmethod
    def _fanout_rate(cls, value: str) -> str:
        if value and not re.fullmatch(r"[1-9]\d{0,11}[km]?", value, re.ASCII):
            raise ValueError(f"{value!r} is not a rate like 100m (bytes per second)")
        return value

    @field_validator("app_network")
    @classmethod
    def _subnet(cls, value: str) -> str:
        try:
            network = ipaddress.IPv4Network(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 network like 172.31.254.0/24 (host "
                             "bits unset)") from None
        if not network.is_private or not 24 <= network.prefixlen <= 28:
            raise ValueError(f"{value!r}: a private network from /24 to /28 is expected (a "
                             "larger one takes more of the host's address space than apps "
                             "need)")
        return value

    @field_validator("nvidia_exporter_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        address, _, port = value.rpartition(":")
        try:
            if not is_ip(address.removeprefix("[").removesuffix("]")):
                raise ValueError
            if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
                raise ValueError
        except ValueError:
            raise ValueError(f"{value!r} is not ADDRESS:PORT (an IP address; [v6]:port)") \
                from None
        return value

    @field_validator("ollama_environment")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key == "OLLAMA_PORT":
                raise ValueError("OLLAMA_PORT does not exist in Ollama; the port is part of "
                                 "OLLAMA_HOST, set from ollama_base_port")
            if key in ("OLLAMA_HOST", "OLLAMA_MODELS"):
                raise ValueError(f"{key} is set by the deploy (use the ollama_* knobs)")
            if key in ("OLLAMA_NO_CLOUD", "OLLAMA_CLOUD_BASE_URL", "OLLAMA_REMOTES"):
                raise ValueError(f"{key} is set by the deploy: cloud models are allowed by "
                                 "ollama_allow_cloud alone, so the front doors agree")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        topology = self.topology
        if topology in ("per_gpu", "shared") and self.gpu_count == 0:
            raise ValueError(f"ollama_topology: {topology!r} needs GPUs but gpu_count is 0")
        for index in self.ollama_gpus or []:
            if not 0 <= index < self.gpu_count:
                raise ValueError(f"ollama_gpus: GPU {index} does not exist "
                                 f"(the host has {self.gpu_count}: 0..{self.gpu_count - 1})")
        if self.ollama_gpus is not None and len(set(self.ollama_gpus)) != len(self.ollama_gpus):
            raise ValueError("ollama_gpus: a GPU is listed twice")
        if self.ollama_gpus == [] and topology != "cpu":
            raise ValueError("ollama_gpus: empty list; use ollama_topology 'cpu' for no GPU")
        from ollama_fleet.tasks.kit.modelname import is_cloud, parse

        if not self.ollama_allow_cloud:
            for model in self.ollama_models:
                if is_cloud(model):
                    raise ValueError(f"ollama_models: {model!r} is a cloud model (it runs on "
                                     "ollama.com, prompts leave the fleet); set "
                                     "ollama_allow_cloud: true to allow cloud models")
            release = image_release(self.ollama_image)
            if release and (0, 12, 0) <= release[0] < (0, 16, 2):
                raise ValueError(f"ollama_image: {self.ollama_image} runs cloud models but "
                                 "ignores OLLAMA_NO_CLOUD (read from 0.16.2 on), so prompts "
                                 "could leave the fleet; use 0.16.2 or later, or set "
                                 "ollama_allow_cloud: true")
        known = {parse(m).key for m in self.all_models}  # as Ollama compares names
        for model in self.ollama_warm_models:
            if parse(model).key not in known:
                raise ValueError(f"ollama_warm_models: {model!r} is not in ollama_models "
                                 "(only a model the host has can be kept loaded)")
        if self.front_door_upstream == "instances":
            raise ValueError("front_door_upstream: 'instances' would open every GPU host's "
                             "Ollama ports, admin endpoints included, to the network with "
                             "nothing in front (the deploy has no firewall to keep them to "
                             "the front doors); use 'nginx', whose gate the front door passes")
        longest = nginx_seconds(self.nginx_timeout)
        if self.front_door_drain_timeout < longest:
            raise ValueError(f"front_door_drain_timeout: {self.front_door_drain_timeout} s is "
                             f"shorter than nginx_timeout ({self.nginx_timeout}): a request "
                             "still in flight on a drained host would be cut")
        if self.nginx_tls == "files" and not (self.nginx_tls_cert and self.nginx_tls_key):
            raise ValueError("nginx_tls: 'files' needs nginx_tls_cert and nginx_tls_key")
        if self.nginx_tls != "files" and (self.nginx_tls_cert or self.nginx_tls_key):
            raise ValueError("nginx_tls_cert: set, but nginx_tls is not 'files'")
        if self.nginx_tls != "off" and self.nginx_tls_port == self.nginx_port:
            raise ValueError(f"nginx_tls_port: {self.nginx_tls_port} is also nginx_port")
        ports = [port for _, port in self.instance_ports()]
        if self.nginx_tls != "off" and self.nginx_tls_port in ports:
            raise ValueError(f"nginx_tls_port: {self.nginx_tls_port} is also an Ollama "
                             "instance's port")
        if self.ollama_fanout and self.ollama_fanout_port in (*ports, self.nginx_port):
            raise ValueError(f"ollama_fanout_port: {self.ollama_fanout_port} is also nginx's or "
                             "an Ollama instance's port")
        if self.nginx_port in ports:
            raise ValueError(f"nginx_port: {self.nginx_port} is also an Ollama instance's port")
        if self.front_door_lists_port in (self.front_door_port, self.nginx_tls_port):
            raise ValueError(f"front_door_lists_port: {self.front_door_lists_port} is also the "
                             "front door's own port")
        if self.front_door_health_port in (self.front_door_port, self.nginx_tls_port,
                                           self.front_door_lists_port):
            raise ValueError(f"front_door_health_port: {self.front_door_health_port} is also "
                             "the front door's own port or its lists port")
        if self.front_door_out_roll and not set(self.front_door_out_roll) <= set(
                self.front_door_out or []):
            raise ValueError("front_door_out_roll: names hosts that front_door_out does not "
                             "hold out")
        if ports[-1] > 65535:
            raise ValueError(f"ollama_base_port: instances would need ports up to {ports[-1]}")
        taken = {p: f"Ollama instance port {p}" for p in ports}
        taken[self.nginx_port] = f"nginx_port {self.nginx_port}"
        names = set(self.app_services) | ({"redis"} if self.app_cache else set())
        if self.app_cache and "redis" in self.app_services:
            raise ValueError("app_services: redis: clashes with the app_cache service 'redis'")
        for name, service in self.app_services.items():
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name) or name.startswith("ollama-") \
                    or name == "nginx":
                raise ValueError(f"app_services: {name!r}: not a usable service name")
            for _, host_port, _ in service.published():
                if host_port in taken:
                    raise ValueError(f"app_services: {name}: port {host_port} clashes with "
                                     f"{taken[host_port]}")
                taken[host_port] = f"app service {name}"
            for dep in service.depends_on:
                if dep not in names or dep == name:
                    raise ValueError(f"app_services: {name}: depends on {dep!r}, which is "
                                     "not an app service here")
            if service.ollama_instance is not None:
                if not 0 <= service.ollama_instance < len(ports):
                    raise ValueError(f"app_services: {name}: ollama_instance "
                                     f"{service.ollama_instance} does not exist (the host "
                                     f"runs {len(ports)})")
                if ipaddress.ip_address(self.ollama_bind_address).is_loopback:
                    raise ValueError(f"app_services: {name}: a pinned ollama_instance is "
                                     "called at host.docker.internal, and containers cannot "
                                     "reach the host's loopback; set ollama_bind_address to "
                                     f"the Docker bridge's gateway, {DOCKER_BRIDGE_GATEWAY} "
                                     "(docker0's address, unless daemon.json sets another)")
        return self

    # -- derived values (never stored: computed from the knobs) ------------
    @property
    def topology(self) -> Topology:
        if self.ollama_topology:
            return self.ollama_topology
        return "per_gpu" if self.gpu_count else "cpu"

    @property
    def gpu_indexes(self) -> list[int]:
        if self.topology == "cpu":
            return []
        return list(self.ollama_gpus if self.ollama_gpus is not None else range(self.gpu_count))

    @property
    def all_models(self) -> list[str]:
        """ollama_models plus the models app services name, each once (two spellings Ollama
        reads as one model are one: the first is kept)."""
        named = [a.ollama_model for a in self.app_services.values() if a.ollama_model]
        from ollama_fleet.tasks.kit.modelname import parse

        first: dict[str, str] = {}
        for model in [*self.ollama_models, *named]:
            first.setdefault(parse(model).key, model)
        return list(first.values())

    @property
    def models_by_preference(self) -> list[str]:
        """The host's models in the one order every "first model" is taken from (the GPU
        proof, the roll's smoke test, an app's default model): warm models first, then
        all_models; each once, as Ollama reads names."""
        from ollama_fleet.tasks.kit.modelname import parse

        first: dict[str, str] = {}
        for model in [*self.ollama_warm_models, *self.all_models]:
            first.setdefault(parse(model).key, model)
        return list(first.values())

    @property
    def first_model(self) -> str | None:
        """The host's first model by the one rule (`models_by_preference`); None: none."""
        return next(iter(self.models_by_preference), None)

    def instance_ports(self) -> list[tuple[int, int]]:
        """(instance number, port) for every Ollama instance on the host."""
        count = len(self.gpu_indexes) if self.topology == "per_gpu" else 1
        return [(n, self.ollama_base_port + n) for n in range(count)]

    def local_host(self) -> str:
        """Where this host reaches its own instances (and nginx its upstreams), as the host
        part of a URL: the bind address, loopback for a wildcard, IPv6 in brackets."""
        from ollama_fleet.tasks.kit.addresses import local_address, url_host

        return url_host(local_address(self.ollama_bind_address))

    def instance_url(self, port: int) -> str:
        """The URL this host reaches its instance on PORT at."""
        return f"http://{self.local_host()}:{port}"


KNOBS: dict[str, Any] = Settings.model_fields


class SettingsError(Exception):
    """Inventory data that cannot be deployed; `problems` are `host: key: problem` lines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def _knob_data(host_name: str, data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    knobs, problems = {}, []
    for key, value in data.items():
        if key in KNOBS:
            knobs[key] = value
        elif not PYINFRA_KEY.match(key):
            close = difflib.get_close_matches(key, KNOBS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"{host_name}: {key}: unknown setting{hint}")
    return knobs, problems


def _describe(error: dict) -> tuple[str, str]:
    # list positions and pydantic's "[key]" marker say nothing to an operator: the key does
    loc = ".".join(str(p) for p in error["loc"] if not isinstance(p, int) and p != "[key]")
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown setting"
    if not loc and ": " in message:  # cross-field problems name their key themselves
        loc, message = message.split(": ", 1)
    value = error.get("input")
    if error["type"] not in ("value_error", "extra_forbidden") and loc and not isinstance(
            value, dict):
        message = f"{message} (got {value!r})"
    return loc or "settings", message


def settings_for(host_name: str, data: dict[str, Any]) -> Settings:
    """Validate one host's merged data; raise SettingsError naming host and key."""
    knobs, problems = _knob_data(host_name, data)
    try:
        settings = Settings(**knobs)
    except ValidationError as exc:
        problems += [f"{host_name}: {key}: {msg}" for key, msg in map(_describe, exc.errors())]
        raise SettingsError(problems) from None
    if problems:
        raise SettingsError(problems)
    return settings


def validate_fleet(hosts: dict[str, dict[str, Any]], gpu_servers: list[str] | None = None,
                   lb_servers: list[str] | None = None) -> dict[str, Settings]:
    """Validate every host's data; collect every problem of every host in one error.

    GPU_SERVERS (the hosts a front door can send to) and LB_SERVERS (the front doors)
    make the cross-host checks.
    """
    result, problems, labels = {}, [], {}
    for name, data in hosts.items():
        # a name lands in the front door's nginx config: outside the grammar, it is shown
        # escaped (one line) and refused
        label = labels[name] = name if is_host_name(name) or is_ip(name) \
            or _CONNECTOR.fullmatch(name) else ascii(name)
        if label != name:
            problems.append(f"{label}: name: not a host name (letters, digits, - _ .) or an "
                            "IP address")
        address = data.get("ssh_hostname")
        if address is not None and not (is_host_name(address) or is_ip(address)):
            problems.append(f"{label}: ssh_hostname: {ascii(address)} is not a host name "
                            "(letters, digits, - _ .) or an IP address (no zone)")
        try:
            result[name] = settings_for(label, data)
        except SettingsError as exc:
            problems += exc.problems
    for name, settings in result.items():
        label = labels[name]
        for key in ("front_door_drained", "front_door_out"):
            for drained in getattr(settings, key) or []:
                if gpu_servers is not None and drained not in gpu_servers:
                    problems.append(f"{label}: {key}: no gpu_servers host named {drained!r}")
        if lb_servers and name in (gpu_servers or []) and settings.nginx_tls != "off":
            problems.append(f"{label}: nginx_tls: the front door (lb_servers) talks plain HTTP "
                            "to gpu_servers' nginx; put TLS on the front door")
        if lb_servers and name in (gpu_servers or []) and settings.nginx_allow is None:
            named = [lb for lb in lb_servers if not is_ip(
                hosts.get(lb, {}).get("ssh_hostname") or lb)]
            if named:
                problems.append(f"{label}: nginx_allow: the front doors {named} are reached by "
                                "name and nginx allows addresses; give their addresses or "
                                "networks (CIDR) that may call this host's API")
        if lb_servers and name in (gpu_servers or []) and (
                settings.nginx_api_keys or settings.nginx_admin_keys):
            named = [lb for lb in lb_servers if not is_ip(
                hosts.get(lb, {}).get("ssh_hostname") or lb)]
            key = "nginx_api_keys" if settings.nginx_api_keys else "nginx_admin_keys"
            if named:
                problems.append(f"{label}: {key}: the front doors {named} are reached by "
                                "name; this host takes the client's name (no key) only from "
                                "a front door's address: give their addresses (ssh_hostname)")
        if settings.ollama_fanout and name in (gpu_servers or []) \
                and len(gpu_servers or []) > 1 and not settings.ollama_fanout_allow:
            named = [g for g in gpu_servers or [] if not is_ip(
                hosts.get(g, {}).get("ssh_hostname") or g)]
            if named:
                problems.append(f"{label}: ollama_fanout_allow: peers {named} are reached by "
                                "name; give the fleet's networks (CIDR) that may copy models")
    if problems:
        raise SettingsError(list(dict.fromkeys(problems)))
    return result


# A host name as DNS spells it (labels of letters, digits, `-`; `_` too, as inventories use
# it); the last label not all digits (`10.0.0.300` is a mistyped address, not a name).
_HOST_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$)({_HOST_LABEL}\.)*{_HOST_LABEL}\.?", re.ASCII)
# pyinfra's own connectors, as inventory names: @local, @docker/IMAGE
_CONNECTOR = re.compile(r"@[a-z][a-z0-9]*(/[A-Za-z0-9._:@/+-]+)?", re.ASCII)


def is_host_name(name: object) -> bool:
    """True for a DNS host name (not an address)."""
    return isinstance(name, str) and bool(_HOST_NAME.fullmatch(name)) \
        and not name.rstrip(".").rsplit(".", 1)[-1].isdigit()


def is_ip(address: object) -> bool:
    """True for an IPv4 or IPv6 address (not a name, no zone)."""
    if not isinstance(address, str) or not _IP_TEXT.fullmatch(address):
        return False
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _type_name(annotation: Any) -> str:
    """ANNOTATION as the README shows it: the value grammars (Annotated) as their base type."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return "None" if annotation is type(None) else annotation.__name__


def knob_table() -> str:
    """The README's knob table, in declaration order."""
    rows = ["| knob | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in KNOBS.items():
        default = field.default_factory() if field.default_factory else field.default
        kind = _type_name(field.annotation).replace("|", "\\|")  # a pipe splits a table cell
        rows.append(f"| `{name}` | `{kind}` | `{default!r}` | {field.description} |")
    return "\n".join(rows)


def write_readme(readme: str = "README.md") -> None:
    """Replace the table between the README's knob markers with the declarations."""

    path = Path(readme)
    text = path.read_text()
    new = re.sub(r"(<!-- knobs:start -->\n).*?(<!-- knobs:end -->)",
                 lambda m: m.group(1) + knob_table() + "\n" + m.group(2), text, flags=re.S)
    path.write_text(new)


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        print(knob_table())
    elif sys.argv[1:] == ["--write-readme"]:
        write_readme()
    else:
        sys.exit("usage: python -m ollama_fleet.tasks.kit.settings --markdown | --write-readme")

"""The lab fleet: Debian servers in containers on their own network, and the lab's services.

Everything the lab creates carries the label `fleetlab.lab=<name>`, so `down` (and
`up`, before it starts) can find and remove it even when the state file is gone.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import random
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lab import dns, engine, images, tls
from lab.engine import LabError, docker
from lab.inventory import inventory_path, remove_inventory, write_inventory
from lab.ollama.standin.releases import cuda_archs
from lab.state import APT_PORT, MODEL_REGISTRY_PORT, REGISTRY_PORT, REPO, LabState, endpoints
from lab.state import state_root as state_root  # lab.cli takes it from here

LABEL = "fleetlab.lab"
SERVICES_IP_OFFSET = 2
CLOUD_IP_OFFSET = 3  # the cloud stand-in (lab/cloud), `ollama.com` in the lab's DNS
CLOUD_PORT = 443
ROLE_OFFSETS = {"gpu": 10, "cpu": 100, "lb": 200}
ROLE_LIMITS = {"gpu": 89, "cpu": 99, "lb": 50}
KERNEL_KEYRING = "/usr/share/keyrings/fleetlab-debian-kernel.asc"
# Broken stand-in releases (`python -m lab ollama-image TAG --fault NAME`): what each does,
# and the recipe step that makes it so (lab/ollama/standin reads these files).
FAULTS = {
    "unhealthy": "listens, answers every request with HTTP 500, never healthy",
    "exits": "exits with status 1 before it listens (a fatal start error)",
    "crashes": "binds its port, then panics in GPU discovery 2 s later (exit status 2)",
}
FAULT_FILES = {
    "unhealthy": "touch /usr/lib/ollama/lab-unhealthy",
    "exits": "touch /usr/lib/ollama/lab-exit-at-start",
    "crashes": "echo 2 > /usr/lib/ollama/lab-crash-after",
}
# 0.6.8 and 0.7.0 behave as those releases; 0.32.15 as the current one (releases.py)
DEFAULT_OLLAMA_TAGS = ("0.6.8", "0.7.0", "0.32.15")
DEFAULT_NGINX_TAGS = ("1.30", "stable")
DEFAULT_REDIS_TAGS = ("7",)
DEFAULT_APP_TAGS = ("1.0",)
SSH_WAIT_S = 90
# A GPU host's kernel log: /dev/kmsg as a regular file made at every boot, journald kept
# off it (lab/recipes/host/fleetlab-kmsg*); recipe file -> path in the host
KMSG_FILES = {
    "fleetlab-kmsg": "/usr/local/sbin/fleetlab-kmsg",
    "fleetlab-kmsg.service": "/etc/systemd/system/fleetlab-kmsg.service",
    "journald-fleetlab-kmsg.conf": "/etc/systemd/journald.conf.d/fleetlab-kmsg.conf",
    "systemd-journald-fleetlab-kmsg.conf":
        "/etc/systemd/system/systemd-journald.service.d/fleetlab-kmsg.conf",
}
# `python -m lab fault HOST KIND`: what each kind breaks (lab/nvidia/standins/fleetlab_fault.py)
HOST_FAULTS = {
    "xid79": "GPU N falls off the bus (Xid 79): nvidia-smi has no handle for it, Ollama "
             "fails on it; only a reboot clears it",
    "xid48": "a double-bit ECC error on GPU N (Xid 48): its volatile uncorrected ECC count "
             "rises, Ollama fails on it until `nvidia-smi -r -i N`",
    "nvml-lost": "the instance on GPU N (or --container) loses its GPUs (Failed to "
                 "initialize NVML); a restart through the runtime heals it",
    "fm-down": "Fabric Manager is killed (NVSwitch boards): its unit fails, new CUDA "
               "initialisation fails (802)",
    "cpu": "the instance on GPU N runs on the CPU (size_vram 0, slow) until its process "
           "restarts",
    "hang": "the instance on GPU N accepts connections and never answers (SIGSTOP)",
    "crash": "the instance on GPU N dies (SIGKILL)",
    "clear": "undo what can be undone without a reboot (xid79 stays until one)",
}
GPU_HOST_FAULTS = ("xid79", "xid48", "nvml-lost", "fm-down")


@dataclass
class Spec:
    """What `up` was asked for; `up` with the same spec changes nothing."""

    gpu_hosts: int = 2
    gpus_per_host: int = 2
    cpu_hosts: int = 0
    lb_hosts: int = 0
    gpu_model: str = "H100"  # or one per GPU host, comma-separated; the last one repeats
    gpu_suites: str = "trixie"  # the GPU hosts' Debian release, as gpu_model (bookworm: 12)
    registry_port: int = 5000
    model_scale: float = 1.0
    # the health agent's check interval the lab's inventory sets (health_interval): each
    # check runs the stand-in nvidia-smi (Python) on the host and in every GPU instance, so
    # a dozen lab hosts at 1 s would take a 2-core machine; the health tests ask for 1
    health_interval: int = 5
    ollama_tags: list[str] = field(default_factory=lambda: list(DEFAULT_OLLAMA_TAGS))
    nginx_tags: list[str] = field(default_factory=lambda: list(DEFAULT_NGINX_TAGS))
    redis_tags: list[str] = field(default_factory=lambda: list(DEFAULT_REDIS_TAGS))
    app_tags: list[str] = field(default_factory=lambda: list(DEFAULT_APP_TAGS))

    def validate(self) -> None:
        if self.gpu_hosts + self.cpu_hosts + self.lb_hosts == 0:
            raise LabError("up: zero hosts asked for; give --gpu-hosts, --cpu-hosts or --lb-hosts")
        for role, count in (("gpu", self.gpu_hosts), ("cpu", self.cpu_hosts),
                            ("lb", self.lb_hosts)):
            if count < 0 or count > ROLE_LIMITS[role]:
                raise LabError(f"up: --{role}-hosts {count}: must be 0..{ROLE_LIMITS[role]}")
        if self.gpu_hosts and not 1 <= self.gpus_per_host <= 16:
            raise LabError(f"up: --gpus-per-host {self.gpus_per_host}: must be 1..16")
        from lab.nvidia.hardware import MODELS

        for suite in self.gpu_suites.split(","):
            if suite not in images.SERVER_SUITES:
                raise LabError(f"up: --gpu-suites {self.gpu_suites}: {suite!r} is none of "
                               f"{', '.join(images.SERVER_SUITES)}")
        for model in self.gpu_model.split(","):
            if model not in MODELS:
                raise LabError(f"up: --gpu-model {self.gpu_model}: {model!r} is none of "
                               f"{', '.join(MODELS)}")
        if not 1024 <= self.registry_port <= 65535:
            raise LabError(f"up: --registry-port {self.registry_port}: must be 1024..65535")
        if self.model_scale <= 0:
            raise LabError(f"up: --model-scale {self.model_scale}: must be > 0")
        if not 1 <= self.health_interval <= 30:
            raise LabError(f"up: --health-interval {self.health_interval}: must be 1..30")


@dataclass
class Host:
    name: str
    role: str  # gpu | cpu | lb
    address: str
    gpus: list[dict]
    board: dict = field(default_factory=dict)  # "board" and "nvswitches" of its gpus.json
    suite: str = images.SUITE  # its Debian release

    def container(self, lab: str) -> str:
        return f"{lab}-{self.name}"


class Lab(LabState):
    """One named lab: its state directory (LabState), network, services container and
    hosts."""

    @property
    def network(self) -> str:
        return f"{self.name}-net"

    @property
    def services(self) -> str:
        return f"{self.name}-services"

    # -- up ---------------------------------------------------------------
    def up(self, spec: Spec, inventory_names: bool = False) -> dict:
        """Start (or reconcile) the lab to SPEC; INVENTORY_NAMES writes an inventory that
        names hosts by DNS (for pyinfra under `python -m lab run`) instead of addresses."""
        spec.validate()
        dns.zone(self.name)  # the lab name is a DNS label: refuse a bad one before anything
        engine.require_engine()
        self._check_registry_port(spec.registry_port)
        state = self.load()
        if state is None:
            self._remove_leftovers()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._ensure_key()
        server_image = images.ensure_debootstrap_image(images.SERVER, log=self.log)
        host_images = {suite: images.ensure_debootstrap_image(images.SERVER_SUITES[suite],
                                                              log=self.log)
                       for suite in dict.fromkeys([images.SUITE, *spec.gpu_suites.split(",")])}
        app_base = images.ensure_debootstrap_image(images.APP_BASE, log=self.log)
        subnet = self._ensure_network(state)
        net = ipaddress.ip_network(subnet)
        services_ip = str(net.network_address + SERVICES_IP_OFFSET)
        cloud_ip = str(net.network_address + CLOUD_IP_OFFSET)
        apt_info = self._build_apt_repo()
        self._kernel_source = self._kernel_source_files(apt_info, services_ip)
        hosts = self._plan_hosts(spec, net)
        dns.write_files(self, services_ip, [asdict(h) for h in hosts], cloud_ip)
        self._ensure_services(spec, server_image, services_ip)
        self._wait_services(spec, services_ip)
        self._ensure_cloud(app_base, cloud_ip)
        self._push_images(spec, app_base, services_ip)
        self._reconcile_hosts(hosts, host_images, services_ip)
        state = {
            "name": self.name,
            "spec": asdict(spec),
            "subnet": subnet,
            "services_ip": services_ip,
            "cloud_ip": cloud_ip,
            "apt": apt_info,
            "hosts": [asdict(h) for h in hosts],
        }
        self.save(state)
        write_inventory(self, state, by_name=inventory_names)
        return state

    def _ensure_key(self) -> None:
        if self.key_path.exists():
            return
        import subprocess

        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                        f"{self.name}-lab", "-f", str(self.key_path)], check=True)

    def _remove_leftovers(self) -> None:
        """Remove what an interrupted run left: containers, the network, volumes."""
        leftovers = engine.containers(f"{LABEL}={self.name}")
        nets = engine.ids("network", f"{LABEL}={self.name}")
        vols = engine.ids("volume", f"{LABEL}={self.name}")
        if leftovers or nets or vols:
            self.log(f"removing leftovers of an earlier {self.name} lab "
                     f"({len(leftovers)} containers, {len(nets)} networks, {len(vols)} volumes)")
        engine.remove_all([c["Name"].lstrip("/") for c in leftovers], "container")
        engine.remove_all(nets, "network")
        engine.remove_all(vols, "volume")

    def _ensure_network(self, state: dict | None) -> str:
        existing = engine.inspect("network", self.network)
        if existing:
            return existing["IPAM"]["Config"][0]["Subnet"]
        subnet = (state or {}).get("subnet") or self._free_subnet()
        docker("network", "create", "--driver", "bridge", "--subnet", subnet,
               "--label", f"{LABEL}={self.name}", self.network)
        return subnet

    def _free_subnet(self) -> str:
        used = []
        for name in engine.out("network", "ls", "--format", "{{.Name}}").split():
            info = engine.inspect("network", name) or {}
            for cfg in (info.get("IPAM") or {}).get("Config") or []:
                if cfg.get("Subnet"):
                    used.append(ipaddress.ip_network(cfg["Subnet"], strict=False))
        start = int(hashlib.sha256(self.name.encode()).hexdigest(), 16) % 200
        for i in range(250):
            candidate = ipaddress.ip_network(f"172.29.{(start + i) % 250 + 1}.0/24")
            if not any(candidate.overlaps(u) for u in used if u.version == 4):
                return str(candidate)
        raise LabError("no free /24 left in 172.29.0.0/16 for the lab network")

    def _build_apt_repo(self) -> dict:
        from lab.nvidia.repo import build_repos

        return build_repos(self.dir / "apt", self.dir / "gnupg")

    @staticmethod
    def _kernel_source_files(apt_info: dict, services_ip: str) -> dict[str, str]:
        """What a lab host's own apt sources get beside its Debian mirror: the lab's
        repository standing for the Debian archive's headers of the running kernel (the
        hosts run this machine's kernel, which no Debian mirror has headers for)."""
        return {
            "sources": (f"deb [signed-by={KERNEL_KEYRING}] http://{services_ip}:{APT_PORT}/"
                        f"{apt_info['kernel_repo']} /\n"),
            "key": apt_info["kernel_key"],
        }

    def _ensure_services(self, spec: Spec, server_image: str, services_ip: str) -> None:
        files = {
            "modelregistry.py": REPO / "lab/registry/modelregistry.py",
            **{name: images.RECIPES / "services" / name for name in
               ("apt-repo.conf", "registry-config.yml", "fleetlab-model-registry.service",
                "fleetlab-dns.service")},
        }
        dockerfile = (images.RECIPES / "services/Dockerfile").read_text()
        tag = images.build_image(f"fleetlab/services:{images.SUITE}", server_image, files,
                                 dockerfile, log=self.log)
        config = self.dir / "services"
        config.mkdir(exist_ok=True)
        (config / "models.json").write_bytes((REPO / "lab/registry/models.json").read_bytes())
        # blobs are redirected to another name for the same server, as registry.ollama.ai
        # redirects to its blob store (lab/registry/modelregistry.py)
        blob_url = f"http://blobs.{dns.zone(self.name)}:{MODEL_REGISTRY_PORT}"
        (config / "model-registry.env").write_text(
            f"SIZE_SCALE={spec.model_scale}\nFLEETLAB_BLOB_URL={blob_url}\n")
        dnsmasq = hashlib.sha256((config / "dnsmasq.conf").read_bytes()).hexdigest()[:16]
        wanted = {"image": engine.inspect("image", tag)["Id"], "port": spec.registry_port,
                  "scale": spec.model_scale, "blob_url": blob_url,
                  "dnsmasq": dnsmasq}  # dnsmasq reads its configuration only at its start
        current = engine.inspect("container", self.services)
        if current and current["Config"]["Labels"].get("fleetlab.config") == json.dumps(wanted):
            if not current["State"]["Running"]:
                docker("start", self.services)
            return
        if current:
            docker("rm", "-f", self.services)
        for volume in (f"{self.name}-registry", f"{self.name}-models"):
            docker("volume", "create", "--label", f"{LABEL}={self.name}", volume)
        docker("run", "-d", "--name", self.services, "--hostname", "lab-services",
               "--network", self.network, "--ip", services_ip,
               "-p", f"127.0.0.1:{spec.registry_port}:{REGISTRY_PORT}",
               "--label", f"{LABEL}={self.name}", "--label", "fleetlab.role=services",
               "--label", f"fleetlab.config={json.dumps(wanted)}",
               *self._systemd_options(),
               "-v", f"{self.name}-registry:/var/lib/docker-registry",
               "-v", f"{self.name}-models:/var/lib/fleetlab-models",
               "-v", f"{self.dir / 'apt'}:/srv/apt:ro",
               "-v", f"{config}:/etc/fleetlab:ro",
               tag)

    @property
    def cloud(self) -> str:
        return f"{self.name}-cloud"

    def _ensure_cloud(self, app_base: str, cloud_ip: str) -> None:
        """The cloud stand-in (lab/cloud/cloud.py) at CLOUD_IP:443, HTTPS with a
        certificate of the lab's CA for `ollama.com`; it runs from the checkout (bind
        mounts, no image of its own) and is recreated when its code changes."""
        paths = tls.issue(self.dir, dns.CLOUD_NAME, cloud_ip,
                          (dns.cloud_name(self.name), *dns.CLOUD_HOSTS), ca_dir=tls.cloud_ca())
        code = hashlib.sha256()
        for f in [REPO / "lab/cloud/cloud.py", *standin_files().values()]:
            code.update(f.read_bytes())
        wanted = json.dumps({"image": engine.inspect("image", app_base)["Id"],
                             "ip": cloud_ip, "code": code.hexdigest()[:16]})
        current = engine.inspect("container", self.cloud)
        if current and current["Config"]["Labels"].get("fleetlab.config") == wanted:
            if not current["State"]["Running"]:
                docker("start", self.cloud)
        else:
            if current:
                docker("rm", "-f", self.cloud)
            cert_dir = Path(paths["cert"]).parent
            docker("run", "-d", "--name", self.cloud, "--hostname", "ollama-cloud",
                   "--network", self.network, "--ip", cloud_ip,
                   "--label", f"{LABEL}={self.name}", "--label", "fleetlab.role=cloud",
                   "--label", f"fleetlab.config={wanted}", "--restart", "unless-stopped",
                   "-v", f"{REPO / 'lab/cloud'}:/srv/fleetlab-cloud:ro",
                   "-v", f"{REPO / 'lab/ollama'}:/srv/fleetlab-ollama:ro",
                   "-v", f"{cert_dir}:/etc/fleetlab-cloud:ro",
                   app_base, "python3", "-B", "/srv/fleetlab-cloud/cloud.py",
                   "--port", str(CLOUD_PORT), "--cert", "/etc/fleetlab-cloud/cert.pem",
                   "--key", "/etc/fleetlab-cloud/key.pem")
        deadline = time.monotonic() + 60
        while True:
            try:
                self.cloud_requests(cloud_ip=cloud_ip)
                return
            except LabError as exc:
                if time.monotonic() > deadline:
                    raise LabError(f"the cloud stand-in at {cloud_ip}:{CLOUD_PORT} did not "
                                   f"answer within 60s ({exc})") from None
            time.sleep(0.5)

    def cloud_requests(self, clear: bool = False, cloud_ip: str | None = None) -> list[dict]:
        """What the cloud stand-in has received, oldest first (CLEAR: then forget it)."""
        import ssl
        import urllib.request

        if cloud_ip is None:
            state = self.load()
            if state is None or not state.get("cloud_ip"):
                raise LabError(f"no lab named {self.name} with a cloud stand-in is up "
                               "(run: python -m lab up)")
            cloud_ip = state["cloud_ip"]
        ctx = ssl.create_default_context(cafile=str(tls.ca(tls.cloud_ca())[0]))
        ctx.check_hostname = False  # asked by address; the CA still vouches for it
        ctx.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)  # the lab CA has no keyUsage
        req = urllib.request.Request(f"https://{cloud_ip}:{CLOUD_PORT}/_lab/requests",
                                     method="DELETE" if clear else "GET")
        try:
            with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
                return json.loads(resp.read())["requests"]
        except (OSError, ValueError) as exc:
            raise LabError(f"cloud stand-in: {exc}") from exc

    def _check_registry_port(self, port: int) -> None:
        """Fail before anything is created when the push port is taken by someone else."""
        current = engine.inspect("container", self.services)
        if current and current["State"]["Running"]:
            bound = (current["HostConfig"].get("PortBindings") or {}).get(f"{REGISTRY_PORT}/tcp")
            if bound and bound[0].get("HostPort") == str(port):
                return
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError as exc:
                raise LabError(f"up: --registry-port {port}: 127.0.0.1:{port} is already in use "
                               f"({exc.strerror}); pick another port") from exc

    @staticmethod
    def _systemd_options() -> list[str]:
        # See shared LAB notes: what a systemd container needs on this kind of VM.
        return ["--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
                "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
                "--security-opt", "systempaths=unconfined",
                "--cgroupns", "host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
                "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
                "--stop-signal", "SIGRTMIN+3", "--restart", "unless-stopped"]

    def _wait_services(self, spec: Spec, services_ip: str) -> None:
        checks = {
            "image registry": f"http://127.0.0.1:{spec.registry_port}/v2/",
            "apt repository": f"http://{services_ip}:{APT_PORT}/",
            "model registry": f"http://{services_ip}:{MODEL_REGISTRY_PORT}/v2/",
        }
        for what, url in checks.items():
            wait_http(url, what, timeout=120)
        # bounded, generous: three labs starting at once on two cores slow dnsmasq's start
        wait_dns(services_ip, f"services.{dns.zone(self.name)}", services_ip, timeout=180)

    def _push_images(self, spec: Spec, app_base: str, services_ip: str) -> None:
        registry = f"http://{services_ip}:{MODEL_REGISTRY_PORT}"
        for tag in spec.ollama_tags:
            self.build_ollama_image(tag, app_base, registry, spec.registry_port)
        nginx = images.RECIPES / "nginx"
        for tag in spec.nginx_tags:
            local = images.build_image(f"fleetlab/nginx:{tag}", app_base,
                                       {"nginx.conf": nginx / "nginx.conf"},
                                       (nginx / "Dockerfile").read_text(), log=self.log)
            self._push(local, f"library/nginx:{tag}", spec.registry_port)
        # Application services beside the fleet: Debian's redis as `redis:<tag>` and the
        # stand-in app (lab/app/chatapp.py) as `fleetlab/chat-app:<tag>`.
        for tag in spec.redis_tags:
            local = images.build_redis_image(tag, app_base, log=self.log)
            self._push(local, f"library/redis:{tag}", spec.registry_port)
        for tag in spec.app_tags:
            local = images.build_chat_app_image(tag, app_base, log=self.log)
            self._push(local, f"fleetlab/chat-app:{tag}", spec.registry_port)

    def build_ollama_image(self, tag: str, app_base: str, registry: str, port: int,
                           fault: str | None = None, pad_mb: int = 0) -> None:
        """Build the stand-in `ollama/ollama:TAG` and push it to the lab registry; FAULT
        (a key of FAULTS) makes it a broken release; PAD_MB adds a layer of that many MiB
        of incompressible bytes (the real image is GBs of CUDA libraries: its download
        takes time)."""
        recipe = images.RECIPES / "ollama/Dockerfile"
        version = tag.split("-")[0].lstrip("v")
        # the labs' cloud CA: the image trusts it as the official image trusts the public
        # CAs, so the cloud stand-in can answer for ollama.com over HTTPS
        files: dict[str, Path | bytes] = {"ollama.py": REPO / "lab/ollama/ollama.py",
                                          "lab-ca.crt": tls.ca(tls.cloud_ca())[0],
                                          **standin_files()}
        archs = " ".join(f"'{lib}={a}'" for lib, a in sorted(cuda_archs(version).items()))
        if pad_mb:
            rng = random.Random(tag)  # noqa: S311 (padding, no secret)
            files["lab-padding"] = b"".join(rng.randbytes(1 << 20) for _ in range(pad_mb))
        dockerfile = recipe.read_text().replace("{version}", version).replace(
            "{registry}", registry).replace(
            "{fault}", f"&& {FAULT_FILES[fault]}" if fault else "").replace(
            "{cuda_archs}", archs).replace(
            "{padding}", "COPY lab-padding /usr/lib/ollama/lab-padding" if pad_mb else "")
        local = images.build_image(f"fleetlab/ollama:{tag}", app_base, files, dockerfile,
                                   log=self.log)
        self._push(local, f"ollama/ollama:{tag}", port)

    def publish_ollama_image(self, tag: str, fault: str | None = None, pad_mb: int = 0) -> None:
        """Publish one more stand-in Ollama tag to a running lab (e.g. a broken release)."""
        state = self.load()
        if state is None:
            raise LabError(f"no lab named {self.name} is up (run: python -m lab up)")
        app_base = images.ensure_debootstrap_image(images.APP_BASE, log=self.log)
        registry = f"http://{state['services_ip']}:{MODEL_REGISTRY_PORT}"
        self.build_ollama_image(tag, app_base, registry, state["spec"]["registry_port"],
                                fault=fault, pad_mb=pad_mb)

    def _push(self, local: str, remote: str, port: int) -> None:
        target = f"127.0.0.1:{port}/{remote}"
        docker("tag", local, target)
        docker("push", "-q", target, timeout=900)
        docker("rmi", target, check=False)

    def _plan_hosts(self, spec: Spec, net: ipaddress.IPv4Network) -> list[Host]:
        from lab.nvidia.hardware import board_doc

        hosts = []
        for role, count in (("gpu", spec.gpu_hosts), ("cpu", spec.cpu_hosts),
                            ("lb", spec.lb_hosts)):
            for i in range(1, count + 1):
                name = f"{role}-{i}"
                address = str(net.network_address + ROLE_OFFSETS[role] + i)
                board: dict = {}
                gpus: list[dict] = []
                suite = images.SUITE
                if role == "gpu":
                    models = spec.gpu_model.split(",")
                    doc = board_doc(name, spec.gpus_per_host, models[min(i, len(models)) - 1])
                    gpus = doc["gpus"]
                    board = {k: v for k, v in doc.items() if k != "gpus"}
                    suites = spec.gpu_suites.split(",")
                    suite = suites[min(i, len(suites)) - 1]
                hosts.append(Host(name, role, address, gpus, board, suite))
        return hosts

    def _reconcile_hosts(self, hosts: list[Host], host_images: dict[str, str],
                         services_ip: str) -> None:
        wanted = {h.container(self.name): h for h in hosts}
        for c in engine.containers("fleetlab.role=host", all=True):
            cname = c["Name"].lstrip("/")
            if c["Config"]["Labels"].get(LABEL) != self.name:
                continue
            host = wanted.get(cname)
            if host is None or c["Config"]["Labels"].get("fleetlab.host") != self._host_label(
                    host, host_images[host.suite], services_ip):
                self.log(f"removing {cname}")
                docker("rm", "-f", "-v", cname)
                docker("volume", "rm", f"{cname}-docker", check=False)
        to_start = []
        for cname, host in wanted.items():
            current = engine.inspect("container", cname)
            if current is None:
                self._create_host(host, host_images[host.suite], services_ip)
                to_start.append(host)
            elif not current["State"]["Running"]:
                to_start.append(host)
        for host in to_start:
            docker("start", host.container(self.name))
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda h: wait_ssh(h.address, h.name), hosts))

    def _host_label(self, host: Host, image: str, services_ip: str) -> str:
        # the resolver is part of the creation spec: a host made before (or without) the
        # lab DNS is recreated; so is a GPU host made before its kernel log (kmsg)
        spec = {"image": image, "address": host.address, "gpus": host.gpus,
                "board": host.board, "resolver": services_ip,
                "kernel_source": self._kernel_source["sources"]}
        if host.gpus:
            spec["kmsg"] = kmsg_digest()
        return json.dumps(spec, sort_keys=True)

    def _create_host(self, host: Host, image: str, services_ip: str) -> None:
        cname = host.container(self.name)
        self.log(f"creating {host.name} ({host.role}, {host.address}, {len(host.gpus)} GPUs)")
        hw = self.dir / "hosts" / host.name
        hw.mkdir(parents=True, exist_ok=True)
        mounts = []
        if host.gpus:
            from lab.nvidia.hardware import pci_tree

            doc = {"gpus": host.gpus, **host.board}
            (hw / "gpus.json").write_text(json.dumps(doc, indent=2) + "\n")
            # the simulated board's PCI devices where a real server has them, in sysfs
            pci = hw / "pci"
            shutil.rmtree(pci, ignore_errors=True)
            for rel, text in pci_tree(doc).items():
                (pci / rel).parent.mkdir(parents=True, exist_ok=True)
                (pci / rel).write_text(text)
            mounts = ["-v", f"{hw / 'gpus.json'}:/etc/fleetlab/gpus.json:ro",
                      "-v", f"{pci}:/sys/bus/pci/devices:ro"]
            kmsg = hw / "kmsg"
            shutil.rmtree(kmsg, ignore_errors=True)
            for name, target in KMSG_FILES.items():
                dest = kmsg / target.lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(images.RECIPES / "host" / name, dest)
            wants = kmsg / "etc/systemd/system/sysinit.target.wants"
            wants.mkdir(parents=True, exist_ok=True)
            (wants / "fleetlab-kmsg.service").symlink_to(KMSG_FILES["fleetlab-kmsg.service"])
        docker("volume", "create", "--label", f"{LABEL}={self.name}", f"{cname}-docker")
        docker("create", "--name", cname, "--hostname", host.name,
               "--network", self.network, "--ip", host.address,
               "--label", f"{LABEL}={self.name}", "--label", "fleetlab.role=host",
               "--label", f"fleetlab.host={self._host_label(host, image, services_ip)}",
               *self._systemd_options(),
               # the lab DNS, not Docker's 127.0.0.11: the host's own Docker engine copies
               # a non-loopback nameserver into its containers, so they resolve the zone too
               "-v", f"{dns.resolv_conf_path(self)}:/etc/resolv.conf:ro",
               "-v", f"{cname}-docker:/var/lib/docker", *mounts, image)
        pub = self.key_path.with_suffix(".pub").read_bytes()
        keys = hw / "authorized_keys"
        keys.write_bytes(pub)
        os.chmod(keys, 0o600)
        docker("cp", str(keys), f"{cname}:/root/.ssh/authorized_keys")
        sources = hw / "fleetlab-debian-kernel.list"
        sources.write_text(self._kernel_source["sources"])
        docker("cp", str(sources), f"{cname}:/etc/apt/sources.list.d/{sources.name}")
        docker("cp", str(self.dir / "apt" / self._kernel_source["key"]),
               f"{cname}:{KERNEL_KEYRING}")
        if host.gpus:
            docker("cp", f"{hw / 'kmsg'}/.", f"{cname}:/")

    # -- operations on one host -----------------------------------------
    def host(self, name: str) -> Host:
        state = self.load()
        if state is None:
            raise LabError(f"no lab named {self.name} is up (run: python -m lab up)")
        for h in state["hosts"]:
            if h["name"] == name:
                return Host(**h)
        names = ", ".join(h["name"] for h in state["hosts"])
        raise LabError(f"{name}: no such host in lab {self.name} (hosts: {names})")

    def cut(self, name: str) -> None:
        """Take HOST off the network: its address stops answering, the host keeps running."""
        host = self.host(name)
        info = engine.inspect("container", host.container(self.name)) or {}
        if self.network in (info.get("NetworkSettings") or {}).get("Networks", {}):
            docker("network", "disconnect", "-f", self.network, host.container(self.name))

    def restore(self, name: str) -> None:
        """Bring HOST back: network reconnected at the same address, container running."""
        host = self.host(name)
        cname = host.container(self.name)
        info = engine.inspect("container", cname)
        if info is None:
            raise LabError(f"{name}: its container is gone; run `python -m lab up` to recreate it")
        if self.network not in info["NetworkSettings"]["Networks"]:
            docker("network", "connect", "--ip", host.address, self.network, cname)
        if not info["State"]["Running"]:
            docker("start", cname)
        wait_ssh(host.address, name)

    def stop(self, name: str) -> None:
        """Shut HOST down cleanly (systemd stops its services)."""
        docker("stop", "-t", "30", self.host(name).container(self.name))

    def kill(self, name: str) -> None:
        """Power HOST off without warning."""
        # Docker's restart policy leaves a killed container off until `restore` starts it.
        docker("kill", self.host(name).container(self.name), check=False)

    def reboot(self, name: str) -> None:
        """Reboot HOST as `systemctl reboot` does (the container starts again by its restart
        policy: /run, /dev and the lab's faults are new), and wait for its sshd."""
        host = self.host(name)
        cname = host.container(self.name)
        info = engine.inspect("container", cname)
        if info is None or not info["State"]["Running"]:
            raise LabError(f"{name}: not running (python -m lab restore {name})")
        started = info["State"]["StartedAt"]
        docker("exec", cname, "systemctl", "reboot", check=False, timeout=60)
        deadline = time.monotonic() + 180
        while True:
            info = engine.inspect("container", cname) or {}
            state = info.get("State") or {}
            if state.get("Running") and state.get("StartedAt") != started:
                break
            if time.monotonic() > deadline:
                raise LabError(f"{name}: did not come back within 180s of `systemctl reboot`")
            time.sleep(0.5)
        wait_ssh(host.address, name)

    def fault(self, name: str, kind: str, gpu: int | None = None,
              container: str | None = None) -> dict:
        """Break HOST as fault KIND would (HOST_FAULTS), in the places the stand-ins read:
        run lab/nvidia/standins/fleetlab_fault.py there. Returns {"kind", "result"}."""
        from lab.nvidia.packages import render_standin

        if kind not in HOST_FAULTS:
            raise LabError(f"fault: {kind!r} is none of {', '.join(HOST_FAULTS)}")
        host = self.host(name)
        if kind in GPU_HOST_FAULTS and not host.gpus:
            raise LabError(f"fault {kind}: {name} is not a GPU host")
        if gpu is not None and not 0 <= gpu < max(1, len(host.gpus)):
            raise LabError(f"fault {kind}: {name} has no GPU {gpu} "
                           f"(GPUs 0..{len(host.gpus) - 1})")
        args = [kind]
        if gpu is not None:
            args += ["--gpu", str(gpu)]
        if container:
            args += ["--container", container]
        script = render_standin("fleetlab_fault.py", package="fleetlab-lab")
        proc = docker("exec", "-i", host.container(self.name), "python3", "-", *args,
                      input=script.encode(), check=False, timeout=360)
        if proc.returncode != 0:
            reason = proc.stderr.decode(errors="replace").strip().splitlines()
            raise LabError(f"fault {kind} on {name}: "
                           f"{reason[-1] if reason else f'exit {proc.returncode}'}")
        return json.loads(proc.stdout.decode().strip().splitlines()[-1])

    def set_fabric_init_seconds(self, name: str, seconds: float) -> None:
        """How long Fabric Manager on GPU host NAME takes to bring the NVLink fabric up from
        its next start ("fabric_init_seconds" of its /etc/fleetlab/gpus.json; 0 when never
        set): its GPUs show Fabric State "In Progress" and CUDA answers 802 until then. The
        file is the host's read-only bind mount, rewritten in place (same inode) so that the
        running host sees it; recreating the host (`up` after a change) resets it to 0."""
        host = self.host(name)
        if not host.gpus:
            raise LabError(f"{name}: not a GPU host")
        if not 0 <= seconds < 86400:
            raise LabError(f"fabric-delay: {seconds}: must be 0 .. 86399 seconds")
        path = self.dir / "hosts" / host.name / "gpus.json"
        try:
            with open(path, "r+", encoding="utf-8") as f:
                doc = json.load(f)
                doc["fabric_init_seconds"] = int(seconds) if float(seconds).is_integer() \
                    else seconds
                f.seek(0)
                f.write(json.dumps(doc, indent=2) + "\n")
                f.truncate()
        except (OSError, ValueError) as exc:
            raise LabError(f"{name}: cannot set the fabric delay in {path}: {exc}") from None

    # -- status / down ----------------------------------------------------
    def status(self) -> dict:
        state = self.load()
        if state is None:
            return {"name": self.name, "up": False, "hosts": [], "endpoints": {}}
        running = {c["Name"].lstrip("/"): c for c in engine.containers(f"{LABEL}={self.name}")}
        svc = state["services_ip"]
        port = state["spec"]["registry_port"]
        hosts = []
        for h in state["hosts"]:
            host = Host(**h)
            c = running.get(host.container(self.name))
            if c is None:
                status = "missing"
            elif not c["State"]["Running"]:
                status = "stopped"
            elif self.network not in c["NetworkSettings"]["Networks"]:
                status = "cut"
            else:
                status = "running"
            hosts.append({"name": host.name, "address": host.address, "role": host.role,
                          "dns": dns.host_name(self.name, host.name),
                          "container": host.container(self.name), "state": status,
                          "gpus": host.gpus, "board": host.board})
        return {
            "name": self.name,
            "up": True,
            "subnet": state["subnet"],
            "ssh_key": str(self.key_path),
            "inventory": str(inventory_path(self.name)),
            "hosts": hosts,
            # the keys the lab signs NVIDIA's stand-in repositories with, per release
            "nvidia_keys": {release: repo["fingerprint"] for release, repo in
                            (state.get("apt") or {}).get("cuda_repos", {}).items()},
            "endpoints": {
                **endpoints(svc, port),
                "dns_server": svc,
                "dns_zone": dns.zone(self.name),
                "front_door_name": (dns.front_door_name(self.name)
                                    if any(h["role"] == "lb" for h in hosts) else None),
            },
        }

    def down(self) -> None:
        """Remove every container, network and volume of this lab, and its state."""
        conts = engine.containers(f"{LABEL}={self.name}")
        engine.remove_all([c["Name"].lstrip("/") for c in conts], "container")
        engine.remove_all(engine.ids("network", f"{LABEL}={self.name}"), "network")
        engine.remove_all(engine.ids("volume", f"{LABEL}={self.name}"), "volume")
        remove_inventory(self)
        if self.state_file.exists():
            self.state_file.unlink()


def kmsg_digest() -> str:
    """The kernel-log recipe of GPU hosts, as a short hash (a change recreates them)."""
    h = hashlib.sha256()
    for name in sorted(KMSG_FILES):
        h.update(name.encode() + b"\0" + (images.RECIPES / "host" / name).read_bytes())
    return h.hexdigest()[:12]


def standin_files() -> dict[str, Path]:
    """The stand-in Ollama's package as build-context names, `standin/<module>.py`: its
    sources only (no __pycache__), each one in the image recipe's hash."""
    return {f"standin/{p.name}": p for p in sorted((REPO / "lab/ollama/standin").glob("*.py"))}


def wait_http(url: str, what: str, timeout: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
            last = str(exc)
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise LabError(f"{what} at {url} did not answer within {timeout:.0f}s ({last})")


def wait_dns(server: str, name: str, address: str, timeout: float) -> None:
    """Poll the DNS server at SERVER until NAME resolves to ADDRESS."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            answer = dns.query_a(server, name)
            if address in answer:
                return
            last = f"answered {answer}"
        except (OSError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise LabError(f"lab DNS at {server}:53 did not resolve {name} within {timeout:.0f}s ({last})")


def wait_ssh(address: str, name: str, timeout: float = SSH_WAIT_S) -> None:
    """Poll until sshd on ADDRESS greets with its banner."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, 22), timeout=3) as s:
                s.settimeout(3)
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.3)
    raise LabError(f"{name}: sshd at {address}:22 did not answer within {timeout:.0f}s ({last})")

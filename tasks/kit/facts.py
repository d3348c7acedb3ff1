"""Facts the deploy reads from a host: small classes, a command and a parser each.

Every command here exits 0 whatever the host's state (pyinfra fails a host whose
fact command exits non-zero), and says what it found in its output instead.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import socket
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pyinfra import host
from pyinfra.api import FactBase

from ollama_fleet.tasks.kit.manifests import MANIFEST_MAX_BYTES
from ollama_fleet.tasks.kit.scripts import script_command


def planning() -> bool:
    """True while pyinfra plans (--dry, change detection): the host is still as it was
    before this run, so checks of what earlier steps produce must wait for execution."""
    return not host.state.is_executing


GPU_FIELDS = ("index", "uuid", "name", "memory.total", "driver_version", "persistence_mode",
              "compute_cap")


def _number(text: str) -> int | None:
    """A number nvidia-smi printed without its unit; None for `[N/A]`, `[Not Supported]`."""
    try:
        return int(float(text))
    except ValueError:
        return None


def _uuid(text: str) -> str:
    if not text.startswith("GPU-"):
        raise ValueError(f"not a GPU UUID: {text!r}")
    return text


# What each `nvidia-smi --query-gpu` field this project asks for becomes in a GPU's dict:
# (key, value from the field's csv,nounits text; ValueError: the line is not a GPU's).
GPU_COLUMNS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "index": ("index", int),
    "uuid": ("uuid", _uuid),
    "name": ("name", str),
    "memory.used": ("memory_used_mib", _number),
    "memory.total": ("memory_total_mib", _number),
    "utilization.gpu": ("utilization_pct", _number),
    "driver_version": ("driver_version", str),
    "persistence_mode": ("persistence_mode", lambda text: text == "Enabled"),
    "compute_cap": ("compute_cap", str),  # "9.0": which builds of Ollama can use the GPU
}


def parse_gpu_csv(lines: Iterable[str], fields: Sequence[str] = GPU_FIELDS
                  ) -> tuple[list[dict[str, Any]], list[str]]:
    """`nvidia-smi --query-gpu=FIELDS --format=csv,noheader,nounits` output -> (a dict per
    GPU, keyed as GPU_COLUMNS says; every other non-empty line, stripped: what nvidia-smi
    said instead, an error). The one reader of that output, for facts and the fleet view."""
    columns = [GPU_COLUMNS[f] for f in fields]
    gpus, other = [], []
    for line in lines:
        parts = [p.strip() for p in line.split(",")]
        try:
            if len(parts) != len(columns):
                raise ValueError("not a GPU's line")
            gpus.append({key: convert(part) for (key, convert), part in zip(columns, parts,
                                                                          strict=True)})
        except ValueError:
            if line.strip():
                other.append(line.strip())
    return gpus, other


def exit_status(lines: list[str]) -> tuple[int | None, list[str]]:
    """A fact's output that ends with `rc=N` (the status of the command it ran) -> (N, the
    other lines); None when no such line (the command was not there to run)."""
    rc = next((int(line[3:]) for line in lines if line.startswith("rc=")), None)
    return rc, [line for line in lines if not line.startswith("rc=")]


class NvidiaGpus(FactBase):
    """The GPUs `nvidia-smi` sees, and whether the driver answers at all.

    Returns `{"installed": bool, "working": bool, "rc": int|None, "gpus": [...],
    "error": str}`; `gpus` items have index, uuid, name, memory_total_mib,
    driver_version, persistence_mode.
    """

    def command(self) -> str:
        return script_command("facts/nvidia-gpus.sh", ",".join(GPU_FIELDS))

    def process(self, output: list[str]) -> dict[str, Any]:
        rc, lines = exit_status(output)
        gpus, errors = parse_gpu_csv(lines)
        return {"installed": rc is not None, "working": rc == 0 and bool(gpus),
                "rc": rc, "gpus": gpus, "error": " ".join(errors)}

    @staticmethod
    def default() -> dict[str, Any]:
        return {"installed": False, "working": False, "rc": None, "gpus": [], "error": ""}


class NvidiaHost(FactBase):
    """What the driver step reads before it acts: the running kernel, NVIDIA's PCI devices
    and the packages apt holds.

    Returns `{"kernel": str, "devices": [{"slot", "device": int, "class": int}],
    "held": [package, ...]}`.
    """

    def command(self) -> str:
        return script_command("facts/nvidia-host.sh")

    def process(self, output: list[str]) -> dict[str, Any]:
        return parse_nvidia_host(output)

    @staticmethod
    def default() -> dict[str, Any]:
        return {"kernel": "", "devices": [], "held": []}


def parse_nvidia_host(lines: list[str]) -> dict[str, Any]:
    """The lines of facts/nvidia-host.sh as NvidiaHost returns them (odd lines skipped)."""
    found: dict[str, Any] = {"kernel": "", "devices": [], "held": []}
    for line in lines:
        key, _, value = line.partition("=")
        if key == "kernel":
            found["kernel"] = value.strip()
        elif key == "held" and value.strip():
            found["held"].append(value.strip())
        elif key == "pci":
            parts = value.split()
            try:
                found["devices"].append({"slot": parts[0], "device": int(parts[1], 16),
                                         "class": int(parts[2], 16)})
            except (IndexError, ValueError):
                continue
    return found


class MissingArchiveComponents(FactBase):
    """The apt sources files whose entries of the OS archive lack some of COMPONENTS."""

    def command(self, codename: str, components: Sequence[str]) -> str:
        return script_command("apt/archive-components.sh", "check", codename, *components)

    def process(self, output: list[str]) -> list[str]:
        return [line[len("missing="):] for line in output if line.startswith("missing=")]

    @staticmethod
    def default() -> list[str]:
        return []


class JsonFile(FactBase):
    """A JSON file's content as a dict; None when absent; `{"__invalid__": text}` if broken."""

    def command(self, path: str) -> str:
        return script_command("facts/json-file.sh", path)

    def process(self, output: list[str]) -> dict[str, Any] | None:
        text = "\n".join(output)
        if text.strip() == "__absent__":
            return None
        if not text.strip():
            return {}
        try:
            value = json.loads(text)
        except ValueError:
            return {"__invalid__": text}
        return value if isinstance(value, dict) else {"__invalid__": text}

    @staticmethod
    def default() -> None:
        return None


class ComposeContainers(FactBase):
    """Containers of a Compose project: service -> {state, health, image, id}; image as
    `docker ps` shows it (the image's id once the reference names another image)."""

    def command(self, project: str) -> str:
        return script_command("facts/compose-containers.sh", project)

    def process(self, output: list[str]) -> dict[str, dict[str, str]]:
        images: dict[str, str] = {}
        result = {}
        for line in output:
            kind, _, rest = line.partition(" ")
            if kind == "ps":
                cid, _, image = rest.partition(" ")
                images[cid] = image.strip()
                continue
            parts = rest.split(" ", 2)  # inspect: id service state (Docker's State, JSON)
            if kind != "inspect" or len(parts) != 3 or not parts[1]:
                continue
            cid, service, state_json = parts
            try:
                state = json.loads(state_json)
            except ValueError:
                continue
            if not isinstance(state, dict):
                continue
            health = state.get("Health") or {}
            result[service] = {"id": cid, "state": str(state.get("Status", "")),
                               "health": str(health.get("Status") or "none"),
                               "image": images.get(cid, "")}
        return result

    @staticmethod
    def default() -> dict:
        return {}


class ContainerGpus(FactBase):
    """UUIDs of the GPUs a running container sees (nvidia-smi inside it)."""

    def command(self, container: str) -> str:
        return (f"docker exec {shlex.quote(container)} nvidia-smi --query-gpu=uuid "
                "--format=csv,noheader,nounits 2>&1; echo rc=$?")

    def process(self, output: list[str]) -> dict[str, Any]:
        rc, lines = exit_status(output)
        gpus, _ = parse_gpu_csv(lines, ("uuid",))
        return {"rc": rc, "uuids": [g["uuid"] for g in gpus],
                "output": " ".join(line.strip() for line in lines if line.strip())}


class Lines(FactBase):
    """A text file's non-empty lines ([] when it is not there; a file that is there but
    cannot be read fails the fact, and so the host: it is not taken for empty)."""

    def command(self, path: str) -> str:
        return f"test ! -e {shlex.quote(path)} || cat {shlex.quote(path)}"

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if line.strip()]

    @staticmethod
    def default() -> list[str]:
        return []


FOREVER_YEAR = 2200  # an /api/ps expiry at or after this: loaded with keep_alive -1


class OllamaModels(FactBase):
    """Models an Ollama instance lists (`/api/tags`): name -> digest; None if it won't answer."""

    def command(self, address: str, port: int) -> str:
        """ADDRESS: where the host reaches its instances (Settings.local_host: loopback, or
        the bind address, such as the Docker bridge's gateway, which loopback is not)."""
        url = shlex.quote(f"http://{address}:{int(port)}/api/tags")
        return f"curl -sS --max-time 10 {url} 2>/dev/null || echo __down__"

    def process(self, output: list[str]) -> dict[str, str] | None:
        text = "\n".join(output).strip()
        if text.endswith("__down__"):
            return None
        try:
            answer = json.loads(text)
            if "error" in answer:  # Ollama failed to read its store: it does not answer
                return None
            return {m["name"]: m["digest"] for m in answer.get("models", [])}
        except (ValueError, AttributeError, KeyError, TypeError):
            return None


class StoredManifests(FactBase):
    """What an Ollama store holds of some manifests (paths relative to the store), and its
    blobs: `{"manifests": {path: text or None}, "blobs": {file name: size}}`
    (templates/facts/stored-manifests.sh). STORE "" is the Docker volume ollama-models'. A
    manifest is read up to one byte past MANIFEST_MAX_BYTES: one that long is refused as
    it is (tasks.kit.manifests), never read whole.
    (tasks.steps.backup's ModelStore describes the whole store, by digests, for backups.)"""

    @staticmethod
    def default() -> dict[str, dict]:
        return {"manifests": {}, "blobs": {}}

    def command(self, store: str, manifests: Sequence[str]) -> str:
        return script_command("facts/stored-manifests.sh", store, MANIFEST_MAX_BYTES, *manifests)

    def process(self, output: list[str]) -> dict[str, dict]:
        manifests: dict[str, str | None] = {}
        blobs: dict[str, int] = {}
        lines = iter(output)
        for line in lines:
            kind, _, rest = line.partition(" ")
            if kind == "manifest":
                manifests[rest] = next(lines, "")
            elif kind == "absent":
                manifests[rest] = None
            elif kind == "blob":
                name, _, size = rest.rpartition(" ")
                if size.isdigit():
                    blobs[name] = int(size)
        return {"manifests": manifests, "blobs": blobs}


class LoadedModels(FactBase):
    """The models an Ollama instance has loaded (`/api/ps`): `name`, `size`, `size_vram`
    (bytes in GPU memory: all of `size` on the GPU, 0 on the CPU) and `forever` (kept for
    good: keep_alive -1 makes Ollama report an expiry some 292 years away); None if it
    won't answer."""

    def command(self, address: str, port: int) -> str:
        url = shlex.quote(f"http://{address}:{int(port)}/api/ps")
        return f"curl -sS --max-time 10 {url} 2>/dev/null || echo __down__"

    def process(self, output: list[str]) -> list[dict[str, Any]] | None:
        text = "\n".join(output).strip()
        if text.endswith("__down__"):
            return None
        try:
            models = json.loads(text).get("models") or []
            return sorted(({"name": m["name"], "size": int(m.get("size") or 0),
                            "size_vram": int(m.get("size_vram") or 0),
                            "forever": int(str(m.get("expires_at", ""))[:4] or 0) >= FOREVER_YEAR}
                           for m in models), key=lambda m: m["name"])
        except (ValueError, AttributeError, KeyError, TypeError):
            return None


class ProvenPlacement(LoadedModels):
    """What `/api/ps` of the Ollama instance at URL says once it has a model loaded: an
    idle instance loads MODEL first (for KEEP_ALIVE), as the GPU inference proof needs a
    loaded model to see where it lives (templates/facts/gpu-proof.sh). Loading changes no
    file, package or container: a run that only does this changes nothing."""

    def command(self, url: str, timeout: int, keep_alive: str, model: str) -> str:
        return script_command("facts/gpu-proof.sh", url, timeout, keep_alive, model)


class SmokeAnswer(FactBase):
    """What the host's own nginx answers a client, asked from the host (loopback needs no
    key and passes nginx_allow): `version` (/api/version's JSON), and with a model
    `generate` (the last line of a streamed generate) and `status`; or `error`."""

    def command(self, url: str, model: str = "") -> str:
        return script_command("facts/smoke.sh", url, model)

    def process(self, output: list[str]) -> dict[str, str]:
        answer: dict[str, str] = {}
        for line in output:
            key, sep, value = line.partition("=")
            if sep and key in ("version", "generate", "status", "error"):
                answer[key] = value
        return answer


class DockerSwarmState(FactBase):
    """The engine's Swarm state (`inactive`, `active`, ...; `none` without Docker)."""

    def command(self) -> str:
        return "docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo none"

    def process(self, output: list[str]) -> str:
        return "".join(output).strip() or "none"


class DockerRuntimes(FactBase):
    """Runtimes and the default runtime Docker reports (`docker info`)."""

    def command(self) -> str:
        return ("docker info --format '{{json .Runtimes}}|{{.DefaultRuntime}}' 2>/dev/null "
                "|| echo '{}|'")

    def process(self, output: list[str]) -> dict[str, Any]:
        runtimes, _, default = "".join(output).partition("|")
        try:
            names = sorted(json.loads(runtimes or "{}"))
        except ValueError:
            names = []
        return {"runtimes": names, "default": default.strip()}


class DockerImages(FactBase):
    """Which of the given images are in the host's Docker image store."""

    def command(self, images: tuple[str, ...]) -> str:
        return script_command("facts/docker-images.sh", *images)

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if line.strip()]

    @staticmethod
    def default() -> list[str]:
        return []


class ComposeStale(FactBase):
    """Services of a Compose project whose container is missing or was made from an
    older version of the Compose file (config hash differs): they need recreating."""

    def command(self, root: str, project: str) -> str:
        return script_command("facts/compose-stale.sh", root, project)

    def process(self, output: list[str]) -> list[str]:
        want, have = {}, {}
        for line in output:
            parts = line.split()
            if len(parts) == 3 and parts[0] in ("want", "have"):
                (want if parts[0] == "want" else have)[parts[1]] = parts[2]
        return sorted(s for s, h in want.items() if have.get(s) != h)

    @staticmethod
    def default() -> list[str]:
        return []


def parse_routes(lines: list[str]) -> dict[str, Any]:
    """Parse `DockerNetwork`'s output: the network's subnets, and the host's IPv4 routes
    (from /proc/net/route: hex, little-endian) as CIDRs with their interface."""
    subnets, routes = [], []
    for line in lines:
        parts = line.split()
        if parts[:1] == ["subnet"] and len(parts) == 2:
            subnets.append(parts[1])
        elif len(parts) >= 8 and parts[0] != "Iface":
            try:
                dest, mask = (socket.inet_ntoa(struct.pack("<I", int(p, 16)))
                              for p in (parts[1], parts[7]))
                network = ipaddress.ip_network(f"{dest}/{mask}")
            except ValueError:
                continue
            if network.prefixlen:  # the default route overlaps everything: not a network
                routes.append((str(network), parts[0]))
    return {"exists": "exists" in lines, "subnets": subnets, "routes": sorted(set(routes))}


class DockerNetwork(FactBase):
    """A Docker network's subnets (if it exists) and the host's IPv4 routes.

    Returns `{"exists": bool, "subnets": [cidr], "routes": [(cidr, interface)]}`.
    """

    def command(self, network: str) -> str:
        return script_command("facts/docker-network.sh", network)

    def process(self, output: list[str]) -> dict[str, Any]:
        return parse_routes(output)


# -- the driver's boot: Secure Boot, persistence mode, reboot needed ---------------------

# What `mokutil --test-key FILE` says after FILE's name (mokutil.c test_key and
# print_skip_message, 0.7.2): only these two mean the kernel trusts the key now.
MOK_ENROLLED = (" is already enrolled", " is already in db")


def parse_secure_boot(lines: Iterable[str]) -> dict[str, Any]:
    """The lines of templates/facts/secure-boot.sh: `{"enabled": bool, "via": "mokutil" |
    "efivars" | "none", "state": mokutil's line, "host": test, "given": test}`; a test is
    None (not made) or `{"enrolled": bool, "said": mokutil's line}`."""
    found: dict[str, Any] = {"enabled": False, "via": "none", "state": "", "host": None,
                             "given": None}
    for line in lines:
        key, _, value = line.partition("=")
        if key == "via":
            found["via"] = value.strip()
        elif key == "sb":
            found["state"] = value.strip()
            found["enabled"] = value.strip() == "SecureBoot enabled"
        elif key in ("host", "given"):
            rc, _, said = value.strip().partition(" ")
            found[key] = {"enrolled": rc == "0" and said.endswith(MOK_ENROLLED),
                          "said": said}
    return found


class SecureBoot(FactBase):
    """Whether Secure Boot is on (mokutil, else the EFI variables) and, when it is, whether
    HOST_CERT (the certificate DKMS signs with on the host) and CERT (DER, the operator's)
    are enrolled in MOK: see `parse_secure_boot`."""

    def command(self, host_cert: str, cert_base64: str = "") -> str:
        return script_command("facts/secure-boot.sh", host_cert, cert_base64)

    def process(self, output: list[str]) -> dict[str, Any]:
        return parse_secure_boot(output)

    @staticmethod
    def default() -> dict[str, Any]:
        return parse_secure_boot([])


NO_PERSISTENCE_FLAG = "--no-persistence-mode"


def persistence_dropin(exec_lines: Sequence[str]) -> str | None:
    """The drop-in that makes nvidia-persistenced keep persistence mode on, from the
    packaged unit's `ExecStart=` lines: its command without `--no-persistence-mode`
    (Ubuntu's unit); None where the packaged unit does not turn it off."""
    commands = [line.partition("=")[2].strip() for line in exec_lines
                if line.startswith("ExecStart=") and line.partition("=")[2].strip()]
    if not commands or NO_PERSISTENCE_FLAG not in commands[-1].split():
        return None
    words = [w for w in commands[-1].split() if w != NO_PERSISTENCE_FLAG]
    return ("# ollama-fleet (nvidia_persistence_mode): the packaged unit turns persistence "
            "mode off\n[Service]\nExecStart=\nExecStart=" + " ".join(words) + "\n")


class PersistencedUnit(FactBase):
    """The packaged nvidia-persistenced unit's ExecStart lines and the deploy's drop-in:
    `{"unit": path or "", "exec": [lines], "dropin": text or None}`."""

    def command(self, unit: str, dropin: str) -> str:
        return script_command("facts/persistenced-unit.sh", unit, dropin)

    def process(self, output: list[str]) -> dict[str, Any]:
        found: dict[str, Any] = {"unit": "", "exec": [], "dropin": None}
        dropin = []
        for line in output:
            key, _, value = line.partition("=")
            if key == "unit":
                found["unit"] = value
            elif key == "exec":
                found["exec"].append(value)
            elif key == "dropin":
                dropin.append(value)
        if dropin:
            found["dropin"] = "\n".join(dropin) + "\n"
        return found

    @staticmethod
    def default() -> dict[str, Any]:
        return {"unit": "", "exec": [], "dropin": None}


def _version_key(version: str) -> list[tuple[int, int | str]]:
    """A kernel release in an order where 6.8.0-100 comes after 6.8.0-99."""
    return [(0, int(part)) if part.isdigit() else (1, part)
            for part in re.findall(r"\d+|[^\d.+~-]+", version)]


def parse_reboot_state(lines: Iterable[str]) -> dict[str, Any]:
    """The lines of templates/facts/reboot-required.sh: `{"running", "kernels": [...],
    "modules": [...], "flag": bool, "packages": [...], "loaded", "library", "smi_rc":
    int|None, "smi"}` (versions '' where unknown)."""
    state: dict[str, Any] = {"running": "", "kernels": [], "modules": [], "flag": False,
                             "packages": [], "loaded": "", "library": "", "smi_rc": None,
                             "smi": ""}
    for line in lines:
        key, _, value = line.strip().partition("=")
        if key in ("running", "loaded", "library", "smi"):
            state[key] = value.strip()
        elif key == "kernel" and value:
            state["kernels"].append(value)
        elif key == "module" and value:
            state["modules"].append(value)
        elif key == "flag":
            state["flag"] = True
        elif key == "pkg" and value:
            state["packages"].append(value)
        elif key == "smi_rc" and value.strip().isdigit():
            state["smi_rc"] = int(value)
    return state


def reboot_required(lines: Iterable[str]) -> list[str]:
    """Why the host must reboot to run what is installed, from the output LINES of
    templates/facts/reboot-required.sh (script_command("facts/reboot-required.sh"), no
    arguments); [] when it need not. One reason a line: the OS's flag (and the packages
    that set it), a newer kernel installed than the one running, the loaded NVIDIA module
    older or newer than the userspace driver installed (nvidia-smi's "Driver/library
    version mismatch")."""
    state = parse_reboot_state(lines)
    reasons = []
    if state["flag"]:
        asked = f" ({', '.join(state['packages'])})" if state["packages"] else ""
        reasons.append(f"/run/reboot-required{asked}")
    newest = max(state["kernels"], key=_version_key, default="")
    if newest and state["running"] and _version_key(newest) > _version_key(state["running"]):
        reasons.append(f"kernel {newest} installed, {state['running']} running")
    if state["loaded"] and state["library"] and state["loaded"] != state["library"]:
        reasons.append(f"NVIDIA module {state['loaded']} loaded, driver {state['library']} "
                       "installed")
    elif "Driver/library version mismatch" in state["smi"]:
        reasons.append("nvidia-smi: Driver/library version mismatch (the loaded NVIDIA "
                       "module is not the installed driver's)")
    return reasons


class RebootRequired(FactBase):
    """`reboot_required`'s reasons for this host ([]: no reboot needed)."""

    def command(self) -> str:
        return script_command("facts/reboot-required.sh")

    def process(self, output: list[str]) -> list[str]:
        return reboot_required(output)

    @staticmethod
    def default() -> list[str]:
        return []

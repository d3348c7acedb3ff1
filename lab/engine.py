"""Thin wrapper over the Docker CLI of the machine that runs the lab."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence


class LabError(Exception):
    """A problem the operator can act on; the CLI prints it as one line."""


def docker(*args: str, input: bytes | None = None, check: bool = True,
           timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `docker ARGS`; raise LabError with docker's own message when it fails."""
    full_env = None
    if env:
        full_env = {**os.environ, **env}
    try:
        proc = subprocess.run(["docker", *args], input=input, capture_output=True,
                              timeout=timeout, env=full_env)
    except FileNotFoundError as exc:
        raise LabError("docker: command not found (`make machine` installs docker.io)") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"docker {args[0]}: no answer within {timeout:.0f}s") from exc
    if check and proc.returncode != 0:
        # docker's reason, not its closing "See 'docker run --help'." hint
        message = [line for line in proc.stderr.decode(errors="replace").strip().splitlines()
                   if line.strip() and not line.startswith("See 'docker")]
        last = message[-1] if message else f"exit {proc.returncode}"
        raise LabError(f"docker {' '.join(args[:2])}: {last}")
    return proc


def out(*args: str, **kwargs) -> str:
    return docker(*args, **kwargs).stdout.decode().strip()


def require_engine() -> None:
    """Fail with one clear line when no Docker engine answers."""
    proc = docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=30)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise LabError("no Docker engine answers (start dockerd, or run `make machine`, which "
                       "installs and starts one)")


def image_exists(ref: str) -> bool:
    return docker("image", "inspect", ref, check=False).returncode == 0


def image_label(ref: str, label: str) -> str | None:
    proc = docker("image", "inspect", "--format", "{{json .Config.Labels}}", ref, check=False)
    if proc.returncode != 0:
        return None
    labels = json.loads(proc.stdout or b"null") or {}
    return labels.get(label)


def containers(label: str, all: bool = True) -> list[dict]:
    """Containers carrying LABEL (key=value), as `docker inspect` dicts."""
    args = ["ps", "-q", "--filter", f"label={label}"]
    if all:
        args.insert(1, "-a")
    ids = out(*args).split()
    if not ids:
        return []
    return json.loads(out("inspect", *ids))


def inspect(kind: str, name: str) -> dict | None:
    proc = docker(kind, "inspect", name, check=False)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout)
    return data[0] if data else None


def ids(kind: str, label: str) -> list[str]:
    """Names of networks or volumes carrying LABEL."""
    fmt = "{{.Name}}"
    return out(kind, "ls", "--filter", f"label={label}", "--format", fmt).split()


def remove_all(names: Sequence[str], kind: str) -> None:
    if names:
        docker(kind, "rm", *(["-f"] if kind == "container" else []), *names, check=False)

"""The Ollama model store, owned here: where it is on a host, how the instances see it,
and how a step on the host finds its files. Every step asks this module, so the store
is decided in one place (`ollama_models_path`, else the named volume).

It holds Ollama's own layout (`models/manifests/<registry>/<namespace>/<model>/<tag>`,
`models/blobs/sha256-<hex>`); what it holds is read by the facts in tasks/kit/facts.py
(StoredManifests) and tasks/steps/backup.py (ModelStore).
"""

from __future__ import annotations

from typing import Any

from ollama_fleet.tasks.kit.settings import Settings

VOLUME = "ollama-models"  # the named volume when ollama_models_path is empty
MOUNT = "/root/.ollama"  # where every instance (and the fan-out server, read-only) sees it
MODELS = f"{MOUNT}/models"  # OLLAMA_MODELS inside the instances


def source(settings: Settings) -> str:
    """What Compose mounts at MOUNT: the host directory, else the volume's name."""
    return settings.ollama_models_path or VOLUME


def bind_mounted(settings: Settings) -> bool:
    """Whether the store is a host directory (else the volume, which Compose declares)."""
    return bool(settings.ollama_models_path)


def models_dir(settings: Settings) -> str:
    """The store's models/ directory on the host when it is a host directory; "" when it is
    the volume (the scripts on the host ask Docker where the volume is)."""
    return f"{settings.ollama_models_path}/models" if settings.ollama_models_path else ""


def host_models_dir(target: Any, settings: Settings) -> str:
    """TARGET's models/ directory (blobs/ and manifests/), asked of Docker for the volume;
    ConnectionError when the volume is missing."""
    if settings.ollama_models_path:
        return models_dir(settings)
    ok, output = target.run_shell_command(
        f"docker volume inspect -f '{{{{.Mountpoint}}}}' {VOLUME}", _timeout=60)
    if not ok or not output.stdout.strip():
        raise ConnectionError(f"the volume {VOLUME} is missing: {output.stderr}")
    return f"{output.stdout.strip()}/models"

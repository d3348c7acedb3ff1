"""The configured models, pulled through Ollama's API when missing.

Guarantees: a model already listed by every instance is not touched; a pull that
streams an `{"error": ...}` line fails the host even though the HTTP status was
200; afterwards every instance lists every configured model.
"""

from __future__ import annotations

import json
import shlex

from pyinfra import host
from pyinfra.api import operation

from tasks.facts import OllamaModels, planning
from tasks.report import fail_command
from tasks.settings import Settings

PULL_TIMEOUT_S = 6 * 3600


def canonical(name: str) -> str:
    """Ollama's display name: `:latest` added when no tag is given."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def pull_command(port: int, model: str) -> str:
    """POST /api/pull and fail on an error line or a stream that does not end in success."""
    body = shlex.quote(json.dumps({"model": model}))
    return (f"out=$(curl -sS -N --max-time {PULL_TIMEOUT_S} -X POST "
            f"http://127.0.0.1:{port}/api/pull -d {body}) "
            f"|| {{ echo \"pull {model}: $out\" >&2; exit 1; }}; "
            "err=$(printf '%s\\n' \"$out\" | grep '\"error\"' | tail -n 1); "
            f"if [ -n \"$err\" ]; then echo \"pull {model}: $err\" >&2; exit 1; fi; "
            "printf '%s\\n' \"$out\" | tail -n 1 | grep -q '\"success\"' "
            f"|| {{ echo \"pull {model}: stream ended without success\" >&2; exit 1; }}")


@operation()
def present(settings: Settings):
    """
    Pull every configured model (the host's and those its app services name) that an
    instance does not list (instances share one store).

    + settings: the host's validated settings
    """
    ports = [port for _, port in settings.instance_ports()]
    wanted = [canonical(m) for m in settings.all_models]
    listed = host.get_fact(OllamaModels, port=ports[0])
    if listed is None and not planning():
        yield fail_command(f"Ollama on port {ports[0]} does not answer /api/tags")
        return
    missing = [m for m in wanted if m not in (listed or {})]
    if not missing:
        host.noop(f"{len(wanted)} models present" if wanted else "no models configured")
        return
    for model in missing:
        yield pull_command(ports[0], model)


@operation()
def listed_everywhere(settings: Settings):
    """
    Fail unless every instance lists every configured model.

    + settings: the host's validated settings
    """
    if planning():
        host.noop("models are checked once they are pulled")
        return

    wanted = {canonical(m) for m in settings.all_models}
    for n, port in settings.instance_ports():
        listed = host.get_fact(OllamaModels, port=port) or {}
        missing = sorted(wanted - set(listed))
        if missing:
            yield fail_command(f"instance {n} (port {port}) does not list {missing}")
            return
    host.noop(f"every instance lists {len(wanted)} models")


def pull_models(settings: Settings) -> None:
    present(name="Configured models pulled", settings=settings, _timeout=PULL_TIMEOUT_S + 60)
    listed_everywhere(name="Every instance lists every model", settings=settings)

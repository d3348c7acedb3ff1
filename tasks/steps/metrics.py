"""GPU metrics: NVIDIA's DCGM exporter on each GPU server, off by default.

Request counts come from nginx itself (`nginx_status`: stub_status on loopback); GPU
metrics from the exporter, its own Compose project beside the stack so that turning
it on or off never touches Ollama. Turned off, its containers are taken down.
"""

from __future__ import annotations

from ollama_fleet.tasks.kit.compose import checked_files, removed, running, templates
from ollama_fleet.tasks.kit.paths import TEMPLATES
from ollama_fleet.tasks.kit.settings import Settings

PROJECT = "ollama-metrics"


def metrics_dir(settings: Settings) -> str:
    return f"{settings.ollama_stack_dir}/metrics"


def render_metrics(settings: Settings) -> str:
    return templates(TEMPLATES / "metrics").get_template("compose.yaml.j2").render(
        s=settings, project=PROJECT)


def deploy_metrics(settings: Settings) -> None:
    """The exporter checked then live on GPU servers that ask for it; gone otherwise."""
    root = metrics_dir(settings)
    if not (settings.nvidia_exporter and settings.gpu_count):
        removed(name="No GPU metrics exporter", root=root, project=PROJECT)
        return
    installed = checked_files(name="GPU metrics exporter Compose file (checked, then live)",
                              root=root, wanted={"compose.yaml": render_metrics(settings)},
                              nginx_image=None)
    running(name="GPU metrics exporter running", root=root, project=PROJECT,
            services=["dcgm-exporter"], files_op=installed, nginx_container=None,
            drain_timeout=0)

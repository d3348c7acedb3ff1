"""A fresh GPU server to a serving Ollama stack: `pyinfra -y INVENTORY deploy.py`.

The order of work, top to bottom. Every host's data is validated before any
operation runs on any host; each step lives in its own module under tasks/.
"""

from pyinfra import host

from tasks import apps, docker, front_door, metrics, models, nvidia_driver, nvidia_toolkit, stack
from tasks.report import report_failures
from tasks.settings import current_settings

settings = current_settings()  # stops the whole run on bad inventory data, hosts untouched
report_failures()  # a failing host stops alone, named with its step

nvidia_driver.install_driver(settings)  # GPU servers only; may reboot into the new driver
docker_config = docker.install_docker(settings)
toolkit_config = nvidia_toolkit.install_container_toolkit(settings)  # GPU servers only
docker.restart_docker(docker_config + toolkit_config)

if "gpu_servers" in host.groups:
    stack.deploy_stack(settings)
    models.pull_models(settings)
    apps.deploy_apps(settings)  # after Ollama is healthy and its models are present
    metrics.deploy_metrics(settings)  # optional GPU metrics (off by default)

if "lb_servers" in host.groups:
    front_door.deploy_front_door(settings)

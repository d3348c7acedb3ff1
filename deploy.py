"""A fresh GPU server to a serving Ollama stack: `pyinfra -y INVENTORY deploy.py`.

The order of work, top to bottom. Every host's data is validated before any
operation runs on any host; each step lives in its own module under tasks/.
"""

from pyinfra import host

from tasks import docker, models, nvidia_driver, nvidia_toolkit, stack
from tasks.report import report_failures
from tasks.settings import current_settings

settings = current_settings()  # stops the whole run on bad inventory data, hosts untouched
report_failures()  # a failing host stops alone, named with its step

if "gpu_servers" in host.groups:
    nvidia_driver.install_driver(settings)
    docker_config = docker.install_docker(settings)
    toolkit_config = nvidia_toolkit.install_container_toolkit(settings)
    docker.restart_docker(docker_config + toolkit_config)
    stack.deploy_stack(settings)
    models.pull_models(settings)

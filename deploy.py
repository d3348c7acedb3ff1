"""A fresh GPU server to a serving Ollama stack: `pyinfra -y INVENTORY deploy.py`.

The order of work, top to bottom. Every host's data is validated before any
operation runs on any host, and the fleet (hosts, groups, addresses) is built there,
once, and handed to the steps that need other hosts; each step lives in its own
module under tasks/steps/.
"""

from pyinfra import host

from ollama_fleet.tasks.engine import probe
from ollama_fleet.tasks.kit import lock
from ollama_fleet.tasks.kit.distributions import distribution
from ollama_fleet.tasks.kit.fleet import current_fleet, current_settings
from ollama_fleet.tasks.kit.report import report_failures
from ollama_fleet.tasks.steps import (
    apps,
    docker,
    front_door,
    gpu_ready,
    health,
    inference,
    metrics,
    models,
    nvidia_driver,
    nvidia_toolkit,
    packages,
    stack,
)

# the first call validates every host: bad inventory data stops the whole run, hosts untouched
settings, fleet = current_settings(), current_fleet()
report_failures()  # a failing host stops alone, named with its step
lock.take("deploy.py")  # one run at a time per host: a second one stops here, nothing changed
probe.prefetch_remembered()  # what the last run read of this host, asked in one round trip

dist = distribution()  # the host's row of tasks/kit/distributions.py; another OS stops the run
packages.prerequisites()  # curl, gnupg, ca-certificates: minimal images lack them
nvidia_driver.install_driver(settings, dist)  # GPU servers only; may reboot into the new driver
docker.install_docker(settings, dist)
toolkit_changes = nvidia_toolkit.install_container_toolkit(settings, dist)  # GPU servers only
# daemon.json's one writer: Docker's keys merged, nvidia-ctk's runtime on the staged copy
daemon_config = docker.configure_daemon(settings)
docker.restart_docker([daemon_config, *toolkit_changes])
gpu_ready.order_boot(settings, dist)  # GPU servers: Docker waits for the GPUs at every boot

if "gpu_servers" in host.groups:
    apps.check_network(settings)  # app_network overlaps no route: the stack's nginx trusts it
    stack.deploy_stack(settings, fleet)  # its nginx trusts the front doors, serves the peers
    models.pull_models(settings, fleet)  # fan-out waves over the fleet's gpu_servers
    models.warm_models(settings)  # loaded before the host serves again: no user pays the load
    inference.prove_gpu_inference(settings)  # each GPU instance: a model in GPU memory
    health.watch_health(settings, fleet, dist)  # from now on: sick instances out, healed
    apps.deploy_apps(settings)  # after Ollama is healthy and its models are present
    metrics.deploy_metrics(settings)  # optional GPU metrics (off by default)

if "lb_servers" in host.groups:
    front_door.deploy_front_door(settings, fleet)  # upstreams: the fleet's gpu_servers

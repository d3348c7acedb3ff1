"""The roll's first step for a batch: `pyinfra -y INVENTORY tasks/deploys/pull.py --limit ...`.

Run by `ollama-fleet INVENTORY roll` while the batch still serves, before it is drained
from the front door: every image the stack will run is downloaded (and checked present),
so the time a host is out of the front door holds no download. A pull that fails stops
the roll with no host drained. The host's data is validated like deploy.py does.
"""

from pyinfra import host

from ollama_fleet.tasks.kit import lock
from ollama_fleet.tasks.kit.fleet import current_settings
from ollama_fleet.tasks.kit.report import report_failures
from ollama_fleet.tasks.steps import stack

settings = current_settings()  # stops the run on bad inventory data, hosts untouched
report_failures()
lock.take("ollama-fleet roll (pull)")  # one run at a time per host (tasks/kit/lock.py)

if "gpu_servers" in host.groups:
    # an image that would leave the GPUs idle stops here, before the batch is drained
    stack.image_fits_gpus(name="Ollama image has a build for these GPUs", settings=settings)
    stack.pull_images(settings)

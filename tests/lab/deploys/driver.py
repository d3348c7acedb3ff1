"""The driver step alone, as deploy.py runs it: validation, the run lock, prerequisites,
then tasks.steps.nvidia_driver. For Debian 12 lab hosts, where the deploy refuses Docker
(bookworm's archive has no Compose v2): the driver is what they test."""

from ollama_fleet.tasks.kit import lock
from ollama_fleet.tasks.kit.distributions import distribution
from ollama_fleet.tasks.kit.fleet import current_settings
from ollama_fleet.tasks.kit.report import report_failures
from ollama_fleet.tasks.steps import nvidia_driver, packages

settings = current_settings()
report_failures()
lock.take("the driver step")
dist = distribution()
packages.prerequisites()
nvidia_driver.install_driver(settings, dist)

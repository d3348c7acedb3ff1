"""The driver step alone, as deploy.py runs it: validation, the run lock, prerequisites,
then tasks.nvidia_driver. For Debian 12 lab hosts, where the deploy refuses Docker
(bookworm's archive has no Compose v2): the driver is what they test."""

from tasks import lock, nvidia_driver, packages
from tasks.distributions import distribution
from tasks.fleet import current_settings
from tasks.report import report_failures

settings = current_settings()
report_failures()
lock.take("the driver step")
dist = distribution()
packages.prerequisites()
nvidia_driver.install_driver(settings, dist)

"""Reboot the host the way a deploy does, and let pyinfra confirm it came back."""

from pyinfra.operations import server

server.reboot(name="Reboot the server", delay=3, interval=1, reboot_timeout=120)

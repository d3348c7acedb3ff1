"""Defaults for every GPU (and CPU-only) Ollama server."""

# Driver branch pinned for the whole fleet (held: upgrades cannot change it); Ollama needs
# 550 or newer. 580 is in NVIDIA's debian12 repository and Ubuntu's archive; NVIDIA's
# debian13 repository carries 590 and later only: set 590 for Debian 13 hosts.
nvidia_driver_branch = 580

# Container Toolkit packages are pinned together to this version (1.18 and later: a
# `systemctl daemon-reload` leaves running instances their GPUs).
nvidia_toolkit_version = "1.18.2"

# Pin images by tag; a rolling update changes this line.
ollama_image = "ollama/ollama:0.6.8"
nginx_image = "nginx:1.27"

# Generations can run for minutes; keep models loaded for 30 minutes after use.
ollama_keep_alive = "30m"

# Models cross the internet once: one server pulls, the others copy from it over the
# LAN. The servers are named, not numbered, here, so say which network may copy.
ollama_fanout_allow = ["198.51.100.0/24"]  # a documentation range: put your LAN here

# Behind a front door only it, loopback and the host's app services may call the API;
# widen it with addresses or networks ([] lets everyone in):
# nginx_allow = ["203.0.113.0/24"]

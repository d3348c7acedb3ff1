"""Defaults for every GPU (and CPU-only) Ollama server."""

# Driver branch, kept for the whole fleet (upgrades cannot change it); Ollama needs 550 or
# newer. Unset, each host takes its distribution's: 580 (the long-term branch) on Debian 12
# and Ubuntu, 590 on Debian 13, whose NVIDIA repository carries 590 and later only.
# nvidia_driver_branch = 580

# Container Toolkit packages are pinned together to this version (1.18 and later: a
# `systemctl daemon-reload` leaves running instances their GPUs).
nvidia_toolkit_version = "1.19.1"

# Pin images by tag; a rolling update changes this line.
ollama_image = "ollama/ollama:0.32.15"
nginx_image = "nginx:1.30"

# Generations can run for minutes; keep models loaded for 30 minutes after use.
ollama_keep_alive = "30m"

# Models cross the internet once: one server pulls, the others copy from it over the
# LAN. The servers are named, not numbered, here, so say which network may copy.
ollama_fanout_allow = ["198.51.100.0/24"]  # a documentation range: put your LAN here

# Behind a front door only it, loopback and the host's app services may call the API;
# widen it with addresses or networks ([] lets everyone in):
# nginx_allow = ["203.0.113.0/24"]

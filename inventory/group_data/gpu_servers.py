"""Defaults for every GPU (and CPU-only) Ollama server."""

# Driver branch pinned for the whole fleet; Ollama needs 550 or newer.
nvidia_driver_branch = 570

# Container Toolkit packages are pinned together to this version.
nvidia_toolkit_version = "1.17.8"

# Pin images by tag; a rolling update changes this line.
ollama_image = "ollama/ollama:0.6.8"
nginx_image = "nginx:1.27"

# Generations can run for minutes; keep models loaded for 30 minutes after use.
ollama_keep_alive = "30m"

# Models cross the internet once: one server pulls, the others copy from it over the
# LAN. The servers are named, not numbered, here, so say which network may copy.
ollama_fanout_allow = ["10.0.0.0/16"]

# Behind a front door only it, loopback and the host's app services may call the API;
# widen it with addresses or networks ([] lets everyone in):
# nginx_allow = ["10.0.1.0/24"]

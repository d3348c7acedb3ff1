"""Defaults for the fleet's front doors (lb_servers): the gate in front of the fleet.

Secrets stay on the machine you run pyinfra from, never in this repository; the
paths below are examples. Knobs: README.md, "The gate".
"""

# TLS with your own certificate and key (paths on this machine):
# nginx_tls = "files"
# nginx_tls_cert = "~/fleet-secrets/front.crt"
# nginx_tls_key = "~/fleet-secrets/front.key"

# API keys, one `name key` line each (a key: 32 or more characters, `openssl rand -hex 32`);
# edit the file and re-run to rotate:
# nginx_api_keys = {"file": "~/fleet-secrets/api-keys"}
# nginx_admin_keys = {"file": "~/fleet-secrets/admin-keys"}

# Requests per key (or per client address without keys) before 429:
# nginx_rate_limit = "10r/s"

"""An example production fleet. Copy it, put in your servers, run:

    pyinfra inventory/prod.py deploy.py              # from a checkout
    ollama-fleet inventory/prod.py check             # installed: validate, touching nothing
    ollama-fleet inventory/prod.py deploy            # installed: the same deploy

Every module-level list is a pyinfra group; data set per host here overrides
group_data/<group>.py, which overrides group_data/all.py. Knobs: README.md.

The names (example.net) and the address (192.0.2.0/24, RFC 5737) are for documentation
only: put in yours. Secrets are never written here: the front door's certificate, key
and API keys are named by reference (a file on the machine you deploy from, or an
environment variable there) and read when the deploy runs.
"""

gpu_servers = [
    # Four H100s: one Ollama instance per GPU behind the host's nginx; the fleet's larger
    # model, kept loaded, and an embedding model.
    ("gpu-a1.example.net", {"gpu_count": 4, "ollama_models": ["llama3.2:1b", "all-minilm"],
                            "ollama_warm_models": ["llama3.2:1b"]}),
    # Two L40S, one instance holding both (large models that span GPUs).
    ("gpu-a2.example.net", {"gpu_count": 2, "ollama_topology": "shared",
                            "ollama_models": ["llama3.2:1b", "all-minilm"],
                            "ollama_warm_models": ["llama3.2:1b"]}),
    # A CPU-only server serves a small model and the embeddings; it gets no NVIDIA
    # software. The front door sends each request to the hosts that serve the model it
    # names (weighted by their instances: gpu-a1 takes four times gpu-a2's share of
    # llama3.2:1b), so the hosts need not serve the same models.
    ("cpu-b1.example.net", {"gpu_count": 0, "ollama_models": ["tinyllama", "all-minilm"]}),
]

# The fleet's front door (nginx in front of every gpu_servers host), and its gate: the
# fleet's one entry, so TLS and API keys are here (the GPU hosts behind it let only the
# front door in, and need neither).
lb_servers = [
    ("lb-1.example.net", {
        # By address: the GPU hosts' nginx lets only their front doors in (nginx allows
        # addresses, not names; a front door reached by name needs nginx_allow on them).
        "ssh_hostname": "192.0.2.10",
        # TLS with your certificate for the name clients use (here llm.example.net) and
        # its key: paths on the machine you deploy from; the key is kept mode 600 on the
        # host. Plain HTTP answers 308 to https.
        "nginx_tls": "files",
        "nginx_tls_cert": "~/fleet-secrets/llm.example.net.crt",
        "nginx_tls_key": "~/fleet-secrets/llm.example.net.key",
        # API keys, one `name key` line each (a key: `openssl rand -hex 32`); edit the file
        # and re-run to rotate them.
        "nginx_api_keys": {"file": "~/fleet-secrets/api-keys"},
        # Admin keys (pull, delete, copy, create, push), from an environment variable of
        # keys separated by spaces, as a CI secret store would set it.
        "nginx_admin_keys": {"env": "FLEET_ADMIN_KEYS"},
    }),
]

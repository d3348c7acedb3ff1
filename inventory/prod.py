"""An example production fleet. Copy it, put in your servers, run:

    pyinfra inventory/prod.py deploy.py

Every module-level list is a pyinfra group; data set per host here overrides
group_data/<group>.py, which overrides group_data/all.py. Knobs: README.md.
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

# The fleet's front door (nginx in front of every gpu_servers host).
lb_servers = [
    # By address: the GPU hosts' nginx lets only their front doors in (nginx allows
    # addresses, not names; a front door reached by name needs nginx_allow on them).
    ("lb-1.example.net", {"ssh_hostname": "10.0.0.5"}),
]

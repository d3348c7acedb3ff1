"""An example production fleet. Copy it, put in your servers, run:

    pyinfra inventory/prod.py deploy.py

Every module-level list is a pyinfra group; data set per host here overrides
group_data/<group>.py, which overrides group_data/all.py. Knobs: README.md.
"""

gpu_servers = [
    # Four H100s: one Ollama instance per GPU behind the host's nginx.
    ("gpu-a1.example.net", {"gpu_count": 4}),
    # Two L40S, one instance holding both (large models that span GPUs).
    ("gpu-a2.example.net", {"gpu_count": 2, "ollama_topology": "shared"}),
    # A CPU-only server serves the fleet's small models too; it gets no NVIDIA software.
    # Behind one front door every host serves the same models (group_data/all.py): the
    # front door sends any request to any host, and the deploy refuses a fleet where a
    # host lacks a model the others serve.
    ("cpu-b1.example.net", {"gpu_count": 0}),
]

# The fleet's front door (nginx in front of every gpu_servers host).
lb_servers = [
    ("lb-1.example.net", {}),
]

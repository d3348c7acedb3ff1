"""ollama-fleet: fresh GPU servers to a serving Ollama fleet, with pyinfra.

One package, the same installed as checked out: `ollama_fleet.tasks` (the deploy's
steps, the kit they share, the pyinfra engine patches, the entry deploys),
`ollama_fleet.fleetctl` (the `ollama-fleet` command), the templates, and the entry
files `deploy.py` and `config.py`. In a checkout this folder links to the top-level
deploy.py, config.py, tasks/, fleetctl/ and templates/; the wheel carries their copies.
"""

__version__ = "0.2.0"

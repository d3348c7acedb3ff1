"""`ollama-fleet` / `python -m ollama_fleet`: see fleetctl/cli.py."""

from ollama_fleet.fleetctl.__main__ import run

if __name__ == "__main__":
    run()

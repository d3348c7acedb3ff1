"""tasks.steps.health: the agent's configuration, built as data from the inventory."""

from __future__ import annotations

from ollama_fleet.tasks.kit.fleet import build
from ollama_fleet.tasks.steps.health import agent_config


def config(models: list[str], warm: list[str]) -> dict:
    fleet = build([("gpu-1", ["gpu_servers"], {"gpu_count": 2, "ssh_hostname": "10.0.0.1",
                                               "ollama_models": models,
                                               "ollama_warm_models": warm}),
                   ("lb-1", ["lb_servers"], {"ssh_hostname": "10.0.0.9"})])
    return agent_config(fleet.member("gpu-1").settings, fleet, "gpu-1", fabricmanager=False)


def test_the_proof_model_is_named_as_ollama_lists_it_whatever_the_inventory_spells():
    """Another spelling of the same model changes nothing on the host (the second run of
    tests/lab/test_models.py spells it five ways)."""
    plain = config(["llama3.2:1b"], [])
    assert (plain["proof_model"], plain["proof_warm"]) == ("llama3.2:1b", False)
    for spelling in ("LLAMA3.2:1B", "registry.ollama.ai/library/llama3.2:1b",
                     "https://registry.ollama.ai/library/llama3.2:1b"):
        assert config([spelling], []) == plain, spelling
    warm = config(["llama3.2:1b"], ["Library/Llama3.2:1B"])
    assert (warm["proof_model"], warm["proof_warm"]) == ("llama3.2:1b", True)


def test_no_model_no_proof():
    assert config([], [])["proof_model"] is None

"""The roll's plan: canary alone first, then batches in inventory order."""

from __future__ import annotations

import pytest

from fleetctl.inventory import UsageError
from fleetctl.roll import RollHost, batch_size, batches, gate_key
from tasks.settings import settings_for


def hosts(n: int) -> list[RollHost]:
    return [RollHost(f"gpu-{i}", f"10.0.0.{i}", 80, "tinyllama", "ollama/ollama:0.6.8")
            for i in range(1, n + 1)]


@pytest.mark.parametrize("n, size, plan", [
    (1, 1, [["gpu-1"]]),
    (3, 1, [["gpu-1"], ["gpu-2"], ["gpu-3"]]),
    (5, 2, [["gpu-1"], ["gpu-2", "gpu-3"], ["gpu-4", "gpu-5"]]),
    (4, 10, [["gpu-1"], ["gpu-2", "gpu-3", "gpu-4"]]),
    (0, 1, []),
])
def test_canary_first_then_batches_in_inventory_order(n, size, plan):
    assert [[h.name for h in b] for b in batches(hosts(n), size)] == plan


@pytest.mark.parametrize("text, n, size", [
    ("1", 10, 1), ("3", 10, 3), ("50%", 11, 5), ("25%", 10, 3), ("1%", 10, 1),
    ("100%", 10, 9), ("100%", 1, 1),
])
def test_batch_size_is_hosts_or_a_share_of_those_after_the_canary(text, n, size):
    assert batch_size(text, n) == size


@pytest.mark.parametrize("text", ["0", "-1", "0%", "101%", "half", "%"])
def test_a_bad_batch_size_is_refused(text):
    with pytest.raises(UsageError, match=f"--batch-size {text}: "):
        batch_size(text, 10)


def test_the_smoke_test_carries_a_key_the_hosts_gate_accepts(monkeypatch):
    monkeypatch.setenv("FLEET_KEYS", "first-key-0123456789, second-key-0123456789")
    keyed = settings_for("gpu-1", {"gpu_count": 1, "nginx_api_keys": {"env": "FLEET_KEYS"}})
    assert gate_key("gpu-1", keyed) == "first-key-0123456789"
    assert gate_key("gpu-1", settings_for("gpu-1", {"gpu_count": 1})) is None
    monkeypatch.delenv("FLEET_KEYS")
    with pytest.raises(UsageError, match="gpu-1: nginx_api_keys: environment "
                                         "variable FLEET_KEYS is not set"):
        gate_key("gpu-1", keyed)

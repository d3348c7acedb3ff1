"""The roll's plan: canary alone first, then batches in inventory order; bad input stops it."""

from __future__ import annotations

import pytest

from tasks.rolling_update import FleetHost, batches, main, parse_data


def hosts(n: int) -> list[FleetHost]:
    return [FleetHost(f"gpu-{i}", f"10.0.0.{i}", 80, "tinyllama", "ollama/ollama:0.6.8")
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


def test_data_is_parsed_like_pyinfra():
    assert parse_data(["ollama_image=ollama/ollama:0.7.0", "ollama_health_timeout=20",
                       'front_door_drained=["gpu-1"]']) == {
        "ollama_image": "ollama/ollama:0.7.0", "ollama_health_timeout": 20,
        "front_door_drained": ["gpu-1"]}


@pytest.mark.parametrize("args, message", [
    (["inventory/prod.py", "--batch-size", "0"], "--batch-size 0: must be 1 or more"),
    (["inventory/nope.py"], "inventory/nope.py: no such inventory file"),
    (["inventory/prod.py", "--limit", "gpu-z"], "--limit gpu-z: not in gpu_servers"),
])
def test_bad_arguments_are_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_bad_inventory_data_stops_before_anything(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["inventory/prod.py", "--data", "ollama_topology=mesh"])
    assert "ollama_topology: Input should be 'per_gpu', 'shared' or 'cpu'" in str(exc.value)


def test_the_smoke_test_carries_a_key_the_hosts_gate_accepts(monkeypatch):
    from tasks.rolling_update import gate_key
    from tasks.settings import settings_for

    monkeypatch.setenv("FLEET_KEYS", "first-key-0123456789, second-key-0123456789")
    keyed = settings_for("gpu-1", {"gpu_count": 1, "nginx_api_keys": {"env": "FLEET_KEYS"}})
    assert gate_key("gpu-1", keyed) == "first-key-0123456789"
    assert gate_key("gpu-1", settings_for("gpu-1", {"gpu_count": 1})) is None
    monkeypatch.delenv("FLEET_KEYS")
    with pytest.raises(SystemExit, match="rolling_update: gpu-1: nginx_api_keys: environment "
                                         "variable FLEET_KEYS is not set"):
        gate_key("gpu-1", keyed)

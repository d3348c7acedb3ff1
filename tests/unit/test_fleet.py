"""The fleet is built once, where the inventory is validated, and handed to the steps:
what a host renders about other hosts (peers, front doors, upstreams) comes from the fleet
it is given, never from pyinfra's global inventory."""

from __future__ import annotations

import pytest
from pyinfra.api import Inventory
from pyinfra.context import ctx_inventory

from ollama_fleet.tasks.kit import fleet as fleet_module
from ollama_fleet.tasks.kit.fleet import (
    Fleet,
    FleetError,
    InventoryError,
    Member,
    build,
    current_fleet,
)
from ollama_fleet.tasks.kit.settings import SettingsError, settings_for
from ollama_fleet.tasks.steps import gate, models
from ollama_fleet.tasks.steps.front_door import Upstream, upstreams
from ollama_fleet.tasks.steps.stack import plan_instances, stack_files

GPU0 = [{"index": 0, "uuid": "GPU-0"}]


def inventory() -> Inventory:
    """gpu-b listed first, gpu-a reached at an address, a CPU host, a front door."""
    return Inventory(
        (["gpu-b", "lb-1", "gpu-a", "cpu-1"], {}),
        gpu_servers=([("gpu-b", {"ssh_hostname": "10.0.0.2"}),
                      ("gpu-a", {"ssh_hostname": "10.0.0.1"}),
                      ("cpu-1", {"ssh_hostname": "10.0.0.3", "gpu_count": 0})],
                     {"gpu_count": 1}),
        lb_servers=([("lb-1", {"ssh_hostname": "10.0.0.9"})], {}),
        prod=(["gpu-a", "lb-1"], {}),
    )


def test_the_fleet_is_built_once_in_inventory_order_with_addresses_and_groups(monkeypatch):
    builds = []
    monkeypatch.setattr(fleet_module, "build", lambda hosts: builds.append(1) or build(hosts))
    monkeypatch.setattr(fleet_module, "_current", None)
    with ctx_inventory.use(inventory()):
        fleet = current_fleet()
        assert current_fleet() is fleet and len(builds) == 1
    assert [(m.name, m.address, m.groups) for m in fleet.members] == [
        ("gpu-b", "10.0.0.2", ("gpu_servers",)),
        ("lb-1", "10.0.0.9", ("lb_servers", "prod")),
        ("gpu-a", "10.0.0.1", ("gpu_servers", "prod")),
        ("cpu-1", "10.0.0.3", ("gpu_servers",)),
    ]
    assert [m.name for m in fleet.gpu_servers] == ["gpu-b", "gpu-a", "cpu-1"]
    assert [m.name for m in fleet.lb_servers] == ["lb-1"]
    assert fleet.member("gpu-a").settings.gpu_count == 1
    assert fleet.member("cpu-1").settings.gpu_count == 0
    with pytest.raises(FleetError, match="gpu-z: not a host of the inventory"):
        fleet.member("gpu-z")
    with pytest.raises(AttributeError):
        fleet.members = ()  # immutable: every step sees the fleet that was validated


def test_another_inventory_is_another_fleet(monkeypatch):
    monkeypatch.setattr(fleet_module, "_current", None)
    with ctx_inventory.use(inventory()):
        first = current_fleet()
    with ctx_inventory.use(Inventory((["gpu-9"], {}))):
        assert [m.name for m in current_fleet().members] == ["gpu-9"]
    assert [m.name for m in first.members] == ["gpu-b", "lb-1", "gpu-a", "cpu-1"]


def test_bad_data_stops_the_run_with_every_problem_and_builds_no_fleet(monkeypatch):
    monkeypatch.setattr(fleet_module, "_current", None)
    bad = Inventory((["gpu-1"], {}), gpu_servers=([("gpu-1", {"gpu_count": "two",
                                                             "ollama_imgae": "x"})], {}))
    with ctx_inventory.use(bad), pytest.raises(InventoryError) as exc:
        current_fleet()
    assert str(exc.value).startswith("invalid inventory data, no host was changed:\n")
    assert "    gpu-1: ollama_imgae: unknown setting (did you mean ollama_image?)" in str(
        exc.value)
    assert "    gpu-1: gpu_count: Input should be a valid integer" in str(exc.value)
    assert fleet_module._current is None
    with pytest.raises(SettingsError, match="front_door_drained: no gpu_servers host"):
        build([("lb-1", ["lb_servers"], {"front_door_drained": ["gpu-9"]})])


def test_steps_render_peers_and_upstreams_from_the_fleet_they_are_given(monkeypatch):
    """A different global inventory is set on purpose: nothing of it may show."""
    monkeypatch.setattr(fleet_module, "_current", None)
    fleet = build([
        ("gpu-1", ["gpu_servers"], {"gpu_count": 1, "ssh_hostname": "10.1.0.1"}),
        ("gpu-2", ["gpu_servers"], {"gpu_count": 1, "ssh_hostname": "fd00::2"}),
        ("lb-1", ["lb_servers"], {"ssh_hostname": "10.1.0.9",
                                  "front_door_drained": ["gpu-2"]}),
    ])
    with ctx_inventory.use(inventory()):
        assert [p.url for p in models.peers(fleet)] == ["http://10.1.0.1:11380",
                                                        "http://[fd00::2]:11380"]
        assert gate.front_door_addresses(fleet) == ["10.1.0.9"]
        gpu = fleet.member("gpu-1").settings
        conf = stack_files(gpu, plan_instances(gpu, GPU0), fleet)["nginx/ollama.conf"]
        lb = fleet.member("lb-1").settings
        servers = upstreams(lb, fleet)
    fanout = conf.split(f"listen {gpu.ollama_fanout_port};")[1].split("deny all;")[0]
    assert "allow 10.1.0.1;" in fanout and "allow fd00::2;" in fanout
    assert "10.0.0." not in conf  # the global inventory's hosts
    assert "10.1.0.9 1;  # the front door" in conf
    assert servers == [Upstream("gpu-1", "10.1.0.1", 80, False),
                       Upstream("gpu-2", "fd00::2", 80, True)]
    # no fleet (rendering outside a deploy): no peers, no front door, no upstreams
    alone = stack_files(gpu, plan_instances(gpu, GPU0), Fleet())["nginx/ollama.conf"]
    assert "10.1.0." not in alone and "the front door" not in alone
    assert upstreams(lb, Fleet()) == [] and models.peers(Fleet()) == []


def test_the_operators_commands_share_the_fleet_and_its_member_type(tmp_path):
    """One fleet class and one host record: what `ollama-fleet` loads is the deploy's."""
    from ollama_fleet.fleetctl import inventory

    path = tmp_path / "fleet.py"
    path.write_text("gpu_servers = [('gpu-1', {'gpu_count': 1, 'ssh_hostname': '10.0.0.1'})]\n")
    loaded = inventory.load(str(path), {"ollama_models": ["tinyllama"]})
    assert type(loaded) is Fleet and all(type(m) is Member for m in loaded.members)
    assert (loaded.inventory, loaded.path, loaded.data) == (
        str(path), str(path.resolve()), {"ollama_models": ["tinyllama"]})
    assert loaded.member("gpu-1").settings.ollama_models == ["tinyllama"]
    member = Member("gpu-1", ("gpu_servers",), {"ssh_hostname": "10.0.0.1"},
                    settings_for("gpu-1", {}))
    assert (member.address, member.gpu_server, member.front_door) == ("10.0.0.1", True, False)

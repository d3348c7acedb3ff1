"""The hostile inventory corpus (tests/unit/test_hostile_inventory.py) against real hosts:
every value is refused by name before anything runs, and on the hosts nothing changed
and nothing the values carried ran (no /tmp/pwned, files and containers as they were).

The lab's part of the corpus (LAB_HOSTILE: the first corpus and a value of each family
added since; the unit tests check every value) is spread over the lab's hosts, one value
per key and host in a run, so a few deploys cover it all."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from tests.unit.test_hostile_inventory import LAB_HOSTILE

pytestmark = pytest.mark.lab

FINGERPRINT = ("ls /etc/apt/sources.list.d /opt 2>&1; test -e /tmp/pwned && echo PWNED; "
               "docker ps -aq 2>/dev/null | sort | xargs -r docker inspect -f "
               "'{{.Name}} {{.State.StartedAt}}' 2>/dev/null; "
               "find /opt /etc/docker /etc/nginx -type f -print0 2>/dev/null | sort -z | "
               "xargs -0r md5sum; dpkg-query -W -f '${Package}\\n' | md5sum")


def rounds(hosts: list[str], corpus: list[tuple[str, object]]) -> list[dict[str, dict]]:
    """CORPUS as runs: per run, per host, at most one value of each key."""
    runs: list[dict[str, dict]] = []
    for key, value in corpus:
        for run in runs:
            free = next((h for h in hosts if key not in run.setdefault(h, {})), None)
            if free:
                run[free][key] = value
                break
        else:
            runs.append({hosts[0]: {key: value}})
    return runs


def test_every_hostile_value_is_refused_and_no_host_is_touched(deploy_lab, tmp_path):
    fleet = deploy_lab
    names = [h["name"] for h in fleet.hosts()]
    before = {name: fleet.ssh(name, FINGERPRINT)[1] for name in names}
    groups = runpy.run_path(fleet.inventory)
    plan = rounds(names, LAB_HOSTILE)
    assert sum(len(keys) for run in plan for keys in run.values()) == len(LAB_HOSTILE)
    for number, run in enumerate(plan):
        # the lab's own data allows plain http (its mirrors); the corpus's http value must
        # meet a host that does not
        gpu = [(n, {**d, "fleet_insecure_http": False, **run[n]} if n in run else d)
               for n, d in groups["gpu_servers"]]
        inventory = Path(fleet.inventory).with_name(f"lab-hostile-{tmp_path.name}-{number}.py")
        inventory.write_text(f"gpu_servers = {gpu!r}\nlb_servers = {groups['lb_servers']!r}\n")
        try:
            proc = fleet.pyinfra("deploy.py", inventory=str(inventory))
        finally:
            inventory.unlink()
        assert proc.returncode != 0
        assert "invalid inventory data, no host was changed" in proc.output, proc.output[-3000:]
        assert "Starting operation" not in proc.output
        problems = [line.strip() for line in proc.output.splitlines()
                    if line.startswith("    ") and ": " in line]
        for host, keys in run.items():
            for key in keys:
                assert any(p.startswith(f"{host}: {key}") for p in problems), (host, key,
                                                                              problems)
    assert {name: fleet.ssh(name, FINGERPRINT)[1] for name in names} == before

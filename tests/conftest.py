"""Shared fixtures. Lab tests deploy to real lab hosts; see lab/ and tests/labfleet.py."""

from __future__ import annotations

import pytest

from tests.labfleet import LabFleet, lab_cli


def start_lab(name: str, *args: str) -> LabFleet:
    lab_cli("up", *args, name=name)
    fleet = LabFleet(name)
    fleet.refresh()
    return fleet


@pytest.fixture(scope="session")
def core_lab():
    """One GPU host with 2 GPUs and one CPU host, shared by the lab's own tests."""
    fleet = None
    try:
        fleet = start_lab("fleetlab-core", "--gpu-hosts", "1", "--gpus-per-host", "2",
                          "--cpu-hosts", "1", "--registry-port", "5051", "--model-scale", "0.25")
        yield fleet
    finally:
        if fleet:
            fleet.close()
        lab_cli("down", name="fleetlab-core", check=False)

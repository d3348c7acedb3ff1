"""Fact parsers on recorded output (the GPU ones are in test_distributions.py)."""

from __future__ import annotations

from pathlib import Path

from tasks.facts import parse_routes

FIXTURES = Path(__file__).parent / "fixtures"


def test_docker_network_and_routes_from_proc():
    lines = (FIXTURES / "proc" / "docker-network-ollama-apps").read_text().splitlines()
    found = parse_routes([line.strip() for line in lines])
    assert found["exists"] and found["subnets"] == ["172.31.254.0/24"]
    # the default route is left out: it overlaps every network
    assert found["routes"] == [("172.17.0.0/16", "docker0"), ("172.31.254.0/24", "br-3f1c2a9d7e01"),
                               ("192.0.2.0/24", "eth0")]


def test_no_network_no_routes():
    assert parse_routes([]) == {"exists": False, "subnets": [], "routes": []}
    found = parse_routes(["Iface\tDestination\tGateway", "garbage line here 1 2 3 4 5 6"])
    assert found == {"exists": False, "subnets": [], "routes": []}

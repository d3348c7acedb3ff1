"""The lab's DNS: the zone's records, dnsmasq's and the resolvers' files, `run`'s argv."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from lab import dns
from lab.cli import ask_url
from lab.engine import LabError
from lab.fleet import Lab
from lab.inventory import render_inventory

HOSTS = [
    {"name": "gpu-1", "role": "gpu", "address": "172.29.9.11", "gpus": [{"index": 0}]},
    {"name": "cpu-1", "role": "cpu", "address": "172.29.9.101", "gpus": []},
    {"name": "lb-1", "role": "lb", "address": "172.29.9.201", "gpus": []},
    {"name": "lb-2", "role": "lb", "address": "172.29.9.202", "gpus": []},
]


@pytest.fixture
def lab(tmp_path, monkeypatch) -> Lab:
    monkeypatch.setenv("FLEETLAB_STATE_DIR", str(tmp_path))
    return Lab("dnsunit")


def _state(hosts=HOSTS) -> dict:
    return {"name": "dnsunit", "services_ip": "172.29.9.2", "subnet": "172.29.9.0/24",
            "spec": {"registry_port": 5000}, "hosts": hosts}


def test_zone_records_hosts_services_and_the_first_lb_as_front_door():
    assert dns.hosts_file("fleetlab", "172.29.9.2", HOSTS).splitlines()[1:] == [
        "172.29.9.2 services.fleetlab.test registry.fleetlab.test blobs.fleetlab.test",
        "172.29.9.11 gpu-1.fleetlab.test",
        "172.29.9.101 cpu-1.fleetlab.test",
        "172.29.9.201 lb-1.fleetlab.test llm.fleetlab.test",
        "172.29.9.202 lb-2.fleetlab.test",
    ]


def test_no_front_door_name_without_lb_hosts():
    text = dns.hosts_file("fleetlab", "172.29.9.2", HOSTS[:2])
    assert "llm." not in text


@pytest.mark.parametrize("name", ["Fleet", "fleet_lab", "-lab", "lab-", "a.b", "x" * 64, ""])
def test_a_lab_name_that_is_no_dns_label_is_refused(name):
    with pytest.raises(LabError, match="DNS zone's label"):
        dns.zone(name)


def test_dnsmasq_answers_the_zone_itself_and_forwards_the_rest():
    lines = dns.dnsmasq_conf("fleetlab", "172.29.9.2").splitlines()
    for line in ("listen-address=172.29.9.2", "bind-dynamic", "no-hosts",
                 "hostsdir=/etc/fleetlab/dns", "local=/fleetlab.test/", "no-resolv",
                 "server=127.0.0.11"):
        assert line in lines


def test_resolv_conf_names_the_lab_server_and_searches_the_zone():
    lines = [x for x in dns.resolv_conf("fleetlab", "172.29.9.2").splitlines()
             if not x.startswith("#")]
    assert lines == ["nameserver 172.29.9.2", "search fleetlab.test"]


def test_write_files_lays_out_what_the_services_container_mounts(lab):
    dns.write_files(lab, "172.29.9.2", HOSTS)
    assert (lab.dir / "services/dnsmasq.conf").read_text() == dns.dnsmasq_conf(
        "dnsunit", "172.29.9.2")
    assert (lab.dir / "services/dns/zone").read_text() == dns.hosts_file(
        "dnsunit", "172.29.9.2", HOSTS)
    # only the zone in dnsmasq's directory: no temporary file left for it to read
    assert [p.name for p in (lab.dir / "services/dns").iterdir()] == ["zone"]
    resolv = dns.resolv_conf_path(lab)
    inode = resolv.stat().st_ino
    dns.write_files(lab, "172.29.9.2", HOSTS[:1])
    assert "cpu-1" not in (lab.dir / "services/dns/zone").read_text()
    assert resolv.stat().st_ino == inode  # bind-mounted by inode into hosts: kept


def test_resolver_argv_binds_the_lab_resolv_conf_in_a_private_namespace(lab):
    with pytest.raises(LabError, match="no lab named dnsunit is up"):
        dns.resolver_argv(lab)
    dns.write_files(lab, "172.29.9.2", HOSTS)
    argv = dns.resolver_argv(lab)
    assert argv[:4] == ["unshare", "--mount", "--propagation", "private"]
    assert argv[4:6] == ["sh", "-c"] and 'mount --bind "$0" /etc/resolv.conf' in argv[6]
    assert argv[6].endswith('exec "$@"')
    assert argv[7] == str(dns.resolv_conf_path(lab))


def test_inventory_by_name(lab):
    by_address = render_inventory(lab, _state())
    by_name = render_inventory(lab, _state(), by_name=True)
    assert "'ssh_hostname': '172.29.9.11'" in by_address
    assert "'ssh_hostname': 'gpu-1.dnsunit.test'" in by_name
    assert "'ssh_hostname': 'lb-1.dnsunit.test'" in by_name
    assert "172.29.9.11" not in by_name


@pytest.mark.parametrize("hosts, host, port, url", [
    (HOSTS, None, 80, "http://llm.dnsunit.test/api/generate"),
    (HOSTS[:2], None, 80, "http://gpu-1.dnsunit.test/api/generate"),
    (HOSTS, "cpu-1", 11434, "http://cpu-1.dnsunit.test:11434/api/generate"),
])
def test_ask_goes_to_a_name(lab, monkeypatch, hosts, host, port, url):
    lab.save(_state(hosts))
    monkeypatch.setattr(lab, "status", lambda: {"hosts": hosts})
    assert ask_url(lab, host, port) == url


def _answer(query: bytes, addresses: list[str], rcode: int = 0) -> bytes:
    """A response as dnsmasq sends it: the question echoed, answers by pointer to it."""
    qid = struct.unpack("!H", query[:2])[0]
    header = struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, len(addresses), 0, 0)
    answers = b"".join(struct.pack("!HHHIH", 0xC00C, 1, 1, 0, 4) + socket.inet_aton(a)
                       for a in addresses)
    return header + query[12:] + answers


def test_query_a_reads_addresses_from_a_real_udp_exchange():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        seen = []

        def serve():
            for addresses in (["172.29.9.11"], []):
                data, peer = server.recvfrom(512)
                seen.append(data)
                server.sendto(_answer(data, addresses, 0 if addresses else 3), peer)

        thread = threading.Thread(target=serve)
        thread.start()
        port = server.getsockname()[1]
        assert dns.query_a("127.0.0.1", "gpu-1.fleetlab.test", port=port) == ["172.29.9.11"]
        assert dns.query_a("127.0.0.1", "nope.fleetlab.test", port=port) == []
        thread.join(5)
    assert b"\x05gpu-1\x08fleetlab\x04test\x00" in seen[0]


def test_an_answer_to_another_query_is_refused():
    query = dns.build_query("gpu-1.fleetlab.test", 7)
    with pytest.raises(ValueError, match="not the answer"):
        dns.parse_answer(_answer(dns.build_query("gpu-1.fleetlab.test", 8), []), 7)
    assert dns.parse_answer(_answer(query, ["10.0.0.1", "10.0.0.2"]), 7) == [
        "10.0.0.1", "10.0.0.2"]

"""SSH sockets that notice a lost host (tasks/engine/connection.py); the lab's fault tests
show a lost host failing alone within the bound, with no _timeout given."""

from __future__ import annotations

import socket

import paramiko

from ollama_fleet.tasks.engine import connection


def test_watch_turns_on_keepalive_and_the_user_timeout():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        connection.watch(sock)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        got = {name: sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, name))
               for name in ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_USER_TIMEOUT")}
    assert got == {"TCP_KEEPIDLE": 15, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 6,
                   "TCP_USER_TIMEOUT": 60_000}
    # a lost host is given up on within about a minute, whatever it was doing
    assert connection.IDLE_S + connection.INTERVAL_S * connection.PROBES <= 60


def test_install_wraps_paramiko_once(monkeypatch):
    monkeypatch.setattr(paramiko.SSHClient, "connect", paramiko.SSHClient.connect)
    connection.install()
    wrapped = paramiko.SSHClient.connect
    assert getattr(wrapped, "watched", False)
    connection.install()
    assert paramiko.SSHClient.connect is wrapped

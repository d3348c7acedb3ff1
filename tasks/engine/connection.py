"""SSH connections that notice a host is gone within a minute.

pyinfra waits on a command's output for as long as the operation's `_timeout`
(unset: forever), and a host that loses power or its network sends nothing, not
even a reset: the whole fleet would wait on it, step after step. The kernel can
tell instead. Every SSH connection pyinfra opens gets TCP keepalive (a probe after
IDLE_S of silence, every INTERVAL_S, PROBES unanswered ones close it) and a user
timeout (data unacknowledged for USER_TIMEOUT_S closes it). A live host's kernel
answers the probes however long its command runs quietly; a lost host fails alone,
with the step it was on, and the others go on.

`install()` is called from config.py, which pyinfra runs before it connects.
"""

from __future__ import annotations

import socket

import paramiko

IDLE_S = 15
INTERVAL_S = 5
PROBES = 6
USER_TIMEOUT_S = 60


def watch(sock: socket.socket) -> None:
    """Turn on keepalive and the user timeout where the platform has them (Linux does)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", IDLE_S), ("TCP_KEEPINTVL", INTERVAL_S),
                          ("TCP_KEEPCNT", PROBES), ("TCP_USER_TIMEOUT", USER_TIMEOUT_S * 1000)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def install() -> None:
    """Watch the socket of every paramiko SSH client once it has connected."""
    connect = paramiko.SSHClient.connect
    if getattr(connect, "watched", False):
        return

    def connect_and_watch(self: paramiko.SSHClient, *args, **kwargs) -> None:
        connect(self, *args, **kwargs)
        transport = self.get_transport()
        if transport is not None and isinstance(transport.sock, socket.socket):
            watch(transport.sock)

    connect_and_watch.watched = True  # type: ignore[attr-defined]
    paramiko.SSHClient.connect = connect_and_watch  # type: ignore[method-assign]

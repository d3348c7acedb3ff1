"""Test helpers for talking to lab hosts: a started lab, SSH, pyinfra runs.

Tests see the lab the way an operator does: through `python -m lab`, SSH with the
lab's key, HTTP to the hosts' addresses, and pyinfra's own CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from ollama_fleet.tasks.engine import connection

REPO = Path(__file__).resolve().parent.parent
PYINFRA = str(Path(sys.executable).parent / "pyinfra")


def lab_cli(*args: str, name: str, check: bool = True,
            timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "lab", "--name", name, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"lab {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


@dataclass
class LabFleet:
    """A running lab, as `python -m lab status --json` describes it."""

    name: str
    info: dict = field(default_factory=dict)
    _clients: dict = field(default_factory=dict)

    def refresh(self) -> dict:
        self.info = json.loads(lab_cli("status", "--json", name=self.name).stdout)
        return self.info

    @property
    def inventory(self) -> str:
        return self.info["inventory"]

    def host(self, name: str) -> dict:
        return next(h for h in self.info["hosts"] if h["name"] == name)

    def hosts(self, role: str | None = None) -> list[dict]:
        return [h for h in self.info["hosts"] if role is None or h["role"] == role]

    def endpoint(self, *path: str) -> str:
        value = self.info["endpoints"]
        for key in path:
            value = value[key]
        return value

    def ssh(self, host: str, command: str, timeout: float = 300,
            check: bool = True) -> tuple[int, str, str]:
        """Run COMMAND on HOST as root over SSH; return (status, stdout, stderr)."""
        client = self._client(host)
        try:
            _, stdout, stderr = client.exec_command(command, timeout=timeout)
            status = stdout.channel.recv_exit_status()
            out, err = stdout.read().decode(), stderr.read().decode()
        except (paramiko.SSHException, OSError, EOFError):
            self._clients.pop(host, None)
            raise
        if check and status != 0:
            raise AssertionError(f"{host}: `{command}` exited {status}:\n{out}\n{err}")
        return status, out, err

    def _client(self, host: str) -> paramiko.SSHClient:
        client = self._clients.get(host)
        if client is not None and client.get_transport() and client.get_transport().is_active():
            return client
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        client.connect(self.host(host)["address"], username="root",
                       key_filename=self.info["ssh_key"], timeout=10,
                       allow_agent=False, look_for_keys=False)
        connection.watch(client.get_transport().sock)  # a host gone mid-command: an error
        self._clients[host] = client
        return client

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def forget(self, host: str) -> None:
        client = self._clients.pop(host, None)
        if client:
            client.close()

    def started_at(self, host: str) -> str:
        """When HOST's container last started: a reboot changes it."""
        out = subprocess.run(["docker", "inspect", "-f", "{{.State.StartedAt}}",
                              self.host(host)["container"]],
                             capture_output=True, text=True, check=True, timeout=60)
        return out.stdout.strip()

    def reboot(self, host: str, timeout: float = 180) -> None:
        """Reboot HOST as an operator would (`systemctl reboot`) and wait, bounded, until it
        is back with its Docker engine answering."""
        before = self.started_at(host)
        self.forget(host)
        self.ssh(host, "systemctl reboot", check=False)
        self.forget(host)
        poll(lambda: self.started_at(host) != before, 60, what=f"{host} restarting")
        poll(lambda: self.ssh(host, "docker info >/dev/null", timeout=20, check=False)[0] == 0,
             timeout, what=f"{host} back with docker")

    def pyinfra(self, *args: str, limit: str | None = None, timeout: float = 1200,
                inventory: str | None = None, env: dict | None = None, yes: bool = True,
                ) -> subprocess.CompletedProcess:
        """Run pyinfra's own CLI from the repository root, as an operator would.

        pyinfra logs to stderr; the result's `output` is both streams together.
        """
        cmd = [PYINFRA, "-y"] if yes else [PYINFRA]
        if limit:
            cmd += ["--limit", limit]
        cmd += [inventory or self.inventory, *args]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
        proc.output = proc.stdout + proc.stderr
        return proc

    def by_name(self, *cmd: str, timeout: float = 300, check: bool = True,
                ) -> subprocess.CompletedProcess:
        """Run CMD on the operator's side with the lab's DNS as its resolver, as
        `python -m lab run -- CMD` does: `gpu-1.<lab>.test` resolves, this machine's
        own resolver files stay as they are. The result's `output` is both streams."""
        proc = lab_cli("run", "--", *cmd, name=self.name, check=False, timeout=timeout)
        proc.output = proc.stdout + proc.stderr
        if check and proc.returncode != 0:
            raise AssertionError(f"by name: {' '.join(cmd)} exited {proc.returncode}:\n"
                                 f"{proc.output}")
        return proc


def tracked_copy(dest: Path) -> Path:
    """The checkout's tracked files as they are now (links kept), copied to DEST: what a
    clean clone would build, without the build/ and egg-info an earlier build left here."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True, timeout=60).stdout
    dest.mkdir(parents=True, exist_ok=True)
    packed = subprocess.run(["tar", "--null", "-T", "-", "-c"], cwd=REPO, input=files,
                            capture_output=True, check=True, timeout=300).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=packed, check=True, timeout=300)
    return dest


def poll(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    """Call PREDICATE until it returns a truthy value or TIMEOUT seconds pass."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s (last error: {last_exc})")

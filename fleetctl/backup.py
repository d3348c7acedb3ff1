"""Back a host's model store up to a checked tarball; restore one onto any host.

    ollama-fleet INVENTORY backup HOST [--to DIR | --on-host] [--data KEY=VALUE ...]
    ollama-fleet INVENTORY restore HOST TARBALL [--data KEY=VALUE ...] [-y]

What each guarantees is in tasks/steps/backup.py, beside the on-host work; this module
checks what can be checked on the operator's machine (the host, the tarball) before
any host is touched, then runs tasks/deploys/backup.py or tasks/deploys/restore.py on
the one host through fleetctl.runner.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ollama_fleet.fleetctl.inventory import UsageError
from ollama_fleet.fleetctl.runner import Log, Result, log_stderr, run_pyinfra
from ollama_fleet.tasks.kit.fleet import Fleet
from ollama_fleet.tasks.steps.backup import (
    HOST_BACKUP_DIR,
    JOB_ENV,
    TRANSFER_TIMEOUT_S,
    BackupError,
    BackupIndex,
    archive_name,
    file_sha256,
    parse_checksum_file,
    read_backup,
)


class CommandError(Exception):
    """One line for the operator: `<command>: <host>: <file or key>: <problem>`; exit 1."""


@dataclass
class Run:
    """One backup or restore of one host of FLEET."""

    command: str
    fleet: Fleet
    host: str
    log: Log = field(default=log_stderr)

    def fail(self, message: str) -> CommandError:
        return CommandError(f"{self.command}: {self.host}: {message}")

    def check_host(self) -> None:
        """HOST must be a gpu_servers host of the inventory (its data validated with the
        rest of the fleet when the fleet was loaded)."""
        try:
            host = self.fleet.member(self.host)
        except UsageError as exc:
            raise UsageError(f"{self.command}: {exc}") from None
        if not host.gpu_server:
            raise UsageError(f"{self.command}: {self.host}: not a gpu_servers host: it has no "
                             "Ollama model store")

    def pyinfra(self, deploy: str, job: dict[str, Any]) -> Result:
        """Run DEPLOY on the host with JOB; CommandError naming the host if it fails."""
        result = run_pyinfra(self.fleet, deploy, [self.host], self.fleet.data, log=self.log,
                             job=job, job_env=JOB_ENV, timeout=TRANSFER_TIMEOUT_S + 600)
        if not result.ok:
            raise self.fail(result.failure(self.host))
        return result

    def clean_up(self, deploy: str, name: str | None = None) -> None:
        """Remove what a failed run left on the host (best effort: the error stands)."""
        try:
            self.pyinfra(deploy, {"action": "clean", "name": name})
        except (CommandError, OSError) as exc:
            self.log(f"--> {self.command}: {self.host}: could not clean up: {exc}")


def run_backup(run: Run, to: str, on_host: bool) -> str:
    """Back the host up; return where the tarball is."""
    name = archive_name(run.host)
    local_dir = Path(to).resolve()
    job = {"action": "backup", "name": name, "on_host": on_host, "local_dir": str(local_dir)}
    run.log(f"--> backup: {run.host}: {name}")
    partials = [local_dir / f"{name}.partial", local_dir / f"{name}.sha256.partial"]
    try:
        run.pyinfra("tasks/deploys/backup.py", job)
        if on_host:
            return f"{run.host}:{HOST_BACKUP_DIR}/{name}"
        try:
            want = parse_checksum_file(partials[1].read_text(), f"{name}.sha256")
            got = file_sha256(partials[0])
        except (BackupError, OSError) as exc:
            raise run.fail(f"{local_dir / name}: the fetched copy cannot be checked: {exc}") \
                from None
        if got != want:
            raise run.fail(f"{local_dir / name}: sha256 after the transfer is {got}, the host "
                           f"computed {want}; run the backup again")
    except CommandError:
        for path in partials:
            path.unlink(missing_ok=True)
        if not on_host:
            run.clean_up("tasks/deploys/backup.py", name)
        raise
    partials[1].rename(local_dir / f"{name}.sha256")
    partials[0].rename(local_dir / name)
    return str(local_dir / name)


def check_tarball(command: str, host: str, tarball: str, log: Log = log_stderr) -> BackupIndex:
    """The tarball checked on this machine, before any host is touched (UsageError: exit 2,
    nothing was changed)."""
    def fail(message: str) -> UsageError:
        return UsageError(f"{command}: {host}: {message}")

    path = Path(tarball)
    if not path.is_file():
        raise fail(f"{tarball}: no such file")
    sums_file = Path(f"{tarball}.sha256")
    if not sums_file.is_file():
        raise fail(f"{sums_file}: no such file (the tarball's checksum, written beside it "
                   "by the backup)")
    try:
        want = parse_checksum_file(sums_file.read_text(errors="replace"), str(sums_file))
        log(f"--> restore: {host}: checking {tarball}")
        index = read_backup(path)
    except BackupError as exc:
        raise fail(f"{tarball}: {exc}; no host was changed") from None
    if index.sha256 != want:
        raise fail(f"{tarball}: sha256 is {index.sha256}, {sums_file.name} says {want}; "
                   "the tarball is damaged or not the one backed up; no host was changed")
    return index


def run_restore(run: Run, tarball: str, index: BackupIndex) -> str:
    """Restore the checked tarball onto the host; return what happened, in a line."""
    job = {"action": "restore", "tarball": str(Path(tarball).resolve()), "index": asdict(index)}
    run.log(f"--> restore: {run.host}: {len(index.models)} models, {len(index.blobs)} blobs")
    try:
        result = run.pyinfra("tasks/deploys/restore.py", job)
    except CommandError:
        run.clean_up("tasks/deploys/restore.py")
        raise
    models = ", ".join(sorted(index.models))
    if result.changed_nothing:
        return f"{run.host}: already holds {models} from {Path(tarball).name}; nothing changed"
    return f"{run.host}: restored {models} from {Path(tarball).name}; Ollama lists them"

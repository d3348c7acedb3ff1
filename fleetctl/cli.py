"""`ollama-fleet`: the operator's commands for a fleet that `pyinfra INVENTORY deploy.py`
built, with pyinfra's manners: the inventory first, `--limit` by host, group or glob,
`--data KEY=VALUE`, a question before a serving fleet is changed unless `-y` (or
PYINFRA_YES), asked on stderr and only on a terminal, `--dry` to see the plan and change
nothing, `-v`/`-vv` and `--diff` passed to pyinfra. Every command runs from the
operator's folder: the inventory and its group_data are read as `pyinfra` reads them,
and pyinfra's log lands there.

Exit status, for every command: 0 done; 1 a host failed (or the question was answered
no, or not at all): one line on stderr names the host and what to do; 2 bad arguments
or inventory: one line on stderr names the argument or the host and key, and no host
was touched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ollama_fleet
from ollama_fleet.fleetctl import inventory
from ollama_fleet.fleetctl.inventory import UsageError
from ollama_fleet.fleetctl.runner import MANNERS, log_stderr, run_pyinfra
from ollama_fleet.tasks.kit.fleet import Fleet, FleetError

PROG = "ollama-fleet"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad input as one line (exit 2), without the usage dump."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be more than 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__.split("\n\n")[0].replace("\n", " "),
                     epilog="exit status: 0 done; 1 a host failed (or the question was "
                            "declined); 2 bad arguments or inventory, no host touched",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("inventory", metavar="INVENTORY",
                        help="a pyinfra inventory file, e.g. inventory/prod.py")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Parser)

    data = _Parser(add_help=False)
    data.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                      help="inventory data for this run, as pyinfra's --data (repeatable)")
    data.add_argument("-v", dest="verbosity", action="count", default=0,
                      help="pyinfra's -v: facts and noops (-v), commands too (-vv)")
    limit = _Parser(add_help=False)
    limit.add_argument("--limit", action="append", default=[], metavar="PATTERN",
                       help="only these hosts, as pyinfra 3 reads --limit: a group name, "
                            "else a glob over host names such as 'gpu-*' (repeatable)")
    yes = _Parser(add_help=False)
    yes.add_argument("-y", "--yes", action="store_true", default=_env_yes(),
                     help="do not ask before changing the fleet (env: PYINFRA_YES)")
    changes = _Parser(add_help=False, parents=[yes])
    changes.add_argument("--dry", action="store_true",
                         help="print the plan and what would change; change nothing")
    diff = _Parser(add_help=False)
    diff.add_argument("--diff", action="store_true",
                      help="pyinfra's --diff: show how text files change (secrets never)")

    sub.add_parser("check", parents=[data],
                   help="validate the whole inventory offline; connect to no host",
                   description="Read INVENTORY as pyinfra does and validate every host's "
                   "data: exit 0 and a summary, or exit 2 with one line naming the host "
                   "and key. No host is connected to.")
    sub.add_parser("deploy", parents=[data, limit, changes, diff],
                   help="converge the fleet: deploy.py on every host (or --limit)",
                   description="Run the package's deploy.py with its config.py, as "
                   "`pyinfra INVENTORY deploy.py` does from a checkout. The inventory is "
                   "validated first: bad data stops it before any host is touched.")

    roll = sub.add_parser("roll", parents=[data, limit, changes, diff],
                          help="roll the inventory's change through gpu_servers, canary first",
                          description="Apply what deploy.py would apply now (edit the "
                          "inventory, or pass --data), canary first, one batch at a time, "
                          "each batch out of the front door while it changes.")
    roll.add_argument("--batch-size", default="1", metavar="N|P%",
                      help="hosts per batch after the canary, or a percentage of them "
                           "(default 1)")
    roll.add_argument("--rollback", action="store_true",
                      help="on failure, apply the failed batch's previous image again")
    roll.add_argument("--step-timeout", type=_seconds, default=3600.0, metavar="SECONDS",
                      help="bound of each step's pyinfra run (pull, drain, apply; default "
                           "3600): past it the roll stops with the batch out of the front "
                           "door")

    status = sub.add_parser("status", parents=[data, limit, yes],
                            help="every host's GPUs, Docker, Ollama instances and nginx",
                            description="The fleet view; exit 1 when a host is unreachable "
                            "or an instance is not healthy.")
    status.add_argument("--json", action="store_true",
                        help="one JSON document instead of a table (schema: fleetctl/status.py)")
    status.add_argument("--timeout", type=_seconds, default=20.0, metavar="SECONDS",
                        help="per host, connecting included (default 20)")

    events = sub.add_parser("events", parents=[data, limit, yes],
                            help="the health agents' last actions on every GPU host",
                            description="What each GPU host's health agent saw and did "
                            "(evicted, restarted, reset, returned, left out), oldest first; "
                            "exit 1 when a host is unreachable.")
    events.add_argument("--last", type=int, default=20, metavar="N",
                        help="events per host (default 20)")
    events.add_argument("--json", action="store_true",
                        help="one JSON document: {host: [event, ...]}")
    events.add_argument("--timeout", type=_seconds, default=20.0, metavar="SECONDS",
                        help="per host, connecting included (default 20)")

    backup = sub.add_parser("backup", parents=[data],
                            help="back HOST's model store up to a checked tarball")
    backup.add_argument("host", metavar="HOST")
    where = backup.add_mutually_exclusive_group()
    where.add_argument("--to", default="backups", metavar="DIR",
                       help="local directory the tarball is fetched to (default ./backups)")
    where.add_argument("--on-host", action="store_true",
                       help="keep the tarball on the host under /var/backups/ollama")

    restore = sub.add_parser("restore", parents=[data, yes],
                             help="restore a backup tarball onto HOST")
    restore.add_argument("host", metavar="HOST")
    restore.add_argument("tarball", metavar="TARBALL")

    drain = sub.add_parser("drain", parents=[data, changes],
                           help="take gpu_servers hosts out of the front door",
                           description="The front door (lb_servers) stops sending to HOSTS "
                           "and waits for their requests to finish. They stay out, also "
                           "through later deploys (the front door keeps them in a file), "
                           "until `undrain`; to keep a host out for good, name it in "
                           "front_door_drained in the inventory.")
    drain.add_argument("hosts", nargs="+", metavar="PATTERN",
                       help="gpu_servers hosts: names, groups or globs")
    undrain = sub.add_parser("undrain", parents=[data, changes],
                             help="put hosts held out (a drain, a stopped roll) back into the "
                                  "front door (not those the inventory's front_door_drained "
                                  "names)")
    undrain.add_argument("hosts", nargs="*", metavar="PATTERN",
                         help="gpu_servers hosts: names, groups or globs (default: all)")
    return parser


def _version() -> str:
    return ollama_fleet.__version__


def _env_yes() -> bool:
    """PYINFRA_YES as pyinfra's CLI (click) reads a flag from the environment."""
    return os.environ.get("PYINFRA_YES", "").strip().lower() in ("1", "true", "t", "yes",
                                                                 "y", "on")


def _ask(question: str) -> str:
    """The question on stderr (stdout stays the command's output), or on the terminal
    itself when stderr goes to a file (`... 2>&1 | tee run.log`); the answer from stdin."""
    tty = None
    if not sys.stderr.isatty():
        try:
            tty = open("/dev/tty", "w")  # noqa: SIM115 (closed below)
        except OSError:
            tty = None
    out = tty or sys.stderr
    try:
        out.write(question)
        out.flush()
        line = sys.stdin.readline()
    finally:
        if tty is not None:
            tty.close()
    if not line:
        raise EOFError
    return line


def confirm(question: str, yes: bool, ask: Callable[[str], str] = _ask,
            terminal: Callable[[], bool] | None = None) -> bool:
    """Whether to go ahead: -y (or PYINFRA_YES), else the operator's y/yes, asked only on
    a terminal. No terminal, or no answer, is a no."""
    if yes:
        return True
    if not (terminal or _on_terminal)():
        log_stderr(f"{question} not asked: no terminal to ask on; pass -y (or set "
                   "PYINFRA_YES=1) to go ahead without asking")
        return False
    try:
        answer = ask(f"{question} [y/N] ")
    except EOFError:
        log_stderr("\nno answer: pass -y to go ahead without asking")
        return False
    return answer.strip().lower() in ("y", "yes")


def _on_terminal() -> bool:
    """Someone to answer: stdin is a terminal (where the question goes: see _ask)."""
    return sys.stdin.isatty()


def declined(command: str) -> int:
    log_stderr(f"{command}: not confirmed; nothing was changed")
    return EXIT_FAILED


# -- the commands ----------------------------------------------------------------------------


def cmd_check(fleet: Fleet, args: argparse.Namespace) -> int:
    groups: dict[str, int] = {}
    for h in fleet.members:
        for group in h.groups:
            groups[group] = groups.get(group, 0) + 1
    own = Path(fleet.inventory).stem  # pyinfra's group named after the file, as `all`
    shown = ", ".join(f"{n} {g}" for g, n in groups.items() if g not in ("all", own))
    print(f"{fleet.inventory}: {len(fleet.members)} hosts valid ({shown}); no host was "
          "connected to")
    return EXIT_OK


def cmd_deploy(fleet: Fleet, args: argparse.Namespace) -> int:
    hosts = [h.name for h in fleet.select(args.limit)]
    if not hosts:
        raise UsageError(f"{fleet.inventory}: no host to deploy to")
    log_stderr(f"deploy: deploy.py on {', '.join(hosts)}")
    if not args.dry and not confirm(f"Deploy to {len(hosts)} host"
                                    f"{'s' if len(hosts) != 1 else ''}?", args.yes):
        return declined("deploy")
    limit = [] if len(hosts) == len(fleet.members) else hosts
    result = run_pyinfra(fleet, "deploy.py", limit, fleet.data, dry=args.dry)
    if not result.ok:
        failed = result.failed_hosts() or hosts[:1]
        log_stderr(f"deploy: {failed[0]}: {result.failure(failed[0])}")
        return EXIT_FAILED
    return EXIT_OK


def cmd_roll(fleet: Fleet, args: argparse.Namespace) -> int:
    from ollama_fleet.fleetctl.roll import Roll, batch_size, roll_hosts

    selected = fleet.select(args.limit, among=fleet.gpu_servers, what="gpu_servers host")
    hosts = roll_hosts(selected)
    if not hosts:
        raise UsageError(f"{fleet.inventory}: no gpu_servers host to roll")
    size = batch_size(args.batch_size, len(hosts))
    images = {h.name: h.settings.ollama_image
              for h in inventory.load(fleet.inventory).gpu_servers} if fleet.data else {}
    roll = Roll(fleet, inventory_images=images, step_timeout=args.step_timeout)
    for line in roll.plan(hosts, size):
        log_stderr(line)
    if args.dry:
        return roll.dry(hosts)
    if not confirm(f"Roll {len(hosts)} serving host{'s' if len(hosts) != 1 else ''}?",
                   args.yes):
        return declined("roll")
    return roll.run(hosts, size, args.rollback)


def cmd_status(fleet: Fleet, args: argparse.Namespace) -> int:
    from ollama_fleet.fleetctl.status import (
        attach_rotation,
        collect,
        exit_status,
        plan_hosts,
        pyinfra_config,
        render_table,
    )

    # every front door's view is read, whatever --limit keeps: rotation is theirs to tell
    selected = fleet.select(args.limit)
    names = {m.name for m in selected}
    doors = [m for m in fleet.members if m.front_door and m.name not in names]
    plans = plan_hosts([*selected, *doors])
    config = pyinfra_config(args.timeout)
    views = attach_rotation(collect(plans, args.timeout, config) if plans else [])
    views = [v for v in views if v["host"] in names]
    if args.json:
        print(json.dumps(views, indent=2))
    else:
        sys.stdout.write(render_table(views))
    return exit_status(views)


def cmd_events(fleet: Fleet, args: argparse.Namespace) -> int:
    from ollama_fleet.fleetctl.status import collect, plan_hosts, pyinfra_config, render_events

    if not 1 <= args.last <= 500:
        raise UsageError(f"--last: {args.last}: between 1 and 500")
    plans = [p for p in plan_hosts(fleet.select(args.limit), events=args.last) if p.verdict]
    views = collect(plans, args.timeout, pyinfra_config(args.timeout)) if plans else []
    if args.json:
        print(json.dumps({v["host"]: v.get("events", []) for v in views}, indent=2))
    else:
        sys.stdout.write(render_events(views))
    return 1 if any(not v["reachable"] or v["error"] for v in views) else EXIT_OK


def cmd_backup(fleet: Fleet, args: argparse.Namespace) -> int:
    from ollama_fleet.fleetctl.backup import Run, run_backup

    run = Run("backup", fleet, args.host)
    run.check_host()
    print(run_backup(run, args.to, args.on_host))
    return EXIT_OK


def cmd_restore(fleet: Fleet, args: argparse.Namespace) -> int:
    from ollama_fleet.fleetctl.backup import Run, check_tarball, run_restore

    run = Run("restore", fleet, args.host)
    run.check_host()
    index = check_tarball("restore", args.host, args.tarball)
    log_stderr(f"restore {args.tarball} onto {args.host}: {', '.join(sorted(index.models))}")
    if not confirm(f"Restore onto {args.host}?", args.yes):
        return declined("restore")
    print(run_restore(run, args.tarball, index))
    return EXIT_OK


def front_door_run(fleet: Fleet, out: dict[str, str], args: argparse.Namespace,
                   what: str) -> int:
    """deploy.py on the front doors, holding OUT out (host -> why: drain or roll;
    front_door_out and front_door_out_roll, kept on them)."""
    lb = [h.name for h in fleet.lb_servers]
    if not lb:
        raise UsageError(f"{fleet.inventory}: no lb_servers host: there is no front door "
                         f"to {args.command} from")
    log_stderr(f"{args.command}: front door {', '.join(lb)}: {what}")
    if not args.dry and not confirm(f"Change the front door ({', '.join(lb)})?", args.yes):
        return declined(args.command)
    held = {"front_door_out": list(out),
            "front_door_out_roll": [name for name, why in out.items() if why == "roll"]}
    result = run_pyinfra(fleet, "deploy.py", lb, {**fleet.data, **held}, dry=args.dry)
    if not result.ok:
        log_stderr(f"{args.command}: {result.failure(lb[0])}")
        return EXIT_FAILED
    return EXIT_OK


def held_now(fleet: Fleet) -> dict[str, str]:
    """What the front doors hold out now and why (roll: a roll's stopped batch; drain: an
    earlier `drain`)."""
    from ollama_fleet.fleetctl.backup import CommandError
    from ollama_fleet.fleetctl.runner import held_causes

    out = held_causes(fleet, fleet.data) if fleet.lb_servers else {}
    if out is None:
        raise CommandError(f"{', '.join(h.name for h in fleet.lb_servers)}: cannot read "
                           "which hosts the front door holds out; is it reachable?")
    return out


def cmd_drain(fleet: Fleet, args: argparse.Namespace) -> int:
    named = [h.name for h in fleet.select(args.hosts, among=fleet.gpu_servers,
                                          what="gpu_servers host", option="drain")]
    # an operator's drain of a host a roll holds makes it the operator's
    out = held_now(fleet) | dict.fromkeys(named, "drain")
    return front_door_run(fleet, out, args, f"out: {', '.join(out)}")


def cmd_undrain(fleet: Fleet, args: argparse.Namespace) -> int:
    kept = list(fleet.lb_servers[0].settings.front_door_drained) if fleet.lb_servers else []
    named = [h.name for h in fleet.select(args.hosts, among=fleet.gpu_servers,
                                          what="gpu_servers host", option="undrain")]
    out = {h: why for h, why in held_now(fleet).items() if h not in named} \
        if args.hosts else {}
    back = "every gpu_servers host" if not args.hosts else ", ".join(named)
    return front_door_run(fleet, out, args, f"{back} in"
                          + (f" but {', '.join(kept)} (front_door_drained)" if kept else ""))


COMMANDS: dict[str, Callable[[Fleet, argparse.Namespace], int]] = {
    "check": cmd_check, "deploy": cmd_deploy, "roll": cmd_roll, "status": cmd_status,
    "events": cmd_events,
    "backup": cmd_backup, "restore": cmd_restore, "drain": cmd_drain, "undrain": cmd_undrain,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status (see the module's docstring)."""
    from ollama_fleet.fleetctl.backup import CommandError

    argv = list(sys.argv[1:] if argv is None else argv)
    # argparse's own errors are named after the command too, when one was given
    command = next((a for a in argv[1:2] if a in COMMANDS), PROG)
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        MANNERS.verbosity = args.verbosity
        MANNERS.diff = getattr(args, "diff", False)
        fleet = inventory.load(args.inventory, inventory.parse_data(args.data))
        return COMMANDS[command](fleet, args)
    except (UsageError, FleetError) as exc:
        message = str(exc)
        prefix = f"{command}: "
        print(message if message.startswith(prefix) else prefix + message, file=sys.stderr)
        return EXIT_USAGE
    except CommandError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130

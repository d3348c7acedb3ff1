#!/usr/bin/env bash
# Make a Debian or Ubuntu machine ready for the lab (`make demo`, `make test`): install
# with apt what is missing, then start the Docker engine when none answers. Idempotent;
# with everything present it installs nothing and runs no `apt-get update`.
#
#   lab/setup-machine.sh           everything the lab and `make lint` need
#   lab/setup-machine.sh --lint    only shellcheck (what `make lint` needs)
#
# Environment: PYTHON, the interpreter the virtualenv is made with (default python3);
# FLEETLAB_DOCKERD_LOG, dockerd's log when this script starts it without systemd.
set -euo pipefail

say() { echo "setup-machine: $*"; }
die() { echo "setup-machine: $*" >&2; exit 1; }

lint_only=false
case "${1:-}" in
    "") ;;
    --lint) lint_only=true ;;
    *) die "usage: $0 [--lint]" ;;
esac

os_id=$(sed -n 's/^ID=//p' /etc/os-release 2>/dev/null | tr -d '"' || true)
case "$os_id" in
    debian | ubuntu) ;;
    *) die "this sets up Debian or Ubuntu machines only (this one: ${os_id:-no /etc/os-release});" \
           "install by hand: a Docker engine, debootstrap, dpkg-dev, gnupg, openssh-client," \
           "ca-certificates, shellcheck, make and Python 3.10+ with venv" ;;
esac
command -v apt-get >/dev/null || die "apt-get not found on this $os_id machine"

# Run as root, or through sudo when not root (said once, before the first use).
sudo_said=false
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        command -v sudo >/dev/null || die "not root and no sudo: run this as root"
        if ! $sudo_said; then
            say "not root: using sudo"
            sudo_said=true
        fi
        sudo "$@"
    fi
}

installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }
have() { for c in "$@"; do command -v "$c" >/dev/null || return 1; done; }
engine() { timeout 10 docker info >/dev/null 2>&1; }

# What is missing: each package only when what the lab uses from it is absent.
python=${PYTHON:-python3}
missing=()
have shellcheck || missing+=(shellcheck)
if ! $lint_only; then
    # an engine that answers, or any installed one (docker.io, Docker's docker-ce), will do
    engine || have dockerd || missing+=(docker.io)
    # the `docker` command: in docker.io itself up to Debian 12 and on Ubuntu; Debian 13
    # ships it apart, as docker-cli (which docker.io only recommends)
    have docker || missing+=(docker-cli)
    have debootstrap || missing+=(debootstrap)
    installed dpkg-dev || missing+=(dpkg-dev)
    have gpg || missing+=(gnupg)
    have gpgv || missing+=(gpgv)  # debootstrap checks signatures with it; trixie's apt does not need it
    have ssh ssh-keygen || missing+=(openssh-client)
    [ -s /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
    have openssl || missing+=(openssl)
    have make || missing+=(make)
    have node || missing+=(nodejs)  # the unit tests run the front door's fleet.js with it
    # Debian's Python has venv's ensurepip in a package of its own: python3-venv, python3.N-venv
    "$python" -c 'import ensurepip, venv' 2>/dev/null || missing+=("${python##*/}-venv")
fi

if [ ${#missing[@]} -gt 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # docker-cli exists only where docker.io leaves the command out: there it is needed
    if ! apt-cache show docker-cli >/dev/null 2>&1; then
        wanted=()
        for package in "${missing[@]}"; do
            [ "$package" = docker-cli ] || wanted+=("$package")
        done
        missing=("${wanted[@]}")
    fi
    say "installing ${missing[*]} (apt-get)"
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        die "apt-get install ${missing[*]} failed$([ "$os_id" != ubuntu ] ||
            echo " (on Ubuntu, docker.io and shellcheck come from universe)")"
fi
$lint_only && exit 0

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    die "$python is Python $("$python" -V 2>&1 | cut -d' ' -f2); the project needs 3.10 or" \
        "later: install one with its venv module, then run make PYTHON=python3.10 (or later)"
fi

# The Docker engine: started when `docker info` does not answer.
engine && exit 0
if [[ $(timeout 10 docker info 2>&1 || true) == *"permission denied"* ]]; then
    die "a Docker engine runs but $(id -un) may not use it: run as root, or join the" \
        "docker group (sudo usermod -aG docker $(id -un); log in again)"
fi
if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
    say "starting the Docker engine (systemctl start docker)"
    as_root systemctl start docker
    log_tail() { as_root journalctl -u docker --no-pager -n 20 || true; }
else
    log=${FLEETLAB_DOCKERD_LOG:-/var/log/fleetlab-dockerd.log}
    say "starting the Docker engine: dockerd in the background, its log in $log"
    # its own session, so a Ctrl-C in the terminal that ran make does not stop it
    # shellcheck disable=SC2016  # "$1" is expanded by that sh: the log's path
    as_root sh -c 'setsid nohup dockerd >>"$1" 2>&1 </dev/null &' sh "$log"
    log_tail() { as_root tail -n 20 "$log" || true; }
fi
SECONDS=0
while [ "$SECONDS" -lt 60 ]; do
    engine && exit 0
    sleep 1
done
echo "setup-machine: the Docker engine did not answer within 60 s; its log ends:" >&2
log_tail >&2
exit 1

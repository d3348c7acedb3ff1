#!/bin/sh
# Run on a host by the deploy (tasks/steps/docker.py, daemon_json) as one command; not installed.
#
# daemon-json.sh STAGED LIVE [NVIDIA_CTK_FLAG...]
# Make STAGED (the merged daemon.json, just uploaded) Docker's configuration LIVE:
# with flags, `nvidia-ctk runtime configure --config=STAGED FLAG...` first registers the
# NVIDIA runtime in it (NVIDIA's own tool writes NVIDIA's keys); then `dockerd
# --validate` must accept it; then the live file is kept as LIVE.previous and STAGED
# takes its place in one rename. A failure leaves LIVE as it was (STAGED is removed).
# Exit: 0 done; 1 nvidia-ctk or the validation failed (its message on stderr).
set -eu
staged=$1
live=$2
shift 2
fail() {
    echo "$live: $*; the live file is unchanged" >&2
    rm -f "$staged"
    exit 1
}
if [ $# -gt 0 ]; then
    out=$(nvidia-ctk runtime configure --config="$staged" "$@" 2>&1) ||
        fail "nvidia-ctk runtime configure $* failed: $out"
fi
# Docker 23 and later can check a configuration without starting; an older engine
# cannot, and its restart is then the check (the previous file stays beside it)
if dockerd --help 2>/dev/null | grep -q -- '--validate'; then
    out=$(dockerd --validate --config-file="$staged" 2>&1) || fail "dockerd --validate: $out"
fi
if [ -f "$live" ]; then
    cp -p "$live" "$live.previous"
fi
mv "$staged" "$live"

#!/bin/sh
# Sent by tasks/kit/compose.py (images_pulled) through ollama_fleet.tasks.kit.scripts.script_command; not
# installed on the host. POSIX sh and the docker CLI.
#
# pull-images.sh TIMEOUT_S IMAGE...
# Pull each IMAGE (through the daemon's registry mirrors, as `docker compose up` would),
# each pull bounded by TIMEOUT_S seconds, and check that it is then in the image store.
# Exit: 0 every IMAGE present; 1 at the first one that is not: stderr names it and
# Docker's last word in one line, `IMAGE: pull failed: <docker's last error line>`.
timeout_s=$1
shift
for image in "$@"; do
    out=$(timeout "$timeout_s" docker pull -q "$image" 2>&1)
    rc=$?
    if [ "$rc" -ne 0 ]; then
        why=$(printf '%s\n' "$out" | grep -v '^[[:space:]]*$' | tail -n 1)
        [ "$rc" -eq 124 ] && why="not done within ${timeout_s}s"
        printf '%s: pull failed: %s\n' "$image" "${why:-docker pull exited $rc}" >&2
        exit 1
    fi
    if ! docker image inspect --format '{{.Id}}' "$image" >/dev/null 2>&1; then
        printf '%s: pull failed: not in the image store after docker pull\n' "$image" >&2
        exit 1
    fi
done
exit 0

#!/bin/sh
# Sent by tasks/compose.py (wait_healthy_command) through tasks.scripts.script_command; not
# installed on the host. POSIX sh and the docker CLI.
#
# wait-healthy.sh TIMEOUT_S CONTAINER...
# Wait until every CONTAINER's Docker health status is `healthy`, asking every 2 s for
# about TIMEOUT_S seconds (at least once).
# Exit: 0 all healthy; 1 not in time: stderr names the others in one line
# `not healthy after TIMEOUT_Ss: CONTAINER...`.
timeout_s=$1
shift
tries=$((timeout_s / 2))
[ "$tries" -ge 1 ] || tries=1
i=0
while [ "$i" -lt "$tries" ]; do
    i=$((i + 1))
    bad=''
    for c in "$@"; do
        [ "$(docker inspect -f '{{.State.Health.Status}}' "$c" 2>/dev/null)" = healthy ] \
            || bad="$bad $c"
    done
    [ -z "$bad" ] && exit 0
    sleep 2
done
echo "not healthy after ${timeout_s}s:$bad" >&2
exit 1

#!/bin/sh
# Sent by tasks/kit/compose.py (reload_nginx_command) through ollama_fleet.tasks.kit.scripts.script_command; not
# installed on the host. POSIX sh, the docker CLI, grep and /proc (Linux).
#
# reload-nginx.sh CONTAINER DRAIN_TIMEOUT_S
# Reload nginx in CONTAINER, then wait (polling every 0.5 s, at most DRAIN_TIMEOUT_S
# seconds, at least 1) until every nginx worker that ran before the reload has exited:
# nginx lets old workers finish their requests first, so afterwards nothing is still in
# flight on the old config. The workers are found in the host's /proc ([p] keeps grep
# from matching itself).
# Exit: 0 reloaded (requests still in flight after DRAIN_TIMEOUT_S: said on stderr, and
# still 0); 1 the reload failed.
container=$1
drain_s=$2
old=$(grep -las '^nginx: worker [p]rocess' /proc/[0-9]*/cmdline | cut -d/ -f3)
docker exec "$container" nginx -s reload || exit 1
tries=$((drain_s * 2))
[ "$tries" -ge 2 ] || tries=2
i=0
while [ "$i" -lt "$tries" ]; do
    i=$((i + 1))
    left=''
    for p in $old; do
        [ -e "/proc/$p" ] && left="$left $p"
    done
    [ -z "$left" ] && exit 0
    sleep 0.5
done
echo "requests still in flight after ${drain_s}s; going on" >&2
exit 0

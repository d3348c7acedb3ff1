#!/bin/sh
# Sent by tasks/kit/compose.py (wait_healthy_command) through ollama_fleet.tasks.kit.scripts.script_command; not
# installed on the host. POSIX sh and the docker CLI.
#
# wait-healthy.sh TIMEOUT_S CONTAINER...
# Wait until every CONTAINER's Docker health status is `healthy`, asking every 2 s for
# about TIMEOUT_S seconds (at least once). The wait ends early at the first sign that a
# container cannot turn healthy, with its evidence:
#   unhealthy      Docker's own healthcheck gave up (after its start period and retries)
#                  on the running container:
#                  `CONTAINER: unhealthy: <the last probe's output>`
#   exited, dead   `CONTAINER: exited with code N: <its last error line, else last line>`
#   a restart loop restarted twice or more since the wait began and not healthy:
#                  `CONTAINER: restarting in a loop (N restarts[, last exit code X]): <log>`
#   not there      `CONTAINER: no such container`
# A container that is only slow (`starting`) is waited for until the timeout.
# Exit: 0 all healthy; 1 a sign above (stderr: that one line) or not in time (stderr:
# `not healthy after TIMEOUT_Ss: CONTAINER...`).
timeout_s=$1
shift
tries=$((timeout_s / 2))
[ "$tries" -ge 1 ] || tries=1

state() {  # <status> <restart count> <exit code> <health>, or nothing without the container
    docker inspect --type container -f '{{.State.Status}} {{.RestartCount}} {{.State.ExitCode}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$1" 2>/dev/null
}

last_log() {  # its last error line (a Go panic, `Error: ...`, level=ERROR), else its last line
    logs=$(docker logs --tail 300 "$1" 2>&1 | tr -d '\r')  # a Go panic's trace is long
    line=$(printf '%s\n' "$logs" | grep -E '^(panic|Error|fatal error):|level=ERROR' | tail -n 1)
    [ -n "$line" ] || line=$(printf '%s\n' "$logs" | grep -v '^[[:space:]]*$' | tail -n 1)
    printf '%s\n' "$line"
}

# Restart counts when the wait began: a restart long ago is no sign of a loop now.
baseline=''
for c in "$@"; do
    n=$(state "$c" | cut -d' ' -f2)
    baseline="$baseline $c=${n:-0}"
done

i=0
while [ "$i" -lt "$tries" ]; do
    i=$((i + 1))
    bad=''
    for c in "$@"; do
        read -r status restarts code health <<EOF
$(state "$c")
EOF
        if [ -z "$status" ]; then
            echo "$c: no such container" >&2
            exit 1
        fi
        [ "$health" = healthy ] && continue
        base=0
        for kv in $baseline; do
            case $kv in "$c="*) base=${kv#"$c="} ;; esac
        done
        case $status in
        exited | dead)
            printf '%s: exited with code %s: %s\n' "$c" "$code" "$(last_log "$c")" >&2
            exit 1
            ;;
        esac
        if [ "$((restarts - base))" -ge 2 ]; then
            exit_code=''
            [ "$status" = restarting ] && exit_code=", last exit code $code"
            printf '%s: restarting in a loop (%s restarts%s): %s\n' "$c" "$((restarts - base))" \
                "$exit_code" "$(last_log "$c")" >&2
            exit 1
        fi
        # Docker also says `unhealthy` of a container that stopped (its probes end): only a
        # running container's `unhealthy` is its healthcheck's verdict
        if [ "$health" = unhealthy ] && [ "$status" = running ]; then
            probe=$(docker inspect --type container -f '{{range .State.Health.Log}}{{printf "%q" .Output}}{{"\n"}}{{end}}' "$c" 2>/dev/null | grep -v '^$' | tail -n 1)
            printf '%s: unhealthy: %s\n' "$c" "${probe:-no probe output}" >&2
            exit 1
        fi
        bad="$bad $c"
    done
    [ -z "$bad" ] && exit 0
    sleep 2
done
echo "not healthy after ${timeout_s}s:$bad" >&2
exit 1

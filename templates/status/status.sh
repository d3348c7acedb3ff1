#!/bin/sh
# Sent by fleetctl/status.py (status_script) through ollama_fleet.tasks.kit.scripts.script_command; not
# installed on the host. POSIX sh and coreutils (timeout, base64, tr, cat); nvidia-smi,
# docker and curl are asked only where they are installed. Changes nothing on the host.
#
# status.sh PROJECT GPU_FIELDS INSPECT_FORMAT API_HOST NGINX_URL REBOOT_SCRIPT VERDICT
#           EVENTS EVENTS_COUNT ROTATION_URL [PORT...]
# Print one line, one JSON object:
#   {"format": 1, KEY: {"rc": EXIT, "out": BASE64(stdout+stderr)}, ...}
# with KEY: os (/etc/os-release); nvidia_smi (`nvidia-smi --query-gpu=GPU_FIELDS
# --format=csv,noheader,nounits`; absent without nvidia-smi); docker (the engine's
# version) and containers (`docker inspect --format INSPECT_FORMAT` of the Compose
# project PROJECT's containers; absent without Docker or containers); per PORT
# version:PORT, tags:PORT and ps:PORT (GET http://API_HOST:PORT/api/...; tags and ps
# only when version answered); nginx (GET NGINX_URL, `http_code=NNN`; none when
# NGINX_URL is empty); none of the curl ones without curl; reboot (REBOOT_SCRIPT's
# output: templates/facts/reboot-required.sh, whether the host must reboot to run what
# is installed); health (the health agent's VERDICT file, when there is one); events (the
# last EVENTS_COUNT lines of the agent's EVENTS file, when there is one); now (the host's
# clock, with health); rotation (GET
# ROTATION_URL: a front door's view of every host; none when empty). Output is base64 so that
# nothing a command prints can break the document; every command is bounded by
# `timeout`.
# Exit: always 0.
project=$1
gpu_fields=$2
inspect_format=$3
api_host=$4
nginx_url=$5
reboot_script=$6
verdict=$7
events=$8
events_count=$9
rotation_url=${10}
shift 10
b() { base64 | tr -d '\n'; }
# run KEY SECONDS COMMAND...: one `"KEY": {...}` member, bounded in time.
run() {
    k=$1; t=$2; shift 2
    o=$(timeout "$t" "$@" 2>&1); r=$?
    printf ', "%s": {"rc": %d, "out": "%s"}' "$k" "$r" "$(printf %s "$o" | b)"
    return $r
}
# api KEY URL: a GET of Ollama's API or nginx, bounded by curl too.
api() {
    k=$1; shift
    run "$k" 5 curl -sS -f -k --connect-timeout 2 --max-time 3 "$@"
}
printf '{"format": 1'
run os 5 cat /etc/os-release
run reboot 30 sh -c "$reboot_script" reboot-required.sh
if [ -n "$verdict" ] && [ -f "$verdict" ]; then
    run health 5 cat "$verdict"
    run now 2 date +%s  # the host's clock, to tell a verdict the agent stopped renewing
fi
if [ -n "$events" ] && [ -f "$events" ]; then
    run events 5 tail -n "$events_count" "$events"
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    run nvidia_smi 10 nvidia-smi "--query-gpu=$gpu_fields" --format=csv,noheader,nounits
fi
if command -v docker >/dev/null 2>&1; then
    run docker 10 docker version --format '{{.Server.Version}}'
    ids=$(timeout 10 docker ps -aq --filter "label=com.docker.compose.project=$project" \
        2>/dev/null)
    # shellcheck disable=SC2086 # one argument per container id
    [ -z "$ids" ] || run containers 10 docker inspect --format "$inspect_format" $ids
fi
if command -v curl >/dev/null 2>&1; then
    for port in "$@"; do
        base=http://$api_host:$port/api
        if api "version:$port" "$base/version"; then
            api "tags:$port" "$base/tags"
            api "ps:$port" "$base/ps"
        fi
    done
    if [ -n "$nginx_url" ]; then
        api nginx -o /dev/null -w 'http_code=%{http_code}' "$nginx_url"
    fi
    if [ -n "$rotation_url" ]; then
        api rotation "$rotation_url"
    fi
fi
printf '}\n'
exit 0

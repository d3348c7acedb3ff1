#!/bin/sh
# Sent by tasks/kit/facts.py (fact SmokeAnswer) through ollama_fleet.tasks.kit.scripts.script_command, for the
# roll's smoke test; not installed on the host. POSIX sh; needs curl.
#
# smoke.sh URL MODEL
# Asks the host's own nginx at URL (loopback: the gate lets it in without a key, whatever
# nginx_allow says; TLS not verified, it is the host's own) what an operator's client
# would: GET /api/version, then, when MODEL is not empty, a streamed /api/generate.
# Prints `version=<answer>`, then `generate=<last line of the stream>` and
# `status=<HTTP status>`, or `error=<curl's error line>`.
# Exit: 0 (what it found is in its output).
url=$1
model=$2
out=$(curl -sS -k --max-time 30 "$url/api/version" 2>&1) || { echo "error=$out" | tail -n 1; exit 0; }
echo "version=$out"
[ -n "$model" ] || exit 0
body=$(printf '{"model":"%s","prompt":"rolling update smoke test","options":{"num_predict":8}}' "$model")
out=$(curl -sS -k -N --max-time 120 -H 'Content-Type: application/json' -d "$body" \
    -w '\nstatus=%{http_code}' "$url/api/generate" 2>&1) || { echo "error=$out" | tail -n 1; exit 0; }
printf '%s\n' "$out" | grep -v '^status=' | grep -v '^$' | tail -n 1 | sed 's/^/generate=/'
printf '%s\n' "$out" | grep '^status=' | tail -n 1

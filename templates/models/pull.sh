#!/bin/sh
# Sent by tasks/models.py (the registry pull of the fan-out) through
# tasks.scripts.script_command; not installed on the host. POSIX sh and curl.
#
# pull.sh PORT MODEL BODY MAX_TIME
# POST BODY (`{"model": MODEL}`) to the Ollama instance on 127.0.0.1:PORT /api/pull and
# wait, at most MAX_TIME seconds, for the stream to end. Ollama answers 200 and streams
# its progress even when the pull fails, so the stream is read: a line with "error" or a
# last line without "success" is a failure.
# Exit: 0 pulled; 1 failed: stderr says why in one line `pull MODEL: ...`.
port=$1
model=$2
body=$3
max_time=$4
out=$(curl -sS -N --max-time "$max_time" -X POST "http://127.0.0.1:$port/api/pull" -d "$body") \
    || { echo "pull $model: $out" >&2; exit 1; }
err=$(printf '%s\n' "$out" | grep '"error"' | tail -n 1)
if [ -n "$err" ]; then
    echo "pull $model: $err" >&2
    exit 1
fi
printf '%s\n' "$out" | tail -n 1 | grep -q '"success"' \
    || { echo "pull $model: stream ended without success" >&2; exit 1; }

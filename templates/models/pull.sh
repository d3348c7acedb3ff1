#!/bin/sh
# Sent by tasks/steps/models.py (the registry pull of the fan-out) through
# ollama_fleet.tasks.kit.scripts.script_command; not installed on the host. POSIX sh and curl.
#
# pull.sh ADDRESS PORT MODEL BODY MAX_TIME STREAM
# POST BODY (`{"model": MODEL}`) to the Ollama instance on ADDRESS:PORT /api/pull (ADDRESS:
# where the host reaches its instances, loopback unless they bind elsewhere) and
# wait, at most MAX_TIME seconds, for the stream to end. The stream is written to the file
# STREAM as it comes (job-progress.sh reads each layer's `completed` bytes from it: Ollama
# sizes its partial files in full before the first byte arrives, so their size says
# nothing). Ollama answers 200 and streams its progress even when the pull fails, so the
# stream is read: a line with "error" or a last line without "success" is a failure.
# Exit: 0 pulled; 1 failed: stderr says why in one line `pull MODEL: ...`.
address=$1
port=$2
model=$3
body=$4
max_time=$5
stream=$6
err=$(curl -sS -N --max-time "$max_time" -X POST "http://$address:$port/api/pull" \
    -d "$body" -o "$stream" 2>&1) || { echo "pull $model: $err" >&2; exit 1; }
err=$(grep '"error"' "$stream" | tail -n 1)
if [ -n "$err" ]; then
    echo "pull $model: $err" >&2
    exit 1
fi
tail -n 1 "$stream" | grep -q '"success"' \
    || { echo "pull $model: stream ended without success" >&2; exit 1; }

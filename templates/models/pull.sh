#!/bin/sh
# Sent by tasks/steps/models.py (the registry pull of the fan-out) through
# ollama_fleet.tasks.kit.scripts.script_command; not installed on the host. POSIX sh and curl.
#
# pull.sh PORT MODEL BODY MAX_TIME STREAM
# POST BODY (`{"model": MODEL}`) to the Ollama instance on 127.0.0.1:PORT /api/pull and
# wait, at most MAX_TIME seconds, for the stream to end. The stream is written to the file
# STREAM as it comes (job-progress.sh reads each layer's `completed` bytes from it: Ollama
# sizes its partial files in full before the first byte arrives, so their size says
# nothing). Ollama answers 200 and streams its progress even when the pull fails, so the
# stream is read: a line with "error" or a last line without "success" is a failure.
# Exit: 0 pulled; 1 failed: stderr says why in one line `pull MODEL: ...`.
port=$1
model=$2
body=$3
max_time=$4
stream=$5
err=$(curl -sS -N --max-time "$max_time" -X POST "http://127.0.0.1:$port/api/pull" \
    -d "$body" -o "$stream" 2>&1) || { echo "pull $model: $err" >&2; exit 1; }
err=$(grep '"error"' "$stream" | tail -n 1)
if [ -n "$err" ]; then
    echo "pull $model: $err" >&2
    exit 1
fi
tail -n 1 "$stream" | grep -q '"success"' \
    || { echo "pull $model: stream ended without success" >&2; exit 1; }

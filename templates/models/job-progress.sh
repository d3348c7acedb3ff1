#!/bin/sh
# Sent by tasks/models.py (Mover.done_bytes) through tasks.scripts.script_command; not
# installed on the host. POSIX sh and coreutils (stat, sort).
#
# job-progress.sh JOB STORE HEX...
# How far a model's transfer (started by start-job.sh as JOB) has come. First line: the
# job's exit status (JOB.rc), or `running`. Then one line per HEX (a blob's sha256): the
# bytes of it on disk in the Ollama store STORE, whichever is largest of the finished
# blob, Ollama's own partial download and the fan-out's (fetch-model.sh's) partial copy;
# 0 when there is none yet.
# Exit: 0.
job=$1
store=$2
shift 2
cat "$job.rc" 2>/dev/null || echo running
for hex in "$@"; do
    n=$(stat -c %s "$store/blobs/sha256-$hex" "$store/blobs/sha256-$hex-partial" \
        "$store/.fanout/sha256-$hex.partial" 2>/dev/null | sort -n | tail -n 1)
    echo "${n:-0}"
done
exit 0

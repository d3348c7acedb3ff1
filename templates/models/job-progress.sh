#!/bin/sh
# Sent by tasks/steps/models.py (Mover.done_bytes) through ollama_fleet.tasks.kit.scripts.script_command; not
# installed on the host. POSIX sh, coreutils (stat, sort), grep and sed.
#
# job-progress.sh JOB STORE HEX...
# How far a model's transfer (started by start-job.sh as JOB) has come. First line: the
# job's exit status (JOB.rc), or `running`. Then one line per HEX (a blob's sha256): the
# bytes of it the host has, 0 when none yet: the finished blob's size in the Ollama store
# STORE, else whichever is larger of the fan-out's partial copy (fetch-model.sh) and the
# `completed` of the last line about that blob in an Ollama pull's stream (JOB.stream,
# written by pull.sh). Ollama's own partial file is not read: Ollama sizes it in full
# before the first byte arrives.
# Exit: 0.
job=$1
store=$2
shift 2
cat "$job.rc" 2>/dev/null || echo running
for hex in "$@"; do
    n=$(stat -c %s "$store/blobs/sha256-$hex" 2>/dev/null)
    if [ -z "$n" ]; then
        copied=$(stat -c %s "$store/.fanout/sha256-$hex.partial" 2>/dev/null)
        # the stream's last lines: a long pull's stream grows by some 16 lines a second
        pulled=$(tail -n 400 "$job.stream" 2>/dev/null | grep "\"sha256:$hex\"" | tail -n 1 \
            | sed -n 's/.*"completed":\([0-9][0-9]*\).*/\1/p')
        n=$(printf '%s\n%s\n' "${copied:-0}" "${pulled:-0}" | sort -n | tail -n 1)
    fi
    echo "${n:-0}"
done
exit 0

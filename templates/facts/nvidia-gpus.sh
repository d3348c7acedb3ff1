#!/bin/sh
# Sent by tasks/kit/facts.py (fact NvidiaGpus) through ollama_fleet.tasks.kit.scripts.script_command; not
# installed on the host. POSIX sh.
#
# nvidia-gpus.sh FIELDS
# Without nvidia-smi: nothing. With it: what `nvidia-smi --query-gpu=FIELDS
# --format=csv,noheader,nounits` prints (a line per GPU, or its error), then `rc=<exit
# status of nvidia-smi>`.
# Exit: always 0 (a fact: what it found is in its output).
fields=$1
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi "--query-gpu=$fields" --format=csv,noheader,nounits 2>&1
    echo "rc=$?"
fi
exit 0

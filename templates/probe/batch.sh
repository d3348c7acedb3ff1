#!/bin/sh
# Run by the deploy (tasks/probe.py) as one fact: many facts' commands in one round trip.
#
# batch.sh MARK [REQUIRED COMMAND]...
# Runs each COMMAND (a pyinfra fact's own command) with `sh -c`, one after the other, its
# stderr dropped, and frames its stdout with lines MARK:N:begin and MARK:N:end:STATUS
# (N counts from 0, STATUS is its exit status). When REQUIRED (a binary the fact needs,
# or empty) is not on PATH the command is not run and MARK:N:missing is said instead.
# Exit: 0 (each command's status is in its end line); 2 on a bad argument count.
set -u
if [ $# -lt 1 ] || [ $(( ($# - 1) % 2 )) -ne 0 ]; then
    echo "usage: $0 MARK [REQUIRED COMMAND]..." >&2
    exit 2
fi
mark=$1
shift
n=0
while [ $# -ge 2 ]; do
    required=$1
    command=$2
    shift 2
    echo "$mark:$n:begin"
    if [ -n "$required" ] && ! command -v "$required" >/dev/null 2>&1; then
        echo "$mark:$n:missing"
        status=0
    else
        sh -c "$command" 2>/dev/null
        status=$?
    fi
    echo
    echo "$mark:$n:end:$status"
    n=$((n + 1))
done

#!/bin/sh
# Run by the deploy (tasks/engine/probe.py) as one fact: many facts' commands in one round trip.
#
# batch.sh MARK [REQUIRED COMMAND]...
# Runs each COMMAND (a pyinfra fact's own command) with `sh -c`, all at once (facts read
# the host, and none depends on another's effect: the GPU proof's model load is what its
# own fact reads; a GPU host's slow facts, nvidia-smi in each container, then cost the
# slowest one's time, not their sum), its stderr dropped, and prints each one's stdout in
# turn, framed by lines MARK:N:begin and MARK:N:end:STATUS (N counts from 0, STATUS is its
# exit status). When REQUIRED (a binary the fact needs, or empty) is not on PATH the
# command is not run and MARK:N:missing is said instead. Outputs wait in a private
# directory of mktemp's, removed at exit; without one the commands run one after the
# other, the output the same. A command killed with the batch (its connection lost) runs
# on to its own end; each has a bound (curl's --max-time, the fact's own timeout).
# Exit: 0 (each command's status is in its end line); 2 on a bad argument count.
set -u
if [ $# -lt 1 ] || [ $(( ($# - 1) % 2 )) -ne 0 ]; then
    echo "usage: $0 MARK [REQUIRED COMMAND]..." >&2
    exit 2
fi
mark=$1
shift
dir=$(mktemp -d 2>/dev/null) || dir=
if [ -n "$dir" ]; then
    trap 'rm -rf "$dir"' EXIT
    trap 'exit 1' HUP INT TERM
fi

# Part N: its begin line, COMMAND's stdout (or `missing` when REQUIRED is not on PATH),
# an empty line (ends an output without a final newline), its end line. Written to a file
# its end line and all: a part a full disk cut short has no end line and reads as failed.
part() {
    echo "$mark:$1:begin"
    if [ -n "$2" ] && ! command -v "$2" >/dev/null 2>&1; then
        echo "$mark:$1:missing"
        status=0
    else
        sh -c "$3" 2>/dev/null </dev/null
        status=$?
    fi
    echo
    echo "$mark:$1:end:$status"
}

n=0
while [ $# -ge 2 ]; do
    if [ -n "$dir" ]; then
        part "$n" "$1" "$2" >"$dir/$n.out" &
    else
        part "$n" "$1" "$2"
    fi
    shift 2
    n=$((n + 1))
done
[ -n "$dir" ] || exit 0
wait
i=0
while [ "$i" -lt "$n" ]; do
    cat "$dir/$i.out" 2>/dev/null
    i=$((i + 1))
done
exit 0

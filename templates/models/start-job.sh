#!/bin/sh
# Sent by tasks/steps/models.py (Mover.run) through ollama_fleet.tasks.kit.scripts.script_command; not installed
# on the host. POSIX sh and setsid (util-linux).
#
# start-job.sh JOB COMMAND
# Start the shell command COMMAND in the background, in its own session (it outlives the
# SSH connection that started it), with its output in JOB.log; when it ends its exit
# status is written to JOB.rc (removed here first, so "no JOB.rc" means still running; an
# earlier job's JOB.stream goes too).
# job-progress.sh reads both.
# Exit: 0 started; 1 JOB's directory could not be made or the old JOB.rc removed.
job=$1
command=$2
{ mkdir -p "${job%/*}" && rm -f "$job.rc" "$job.stream"; } || exit 1
# $1 the command, $2 the job: expanded by the background shell, not here
# shellcheck disable=SC2016
setsid sh -c 'sh -c "$1" > "$2.log" 2>&1; echo $? > "$2.rc"' start-job "$command" "$job" \
    > /dev/null 2>&1 < /dev/null &

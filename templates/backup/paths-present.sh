#!/bin/sh
# Sent by tasks/steps/backup.py (fact PathsPresent) through ollama_fleet.tasks.kit.scripts.script_command; not
# installed on the host. POSIX sh.
#
# paths-present.sh PATH...
# Print each PATH that exists (any kind of file), one a line, in the order given.
# Exit: always 0 (a fact: what it found is in its output).
for p in "$@"; do
    [ -e "$p" ] && echo "$p"
done
exit 0

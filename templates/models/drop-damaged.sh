#!/bin/sh
# Sent by tasks/steps/models.py (receive) through ollama_fleet.tasks.kit.scripts.script_command; not installed on
# the host. POSIX sh and coreutils (stat, rm).
#
# drop-damaged.sh STORE HEX:SIZE...
# Remove from the Ollama store STORE each blob (blobs/sha256-HEX) that is there but not
# of SIZE bytes: a blob is named by its sha256, so one of another size is damaged, and
# Ollama's pull takes any blob that is there as done without checking it.
# Exit: 0; 1 a damaged blob could not be removed (stderr names it).
store=$1
shift
for layer in "$@"; do
    blob=$store/blobs/sha256-${layer%%:*}
    have=$(stat -c %s "$blob" 2>/dev/null) || continue
    [ "$have" = "${layer#*:}" ] || rm -f "$blob" || exit 1
done
exit 0

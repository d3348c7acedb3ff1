#!/bin/sh
# Sent by tasks/kit/facts.py (fact JsonFile) through ollama_fleet.tasks.kit.scripts.script_command; not
# installed on the host. POSIX sh.
#
# json-file.sh PATH
# The content of the file PATH, or the line `__absent__` when there is no such file.
# Exit: 0; or cat's when the file cannot be read.
path=$1
if [ -f "$path" ]; then
    cat "$path"
else
    echo __absent__
fi

#!/bin/sh
# Sent by tasks/kit/facts.py (fact ComposeStale) through ollama_fleet.tasks.kit.scripts.script_command; not
# installed on the host. POSIX sh and the docker CLI (compose plugin).
#
# compose-stale.sh ROOT PROJECT
# What the Compose file in ROOT wants and what runs, to compare config hashes:
#   want <service> <config hash>   per service of ROOT's Compose file
#   have <service> <config hash>   per container of the Compose project PROJECT
# Exit: always 0 (a fact: what it found is in its output).
root=$1
project=$2
if cd "$root" 2>/dev/null; then
    docker compose config --hash '*' 2>/dev/null | sed 's/^/want /'
fi
docker ps -a --filter "label=com.docker.compose.project=$project" \
    --format 'have {{.Label "com.docker.compose.service"}} {{.Label "com.docker.compose.config-hash"}}' \
    2>/dev/null
exit 0

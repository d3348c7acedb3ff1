#!/bin/sh
# Sent by tasks/facts.py (fact ComposeContainers) through tasks.scripts.script_command; not
# installed on the host. POSIX sh and the docker CLI.
#
# compose-containers.sh PROJECT
# One line per container of the Compose project PROJECT, running or not:
#   <id> <service> <state> <health> <image>
# health is Docker's health status, or `none` without a healthcheck. Nothing without
# Docker.
# Exit: always 0 (a fact: what it found is in its output).
project=$1
docker ps -a --filter "label=com.docker.compose.project=$project" \
    --format '{{.ID}} {{.Label "com.docker.compose.service"}} {{.State}} {{.Image}}' \
    2>/dev/null | while read -r id svc state image; do
    health=$(docker inspect -f \
        '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id" 2>/dev/null)
    echo "$id $svc $state $health $image"
done
exit 0

#!/bin/sh
# Sent by tasks/kit/facts.py (fact ComposeContainers) through ollama_fleet.tasks.kit.scripts.script_command; not
# installed on the host. POSIX sh and the docker CLI.
#
# compose-containers.sh PROJECT
# Two lines per container of the Compose project PROJECT, running or not:
#   ps <id> <image>
#   inspect <id> <service> <state>
# image is as `docker ps` shows it: the reference the container was created from, or the
# image's id once that reference names another image (a tag pulled again); state is
# Docker's State object as JSON (Status, and Health where there is a healthcheck: a
# template naming .State.Health would make docker leave out a container without one).
# Two docker calls whatever the number of containers. A container removed in between
# has no inspect line. Nothing without Docker.
# Exit: always 0 (a fact: what it found is in its output).
project=$1
listed=$(docker ps -a --no-trunc --filter "label=com.docker.compose.project=$project" \
    --format '{{.ID}} {{.Image}}' 2>/dev/null)
[ -n "$listed" ] || exit 0
printf '%s\n' "$listed" | sed 's/^/ps /'
# shellcheck disable=SC2046  # one id per word
docker inspect -f 'inspect {{.Id}} {{index .Config.Labels "com.docker.compose.service"}} {{json .State}}' \
    $(printf '%s\n' "$listed" | cut -d' ' -f1) 2>/dev/null
exit 0

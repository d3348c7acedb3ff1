#!/bin/sh
# Sent by tasks/facts.py (fact ComposeContainers) through tasks.scripts.script_command; not
# installed on the host. POSIX sh and the docker CLI.
#
# compose-containers.sh PROJECT
# One line per container of the Compose project PROJECT, running or not:
#   <id> <service> <image> <state>
# image is the one the container was created from, as Compose named it; state is Docker's
# State object as JSON (Status, and Health where there is a healthcheck). Two docker calls
# whatever the number of containers: `docker ps` for their ids, one `docker inspect` for
# all of them (its template names no field a container may lack: given several
# containers, Docker's CLI fails the whole call on one without a healthcheck if it does).
# A container removed in between is left out. Nothing without Docker.
# Exit: always 0 (a fact: what it found is in its output).
project=$1
ids=$(docker ps -aq --filter "label=com.docker.compose.project=$project" 2>/dev/null)
[ -n "$ids" ] || exit 0
# shellcheck disable=SC2086  # one id per word
docker inspect -f '{{.Id}} {{index .Config.Labels "com.docker.compose.service"}} {{.Config.Image}} {{json .State}}' \
    $ids 2>/dev/null
exit 0

#!/bin/sh
# Sent by tasks/kit/facts.py (fact DockerImages) through ollama_fleet.tasks.kit.scripts.script_command; not
# installed on the host. POSIX sh and the docker CLI.
#
# docker-images.sh IMAGE...
# One line per IMAGE present in the host's Docker image store: `<image>`. Nothing without
# Docker.
# Exit: always 0 (a fact: what it found is in its output).
for image in "$@"; do
    docker image inspect --format '{{.Id}}' "$image" >/dev/null 2>&1 && printf '%s\n' "$image"
done
exit 0

#!/bin/sh
# Sent by tasks/kit/facts.py (fact DockerNetwork) through ollama_fleet.tasks.kit.scripts.script_command; not
# installed on the host. POSIX sh, the docker CLI and /proc (Linux).
#
# docker-network.sh NETWORK
# If the Docker network NETWORK exists: the line `exists`, then `subnet <CIDR>` for each
# of its subnets. Then the host's IPv4 routes: /proc/net/route as it is.
# Exit: always 0 (a fact: what it found is in its output).
network=$1
docker network inspect "$network" \
    --format 'exists{{println}}{{range .IPAM.Config}}subnet {{.Subnet}}{{println}}{{end}}' \
    2>/dev/null
cat /proc/net/route 2>/dev/null
exit 0

#!/bin/sh
# Installed by the deploy (tasks/steps/gpu_ready.py) as
# /usr/local/libexec/ollama-fleet/gpu-guard, run every 15 s by
# ollama-fleet-gpu-guard.timer. POSIX sh and the docker CLI.
#
# gpu-guard.sh PROJECT HOLD_S
#   Restart every container of the Compose project PROJECT that Docker reports unhealthy
#   with a `gpu:` line from its healthcheck (templates/stack/ollama-gpu.sh): the instance
#   lost its GPUs (a `systemctl daemon-reload` under an affected toolkit cuts a running
#   container off them, NVIDIA/nvidia-container-toolkit#48) or a model landed on the CPU.
#   A restart runs the NVIDIA hook again and Ollama looks for its GPUs again. A container
#   restarted less than HOLD_S seconds ago is left alone (its start wait and start period
#   run first). Containers unhealthy for another reason are left to the operator.
# Exit: 0; each restart is one line in the journal.
project=$1
hold_s=$2
state=/run/ollama-fleet/gpu-guard
mkdir -p "$state"
now=$(date +%s)
for id in $(timeout 20 docker ps -q --filter "label=com.docker.compose.project=$project" \
    --filter health=unhealthy); do
    name=$(timeout 10 docker inspect --format '{{.Name}}' "$id") || continue
    name=${name#/}
    last=$(timeout 10 docker inspect --format \
        '{{range .State.Health.Log}}{{.Output}}{{end}}' "$id" | grep . | tail -n 1)
    case $last in
    gpu:*) ;;
    *) continue ;;
    esac
    if [ -f "$state/$name" ] && [ "$((now - $(cat "$state/$name")))" -lt "$hold_s" ]; then
        continue
    fi
    echo "$now" >"$state/$name"
    echo "gpu-guard: restarting $name: ${last#gpu: }"
    timeout 120 docker restart "$id" >/dev/null || echo "gpu-guard: restarting $name failed" >&2
done
exit 0

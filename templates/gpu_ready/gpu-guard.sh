#!/bin/sh
# Installed by the deploy (tasks/steps/gpu_ready.py) as
# /usr/local/libexec/ollama-fleet/gpu-guard, run every 15 s by
# ollama-fleet-gpu-guard.timer. POSIX sh, flock (util-linux), nvidia-smi and the docker CLI.
#
# gpu-guard.sh PROJECT HOLD_S LOCK
#   Give the GPU instances of the Compose project PROJECT their GPUs back, one instance a
#   run, and only while the host's own GPUs answer (nvidia-smi on the host; a driver
#   waiting for a reboot, a GPU off the bus: a restart would only leave the instance
#   stopped) and no deploy holds the host's run lock LOCK:
#   - an instance whose last healthcheck said `gpu: ...` (templates/stack/ollama-gpu.sh:
#     nvidia-smi fails in it, e.g. "Failed to initialize NVML: Unknown Error" after a
#     `systemctl daemon-reload` under the toolkit's legacy injection,
#     NVIDIA/nvidia-container-toolkit#48, or it lists fewer GPUs) is restarted: the
#     runtime injects its GPUs again;
#   - an instance Docker could not start (exited with an error, e.g. at boot while the
#     driver was not ready: Docker does not try again) is started.
#   An instance acted on less than HOLD_S seconds ago is left alone (its start wait and
#   start period run first). Containers unhealthy for another reason are left to the
#   operator and the roll.
# Exit: 0; each action is one line in the journal.
project=$1
hold_s=$2
lock=$3
state=/run/ollama-fleet/gpu-guard
# a deploy or a roll is changing this host: it recreates and proves the instances itself
if [ -f "$lock" ] && [ ! -L "$lock" ] && ! flock -n "$lock" true 2>/dev/null; then
    exit 0
fi
if ! smi=$(timeout 20 nvidia-smi -L 2>&1); then
    echo "gpu-guard: the host's nvidia-smi fails ($(printf '%s' "$smi" | head -n 1)): no restart helps; see ollama-fleet status" >&2
    exit 0
fi
mkdir -p "$state"
now=$(date +%s)
recent() {
    [ -f "$state/$1" ] && [ "$((now - $(cat "$state/$1")))" -lt "$hold_s" ]
}
act() {  # act NAME ACTION WHY
    echo "$now" >"$state/$1"
    echo "gpu-guard: ${2}ing $1: $3"
    timeout 120 docker "$2" "$1" >/dev/null || echo "gpu-guard: ${2}ing $1 failed" >&2
    exit 0  # one instance a run
}
filter="label=com.docker.compose.project=$project"
# the last healthcheck's output, Go-quoted on one line (a timed-out probe has no newline)
for name in $(timeout 20 docker ps --filter "$filter" --filter health=unhealthy \
    --format '{{.Names}}'); do
    recent "$name" && continue
    last=$(timeout 10 docker inspect --format \
        '{{range .State.Health.Log}}{{printf "%q" .Output}}{{"\n"}}{{end}}' "$name" |
        grep . | tail -n 1)  # docker ends its output with a newline of its own
    case $last in
    '"gpu: '*) why=${last#\"gpu: }; act "$name" restart "${why%\\n\"}" ;;
    esac
done
for name in $(timeout 20 docker ps -a --filter "$filter" --filter status=exited \
    --format '{{.Names}}'); do
    recent "$name" && continue
    error=$(timeout 10 docker inspect --format '{{.State.Error}}' "$name")
    [ -n "$error" ] || continue  # stopped by someone, not failed: theirs
    act "$name" start "it could not start: $error"
done
exit 0

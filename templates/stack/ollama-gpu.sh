#!/bin/sh
# Installed in the stack directory by the deploy (tasks/steps/stack.py) and mounted
# read-only into every GPU instance at /usr/local/lib/ollama-fleet/ollama-gpu.sh. POSIX sh
# and what the Ollama image has: `ollama`, coreutils' `timeout`, and `nvidia-smi`, which
# the NVIDIA runtime mounts for NVIDIA_DRIVER_CAPABILITIES=utility.
#
# ollama-gpu.sh start GPUS WAIT_S ARGS...
#   The instance's entrypoint. Ollama looks for its GPUs once, when it starts, and an
#   instance that starts without them serves from the CPU until it is restarted. So wait
#   (at most about WAIT_S seconds) until nvidia-smi lists GPUS GPUs and every GPU's
#   fabric is up (an NVSwitch board before Fabric Manager is done: CUDA answers 802),
#   then `exec ollama ARGS`. Not ready by then: exit 1, and Docker's restart policy
#   starts the instance again, until its GPUs are there.
# ollama-gpu.sh health GPUS
#   The instance's healthcheck. Unhealthy (exit 1, one line that Docker keeps in the
#   health log) when Ollama does not answer (its own error line), or, prefixed `gpu:`,
#   when the instance lost
#   its GPUs: nvidia-smi fails (after a `systemctl daemon-reload` under the toolkit's
#   legacy injection: "Failed to initialize NVML: Unknown Error") or lists other than GPUS
#   GPUs. The host's ollama-fleet-gpu-guard restarts an instance unhealthy with a `gpu:`
#   line. Where a model sits is not judged here: a client may ask for the CPU
#   (`num_gpu: 0`) or a context that does not fit.
# Exit: start: Ollama's own, or 1 when the GPUs are not ready in time; health: 0 healthy,
# 1 unhealthy; 2 a usage error.
mode=$1
gpus=$2

# gpu_problem [fabric]: prints what keeps the instance from its GPUs; nothing when they
# are there. With `fabric`, also whether a GPU's fabric is not (yet) up.
gpu_problem() {
    out=$(timeout 8 nvidia-smi -L 2>&1)
    rc=$?
    if [ "$rc" -ne 0 ]; then
        printf 'nvidia-smi exit %s: %s\n' "$rc" "$(printf '%s' "$out" | head -n 1)"
        return
    fi
    seen=$(printf '%s\n' "$out" | grep -c '^GPU [0-9]')
    if [ "$seen" -ne "$gpus" ]; then
        printf 'nvidia-smi lists %s GPUs, the instance was given %s\n' "$seen" "$gpus"
        return
    fi
    [ "$1" = fabric ] || return
    # each GPU's Fabric section of `nvidia-smi -q` (NVSwitch boards; "N/A" elsewhere)
    timeout 8 nvidia-smi -q 2>/dev/null | awk '
        /^[[:space:]]*Fabric[[:space:]]*$/ { f = 1; next }
        f && /^[[:space:]]*State[[:space:]]*:/ {
            sub(/^[^:]*:[[:space:]]*/, ""); state = $0
            if (state == "In Progress" || state == "Not Started") {
                print "GPU fabric not up yet (Fabric State: " state "; is Fabric Manager running?)"; exit
            }
            next
        }
        f && /^[[:space:]]*Status[[:space:]]*:/ {
            sub(/^[^:]*:[[:space:]]*/, ""); f = 0
            if (state == "Completed" && $0 != "Success" && $0 != "N/A") {
                print "GPU fabric failed (Fabric Status: " $0 ")"; exit
            }
        }'
}

case $mode in
start)
    wait_s=$3
    shift 3
    trap 'exit 143' TERM INT  # PID 1 while it waits: `docker stop` must not wait it out
    started=$(date +%s)
    said=
    while problem=$(gpu_problem fabric) && [ -n "$problem" ]; do
        if [ "$(($(date +%s) - started))" -ge "$wait_s" ]; then
            echo "ollama-fleet: GPUs not ready after ${wait_s} s: $problem; exiting for a restart" >&2
            exit 1
        fi
        [ "$problem" = "$said" ] || echo "ollama-fleet: waiting for the GPUs: $problem" >&2
        said=$problem
        sleep 1
    done
    exec ollama "$@"
    ;;
health)
    if ! out=$(ollama list 2>&1); then
        printf '%s\n' "$out" | head -n 1  # Ollama's own words, as the plain check had them
        exit 1
    fi
    problem=$(gpu_problem)
    if [ -n "$problem" ]; then
        echo "gpu: $problem"
        exit 1
    fi
    echo "ok: $gpus GPUs"
    ;;
*)
    echo "usage: ollama-gpu.sh start GPUS WAIT_S ARGS... | health GPUS" >&2
    exit 2
    ;;
esac

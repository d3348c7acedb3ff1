#!/bin/sh
# Installed by the deploy (tasks/steps/gpu_ready.py) as
# /usr/local/libexec/ollama-fleet/gpu-ready and run at every boot by
# ollama-fleet-gpu-ready.service, which Docker is ordered after: Docker, and so every
# Ollama instance, starts only when this board's GPU stack is ready. POSIX sh, nvidia-smi
# and systemctl.
#
# gpu-ready.sh GPUS TIMEOUT_S [FABRIC_UNIT]
#   Wait, at most TIMEOUT_S seconds, until nvidia-smi answers with GPUS GPUs and, where
#   FABRIC_UNIT is given (an NVSwitch board), that unit (Fabric Manager) is active and no
#   GPU's fabric is still being brought up (`nvidia-smi -q`, Fabric State "In Progress" or
#   "Not Started": until it is "Completed", CUDA fails with 802 and Ollama would start on
#   the CPU). nvidia-persistenced, Fabric Manager and NVLSM are ordered before this unit.
# Exit: 0 ready; 1 not ready in time (the reason on stderr, in the journal). Docker
# starts anyway then; each GPU instance waits for its own GPUs again.
gpus=$1
timeout_s=$2
fabric_unit=${3:-}

problem() {
    out=$(nvidia-smi -L 2>&1)
    rc=$?
    if [ "$rc" -ne 0 ]; then
        printf 'nvidia-smi exit %s: %s\n' "$rc" "$(printf '%s' "$out" | head -n 1)"
        return
    fi
    seen=$(printf '%s\n' "$out" | grep -c '^GPU [0-9]')
    if [ "$seen" -lt "$gpus" ]; then
        printf 'nvidia-smi lists %s GPUs of %s\n' "$seen" "$gpus"
        return
    fi
    [ -n "$fabric_unit" ] || return
    if ! systemctl is-active --quiet "$fabric_unit"; then
        printf '%s is %s\n' "$fabric_unit" "$(systemctl is-active "$fabric_unit")"
        return
    fi
    states=$(nvidia-smi -q 2>/dev/null | awk '
        /^[[:space:]]*Fabric[[:space:]]*$/ { fabric = 1; next }
        fabric && /^[[:space:]]*State[[:space:]]*:/ { sub(/^[^:]*:[[:space:]]*/, ""); print; fabric = 0 }')
    case $states in
    *"In Progress"* | *"Not Started"*)
        printf 'GPU fabric not ready yet (Fabric State: %s)\n' "$(printf '%s' "$states" | sort -u | tr '\n' ' ')"
        ;;
    esac
}

start=$(date +%s)
said=
while :; do
    now_problem=$(problem)
    if [ -z "$now_problem" ]; then
        echo "gpu-ready: $gpus GPUs ready after $(($(date +%s) - start)) s"
        exit 0
    fi
    if [ "$(($(date +%s) - start))" -ge "$timeout_s" ]; then
        echo "gpu-ready: not ready after $timeout_s s: $now_problem; Docker starts anyway" >&2
        exit 1
    fi
    if [ "$now_problem" != "$said" ]; then
        echo "gpu-ready: waiting: $now_problem"
        said=$now_problem
    fi
    sleep 1
done

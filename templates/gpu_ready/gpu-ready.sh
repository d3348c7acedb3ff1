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
#   the CPU) or its Status is an error. nvidia-persistenced and Fabric Manager are ordered
#   before this unit.
# Exit: 0 ready, or not ready in time (the reason on stderr, in the journal): Docker
# starts anyway then, and each GPU instance waits for its own GPUs again.
gpus=$1
timeout_s=$2
fabric_unit=${3:-}

problem() {
    out=$(timeout 20 nvidia-smi -L 2>&1)
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
    # each GPU's Fabric section of `nvidia-smi -q` (the same reading as a GPU instance's
    # start wait, templates/stack/ollama-gpu.sh)
    timeout 20 nvidia-smi -q 2>/dev/null | awk '
        /^[[:space:]]*Fabric[[:space:]]*$/ { f = 1; next }
        f && /^[[:space:]]*State[[:space:]]*:/ {
            sub(/^[^:]*:[[:space:]]*/, ""); state = $0
            if (state == "In Progress" || state == "Not Started") {
                print "GPU fabric not ready yet (Fabric State: " state ")"; exit
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

# CUDA needs /dev/nvidia-uvm, which only the nvidia-uvm module makes: NVIDIA's Debian
# packages load it on first use (nvidia-modprobe), and from toolkit 1.18 the runtime only
# injects device nodes that exist when a container starts
if command -v nvidia-modprobe >/dev/null 2>&1; then
    nvidia-modprobe -u -c=0 || echo "gpu-ready: nvidia-modprobe -u failed" >&2
fi
start=$(date +%s)
said=
while :; do
    now_problem=$(problem)
    if [ -z "$now_problem" ]; then
        echo "gpu-ready: $gpus GPUs ready after $(($(date +%s) - start)) s"
        exit 0
    fi
    if [ "$(($(date +%s) - start))" -ge "$timeout_s" ]; then
        # done waiting, not failed: a failed unit would make every later Docker restart
        # (a deploy's, an upgrade's) wait the whole bound again
        echo "gpu-ready: not ready after $timeout_s s: $now_problem; Docker starts anyway" >&2
        exit 0
    fi
    if [ "$now_problem" != "$said" ]; then
        echo "gpu-ready: waiting: $now_problem"
        said=$now_problem
    fi
    sleep 1
done

#!/bin/sh
# The GPU inference proof's look at one Ollama instance (tasks/steps/inference.py, fact
# ProvenPlacement): when the instance has no model loaded, MODEL is loaded first, then
# /api/ps is printed. Only a loaded model tells whether CUDA works in the instance
# (`size_vram`); loading one changes no file, package or container, so a re-run that finds
# the instance idle again (the model's keep-alive ran out) is still a run that changes
# nothing.
# gpu-proof.sh URL TIMEOUT_S KEEP_ALIVE MODEL
#   URL         the instance (http://ADDRESS:PORT)
#   TIMEOUT_S   the bound on the load
#   KEEP_ALIVE  -1 (a warm model: for good) or a duration (5m), as Ollama takes it
#   MODEL       a name the deploy validated (letters, digits, `._-:/`)
# Exit: 0 always; prints /api/ps's JSON, or __down__ when the instance does not answer.
url=$1
timeout_s=$2
keep=$3
model=$4
case $keep in
-1) keep=-1 ;;
*) keep="\"$keep\"" ;;
esac
ps=$(curl -sS --max-time 10 "$url/api/ps" 2>/dev/null) || { echo __down__; exit 0; }
case $ps in
*'"name":'*) ;;
*)
    answer=$(curl -sS --max-time "$timeout_s" -H 'Content-Type: application/json' \
        -d "{\"model\":\"$model\",\"keep_alive\":$keep}" "$url/api/generate" 2>&1)
    case $answer in
    *'does not support generate'*)  # an embedding model: loaded by one embedding
        curl -sS --max-time "$timeout_s" -H 'Content-Type: application/json' \
            -d "{\"model\":\"$model\",\"input\":\"proof\",\"keep_alive\":$keep}" \
            "$url/api/embed" >/dev/null 2>&1
        ;;
    esac
    ps=$(curl -sS --max-time 10 "$url/api/ps" 2>/dev/null) || { echo __down__; exit 0; }
    ;;
esac
printf '%s\n' "$ps"
exit 0

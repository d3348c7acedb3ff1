#!/bin/sh
# Sent by tasks/steps/models.py (kept_warm) through ollama_fleet.tasks.kit.scripts.script_command; not installed on
# the host. POSIX sh and curl.
#
# warm.sh URL TIMEOUT_S KEEP_ALIVE MODEL...
# Load each MODEL on the Ollama instance at URL (http://ADDRESS:PORT): a generate with no
# prompt (Ollama loads the model and answers `done_reason` `load`; an embedding-only
# model, which Ollama refuses to generate with, is loaded by one /api/embed instead), each
# bounded by TIMEOUT_S seconds; then check /api/ps lists every MODEL. KEEP_ALIVE is -1 to
# keep it loaded for good, a duration (`5m`) to keep it that long, or `default` for the
# instance's own OLLAMA_KEEP_ALIVE.
# MODEL is a name the deploy validated (letters, digits, `._-:/`), so it goes into the
# JSON body as it is.
# Exit: 0 every MODEL loaded; 2 a bad KEEP_ALIVE; 1 at the first that is not: stderr says which and Ollama's
# answer in one line, `URL: MODEL: not loaded: <answer>`.
url=$1
timeout_s=$2
keep=
case $3 in
default) ;;
-1) keep=',"keep_alive":-1' ;;
*[!0-9smh]* | [smh]* | '') echo "warm.sh: KEEP_ALIVE is -1, default or a duration (5m), not $3" >&2; exit 2 ;;
*) keep=",\"keep_alive\":\"$3\"" ;;
esac
shift 3
for model in "$@"; do
    answer=$(curl -sS --max-time "$timeout_s" -H 'Content-Type: application/json' \
        -d "{\"model\":\"$model\"$keep}" "$url/api/generate" 2>&1)
    case $answer in
    *'does not support generate'*)  # an embedding model: loaded by one embedding
        answer=$(curl -sS --max-time "$timeout_s" -H 'Content-Type: application/json' \
            -d "{\"model\":\"$model\",\"input\":\"warm-up\"$keep}" \
            "$url/api/embed" 2>&1)
        ;;
    esac
    case $answer in
    *'"done":true'* | *'"embeddings":[['*) ;;
    *)
        printf '%s: %s: not loaded: %s\n' "$url" "$model" "$(printf '%s' "$answer" | tr '\n' ' ')" >&2
        exit 1
        ;;
    esac
done
ps=$(curl -sS --max-time 10 "$url/api/ps" 2>&1)
for model in "$@"; do
    case $ps in
    *"\"name\":\"$model\""*) ;;
    *)
        printf '%s: %s: not loaded: /api/ps does not list it after the load\n' "$url" "$model" >&2
        exit 1
        ;;
    esac
done
exit 0

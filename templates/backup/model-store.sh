#!/bin/sh
# Sent by tasks/steps/backup.py (fact ModelStore) through ollama_fleet.tasks.kit.scripts.script_command; not
# installed on the host. POSIX sh and coreutils (df, find -printf, sha256sum) only.
#
# model-store.sh MODELS_PATH VOLUME STAGING
# Describe the Ollama store that instances mount at /root/.ollama: the host directory
# MODELS_PATH, or (MODELS_PATH empty) the Docker volume VOLUME. One line each:
#   root <directory>             the store's root (it holds models/)
#   avail <bytes>                free space on its filesystem
#   staging                      ROOT/STAGING exists (a restore's leftovers)
#   manifest <sha256>  <path>    per manifest, path under ROOT (names starting with `.`,
#                                manifests being written, are left out)
#   blob <name> <size>           per blob (sha256-<hex>; partial downloads left out)
# or, without a store, the one line `error <where>: not found (deploy the host first)`.
# Exit: always 0 (a fact: what it found is in its output).
models_path=$1
volume=$2
staging=$3
if [ -n "$models_path" ]; then
    root=$models_path
    where=$models_path
else
    root=$(docker volume inspect -f '{{.Mountpoint}}' "$volume" 2>/dev/null)
    where="Docker volume $volume"
fi
if [ -z "$root" ] || [ ! -d "$root" ]; then
    echo "error $where: not found (deploy the host first)"
else
    echo "root $root"
    echo "avail $(df --output=avail -B1 "$root" | tail -n 1 | tr -d ' ')"
    [ -e "$root/$staging" ] && echo staging
    cd "$root" && {
        [ ! -d models/manifests ] || find models/manifests -type f ! -name '.*' \
            -exec sha256sum {} + | sed 's/^/manifest /'
        [ ! -d models/blobs ] || find models/blobs -maxdepth 1 -type f -name 'sha256-*' \
            ! -name '*-partial' -printf 'blob %f %s\n'
    }
fi
exit 0

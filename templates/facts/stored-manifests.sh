#!/bin/sh
# Sent by tasks/kit/facts.py (fact StoredManifests) through ollama_fleet.tasks.kit.scripts.script_command; not
# installed on the host. POSIX sh, coreutils (stat, head, tr) and docker.
#
# stored-manifests.sh STORE MAX_BYTES MANIFEST...
# What the Ollama store STORE (the directory holding blobs/ and manifests/; empty: the
# Docker volume ollama-models' models/) holds of the manifests MANIFEST (paths relative
# to STORE): per MANIFEST, a line `manifest MANIFEST` and then the file's content on one
# line, cut at MAX_BYTES + 1 bytes (a manifest that long is refused by its reader, and
# no longer one is read whole), or a line `absent MANIFEST`; then one line
# `blob NAME SIZE` per file in blobs/ (a link followed: blobs moved to another disk).
# No store yet: only `absent` lines.
# Exit: 0.
store=$1
max=$2
shift 2
if [ -z "$store" ]; then
    volume=$(docker volume inspect -f '{{.Mountpoint}}' ollama-models 2>/dev/null)
    store=${volume:+$volume/models}
fi
for manifest in "$@"; do
    if [ -n "$store" ] && [ -f "$store/$manifest" ]; then
        echo "manifest $manifest"
        tr -d '\n' < "$store/$manifest" | head -c $((max + 1))
        echo
    else
        echo "absent $manifest"
    fi
done
if [ -n "$store" ] && [ -d "$store/blobs" ]; then
    cd "$store/blobs" && find -L . -maxdepth 1 -type f -name 'sha256-*' -exec stat -L -c 'blob %n %s' {} + \
        | sed 's,blob \./,blob ,'
fi
exit 0

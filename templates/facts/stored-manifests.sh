#!/bin/sh
# Sent by tasks/kit/facts.py (fact StoredManifests) through ollama_fleet.tasks.kit.scripts.script_command; not
# installed on the host. POSIX sh, coreutils (stat) and docker.
#
# stored-manifests.sh STORE MANIFEST...
# What the Ollama store STORE (the directory holding blobs/ and manifests/; empty: the
# Docker volume ollama-models' models/) holds of the manifests MANIFEST (paths relative
# to STORE): per MANIFEST, a line `manifest MANIFEST` and then the file's content on one
# line, or a line `absent MANIFEST`; then one line `blob NAME SIZE` per file in blobs/
# (a link followed: blobs moved to another disk).
# No store yet: only `absent` lines.
# Exit: 0.
store=$1
shift
if [ -z "$store" ]; then
    volume=$(docker volume inspect -f '{{.Mountpoint}}' ollama-models 2>/dev/null)
    store=${volume:+$volume/models}
fi
for manifest in "$@"; do
    if [ -n "$store" ] && [ -f "$store/$manifest" ]; then
        echo "manifest $manifest"
        tr -d '\n' < "$store/$manifest"
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

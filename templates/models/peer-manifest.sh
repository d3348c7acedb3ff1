#!/bin/sh
# Sent by tasks/steps/models.py (copied) through ollama_fleet.tasks.kit.scripts.script_command;
# not installed on the host. POSIX sh, curl and coreutils (head, stat, cat).
#
# peer-manifest.sh DEST URL MAX_BYTES
# Fetch a fleet peer's own manifest of a model from URL (its fan-out server) into the
# file DEST and print it. No more than MAX_BYTES + 1 bytes are ever read: curl's
# --max-filesize refuses a declared length, and head cuts a stream that has none.
# Exit: 0 fetched (DEST printed); 1 the peer does not answer or has no such manifest
# (nothing said: the next peer is asked); 2 the peer sent more than MAX_BYTES: stderr
# says so in one line.
dest=$1
url=$2
max=$3
rm -f "$dest" "$dest.rc"
{
    curl -fs -m 10 --max-filesize "$max" -o - "$url"
    echo $? > "$dest.rc"
} | head -c $((max + 1)) > "$dest"
rc=$(cat "$dest.rc" 2>/dev/null)
got=$(stat -c %s "$dest" 2>/dev/null || echo 0)
rm -f "$dest.rc"
if [ "$rc" = 63 ] || [ "$got" -gt "$max" ]; then
    rm -f "$dest"
    echo "its manifest is over $max bytes, more than a manifest may have ($url)" >&2
    exit 2
fi
[ "$rc" = 0 ] || { rm -f "$dest"; exit 1; }
cat "$dest"

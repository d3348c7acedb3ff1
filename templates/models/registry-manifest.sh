#!/bin/sh
# Sent by tasks/steps/models.py (operation known_to_registry) through
# ollama_fleet.tasks.kit.scripts.script_command; not installed on the host. POSIX sh, curl,
# sed and coreutils (head, stat, tail).
#
# registry-manifest.sh DEST URL MODEL ACCEPT MAX_BYTES
# Fetch the manifest of MODEL (as configured in ollama_models) from URL, asking for the
# media types ACCEPT (redirects followed), into the file DEST (its directory is made):
# written as DEST.new and renamed only when the registry answered 200 with at most
# MAX_BYTES, so DEST is whole or absent. No more than MAX_BYTES + 1 bytes are ever read:
# curl's --max-filesize refuses a declared length, and head cuts a stream that has none
# (curl before 8.4 lets those through).
# Exit: 0 fetched; 1 the registry does not answer, answers other than 200 (not that
# model), or with more than MAX_BYTES: stderr says so in one line naming MODEL.
dest=$1
url=$2
model=$3
accept=$4
max=$5
mkdir -p "${dest%/*}" \
    || { echo "ollama_models: $model: ${dest%/*} cannot be made" >&2; exit 1; }
rm -f "$dest.new" "$dest.head" "$dest.rc" "$dest.err"
{
    curl -sS -m 60 -L --proto =http,https --max-redirs 5 --max-filesize "$max" \
        -H "Accept: $accept" -D "$dest.head" -o - "$url" 2> "$dest.err"
    echo $? > "$dest.rc"
} | head -c $((max + 1)) > "$dest.new"
rc=$(cat "$dest.rc" 2>/dev/null)
# the status of the last answer: after redirects, the one the body came with
code=$(sed -n 's/^HTTP\/[^ ]* \([0-9][0-9][0-9]\).*/\1/p' "$dest.head" 2>/dev/null | tail -n 1)
got=$(stat -c %s "$dest.new" 2>/dev/null || echo 0)
rm -f "$dest.head" "$dest.rc"
said=$(cat "$dest.err" 2>/dev/null)
rm -f "$dest.err"
if [ "$rc" = 63 ] || [ "$got" -gt "$max" ]; then
    rm -f "$dest.new"
    echo "ollama_models: $model: the registry's answer is over $max bytes, more than a" \
        "manifest may have ($url)" >&2
    exit 1
fi
[ "$rc" = 0 ] || {
    rm -f "$dest.new"
    [ -z "$said" ] || echo "$said" >&2  # curl's own reason first, as it said it
    echo "ollama_models: $model: the registry does not answer ($url)" >&2
    exit 1
}
[ "$code" = 200 ] || {
    rm -f "$dest.new"
    echo "ollama_models: $model: not in the registry (HTTP ${code:-000} from $url)" >&2
    exit 1
}
mv "$dest.new" "$dest"

#!/bin/sh
# Sent by tasks/steps/models.py (operation known_to_registry) through
# ollama_fleet.tasks.kit.scripts.script_command; not installed on the host. POSIX sh and curl.
#
# registry-manifest.sh DEST URL MODEL ACCEPT
# Fetch the manifest of MODEL (as configured in ollama_models) from URL, asking for the
# media types ACCEPT (redirects followed), into the file DEST (its directory is made):
# written as DEST.new and renamed only when the registry answered 200, so DEST is whole
# or absent.
# Exit: 0 fetched; 1 the registry does not answer, or answers other than 200 (not that
# model): stderr says so in one line naming MODEL.
dest=$1
url=$2
model=$3
accept=$4
{ mkdir -p "${dest%/*}" \
    && code=$(curl -sS -m 60 -L --proto =http,https --max-redirs 5 -H "Accept: $accept" \
        -o "$dest.new" -w '%{http_code}' "$url"); } \
    || { echo "ollama_models: $model: the registry does not answer ($url)" >&2; exit 1; }
[ "$code" = 200 ] || {
    rm -f "$dest.new"
    echo "ollama_models: $model: not in the registry (HTTP $code from $url)" >&2
    exit 1
}
mv "$dest.new" "$dest"

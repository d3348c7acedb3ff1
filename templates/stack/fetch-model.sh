#!/bin/sh
# Installed by the deploy from templates/stack/fetch-model.sh; edits here are overwritten.
#
# fetch-model.sh STORE SOURCE HEX:SIZE...
# Copy the blobs a model needs into the Ollama store STORE (the directory holding blobs/
# and manifests/) from SOURCE, the start of every blob's URL, which ends in the blob's
# sha256 hex: a fleet peer's fan-out server (`http://PEER:PORT/blobs/sha256-`) or a
# registry mirror (`https://MIRROR/v2/NAMESPACE/MODEL/blobs/sha256:`, which may redirect,
# as registries do, to a blob store; redirects are followed over http(s) only). Each blob is
# downloaded into STORE/.fanout, resumed where a previous try stopped, its sha256
# checked against its name, and only then moved into blobs/. The manifest is not
# this script's business: the deploy writes it last, so a model is never listed
# before all its blobs are in place and verified.
# A blob never grows past its SIZE: each transfer reads at most the bytes it lacks, and
# one more to tell a source that sends more, which is refused (the file cut back to SIZE).
# POSIX sh, curl and coreutils (head, stat, truncate, sha256sum).
# Exit: 0 done; 2 a HEX:SIZE that is not a sha256 and a number of at most 15 digits;
# 3 the source failed or sent more than SIZE (try another); 4 a blob did not verify.
# Each failure says why in one line on stderr, naming the blob and the source.
set -u
umask 022  # the fan-out's nginx (another user) serves what lands here to peers
store=$1
source=$2
shift 2
case $source in
https:*) redirects='=https' ;;  # an https source never sends us to plain http
*) redirects='=http,https' ;;
esac
stage=$store/.fanout
mkdir -p "$stage" "$store/blobs"
for layer in "$@"; do
    hex=${layer%%:*}
    size=${layer#*:}
    # checked before they name a file or meet arithmetic (the manifest's reader did too)
    case $hex in *[!0-9a-f]*) hex= ;; esac
    case $size in '' | *[!0-9]* | ????????????????*) size= ;; esac
    if [ "${#hex}" != 64 ] || [ -z "$size" ]; then
        printf '%.80s: not HEX:SIZE (a sha256, a number of bytes of at most 15 digits)\n' \
            "$layer" >&2
        exit 2
    fi
    final=$store/blobs/sha256-$hex
    if [ -f "$final" ] && [ "$(stat -c %s "$final")" = "$size" ]; then
        continue
    fi
    part=$stage/sha256-$hex.partial
    have=$(stat -c %s "$part" 2>/dev/null || echo 0)
    [ "$have" -le "$size" ] || { rm -f "$part"; have=0; }  # longer than the blob: no part of it
    if [ "$have" -lt "$size" ]; then
        # head counts the bytes whatever curl knows of the length (curl's --max-filesize
        # lets a stream without one through before curl 8.4); curl's status via a file,
        # as POSIX sh has no pipefail. A stalled peer (under 1 KiB/s for 15 s) fails.
        rm -f "$part.rc"
        {
            curl -fsS --connect-timeout 5 --speed-limit 1024 --speed-time 15 -C "$have" \
                -L --proto =http,https --proto-redir "$redirects" --max-redirs 5 \
                -o - "$source$hex"
            echo $? > "$part.rc"
        } | head -c $((size - have + 1)) >> "$part"
        rc=$(cat "$part.rc" 2>/dev/null || echo 1)
        rm -f "$part.rc"
        if [ "$(stat -c %s "$part")" -gt "$size" ]; then
            truncate -s "$size" "$part"
            echo "sha256-$hex from $source$hex: the source sent more than its declared" \
                "$size bytes (cut there)" >&2
            exit 3
        fi
        if [ "$rc" != 0 ]; then
            # 33: the source cannot resume (no ranges): the next try starts afresh
            [ "$rc" = 33 ] && rm -f "$part"
            echo "sha256-$hex from $source$hex: curl exit $rc" >&2
            exit 3
        fi
    fi
    : >> "$part"  # an empty blob (SIZE 0) is fetched from nowhere: its file is made here
    if ! echo "$hex  $part" | sha256sum -c --status; then
        rm -f "$part"
        echo "sha256-$hex from $source$hex: sha256 does not match" >&2
        exit 4
    fi
    mv "$part" "$final"
done

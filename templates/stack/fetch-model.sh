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
# Exit: 0 done; 3 the source failed (try another); 4 a blob did not verify.
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
    final=$store/blobs/sha256-$hex
    if [ -f "$final" ] && [ "$(stat -c %s "$final")" = "$size" ]; then
        continue
    fi
    part=$stage/sha256-$hex.partial
    have=$(stat -c %s "$part" 2>/dev/null || echo 0)
    if [ "$have" -lt "$size" ]; then
        # a stalled peer (under 1 KiB/s for 15 s) counts as failed
        curl -fsS --connect-timeout 5 --speed-limit 1024 --speed-time 15 -C - \
            -L --proto =http,https --proto-redir "$redirects" --max-redirs 5 \
            -o "$part" "$source$hex" || {
            rc=$?
            # 33: the source cannot resume (no ranges): the next try starts afresh
            [ "$rc" = 33 ] && rm -f "$part"
            echo "sha256-$hex from $source$hex: curl exit $rc" >&2
            exit 3
        }
    fi
    if ! echo "$hex  $part" | sha256sum -c --status; then
        rm -f "$part"
        echo "sha256-$hex from $source$hex: sha256 does not match" >&2
        exit 4
    fi
    mv "$part" "$final"
done

#!/bin/sh
# Sent by tasks/steps/models.py (receive) through ollama_fleet.tasks.kit.scripts.script_command; not installed on
# the host. POSIX sh, coreutils (stat, df) and awk.
#
# free-space.sh STORE MODEL MARGIN_MIB HEX:SIZE...
# Whether the filesystem of the Ollama store STORE has room for the blobs of MODEL that
# it lacks (a blob already there at its size needs nothing; a partial download counts
# what it has), plus MARGIN_MIB to spare, before any byte of them is downloaded.
# Every SIZE is checked to be a decimal number of at most 15 digits (under 10^15 bytes,
# 888 TiB) before any arithmetic: 64-bit shell arithmetic would wrap on larger ones and
# find room where there is none. The sum stops growing past 10^18 (no filesystem is that
# large), so it never wraps either, however many SIZEs come.
# Exit: 0 room enough; 1 not, or a SIZE that is not a number: stderr says in one line
# `MODEL: needs N MiB more in STORE (with M MiB to spare), F MiB free` or
# `MODEL: blob sha256-HEX: size SIZE is not a number of bytes (at most 15 digits)`.
store=$1
model=$2
margin=$3
shift 3
need=0
for layer in "$@"; do
    hex=${layer%%:*}
    size=${layer#*:}
    case $size in
    '' | *[!0-9]* | ????????????????*)
        printf '%s: blob sha256-%.64s: size %.40s is not a number of bytes (at most 15 digits)\n' \
            "$model" "$hex" "$size" >&2
        exit 1
        ;;
    esac
    have=$(stat -c %s "$store/blobs/sha256-$hex" 2>/dev/null || echo 0)
    [ "$have" = "$size" ] && continue
    part=$(stat -c %s "$store/.fanout/sha256-$hex.partial" 2>/dev/null || echo 0)
    [ "$part" -le "$size" ] || part=0  # longer than the blob: not kept (fetch-model.sh)
    [ "$need" -ge 1000000000000000000 ] || need=$((need + size - part))
done
[ -d "$store" ] || store=${store%/*}  # not there yet: the filesystem it will be made on
free=$(df -Pk "$store" | awk 'NR == 2 { print $4 }')
need_mib=$(( (need + 1048575) / 1048576 ))
free_mib=$((free / 1024))
if [ $((need_mib + margin)) -gt "$free_mib" ]; then
    printf '%s: needs %s MiB more in %s (with %s MiB to spare), %s MiB free\n' \
        "$model" "$need_mib" "$store" "$margin" "$free_mib" >&2
    exit 1
fi
exit 0

#!/bin/sh
# The packaged nvidia-persistenced unit's ExecStart lines (Ubuntu's passes
# --no-persistence-mode; NVIDIA's sample unit does not) and the deploy's drop-in, if any.
# persistenced-unit.sh UNIT DROPIN
#   UNIT    the unit's file name (nvidia-persistenced.service)
#   DROPIN  the deploy's drop-in (/etc/systemd/system/UNIT.d/<name>.conf)
# Exit: 0 always; prints unit=PATH and exec=LINE for the packaged unit (the first of
# /usr/lib/systemd/system and /lib/systemd/system that has it; none: no unit= line), and
# dropin=LINE for each line of DROPIN (absent: no dropin= line).
unit=$1
dropin=$2
for dir in /usr/lib/systemd/system /lib/systemd/system; do
    if [ -f "$dir/$unit" ]; then
        printf 'unit=%s\n' "$dir/$unit"
        sed -n 's/^[[:space:]]*\(ExecStart=.*\)$/exec=\1/p' "$dir/$unit"
        break
    fi
done
[ -f "$dropin" ] && sed 's/^/dropin=/' "$dropin"
exit 0

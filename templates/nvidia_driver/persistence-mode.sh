#!/bin/sh
# Make nvidia-persistenced keep persistence mode on where its packaged unit turns it off
# (Ubuntu's runs `--no-persistence-mode`): write the drop-in the deploy made (its
# ExecStart is the packaged one without that flag), then systemd reloads the unit and the
# daemon restarts if it runs (a stopped one is left to its own start: the udev rule or
# the deploy's service step). With no TEXT the drop-in is removed.
# persistence-mode.sh UNIT DROPIN [TEXT]
#   UNIT    the unit (nvidia-persistenced.service)
#   DROPIN  the drop-in's path (/etc/systemd/system/UNIT.d/<name>.conf)
#   TEXT    the drop-in's content
# Exit: 0 done; non-zero if the file cannot be written or systemd refuses the reload.
set -eu
unit=$1
dropin=$2
text=${3:-}
if [ -z "$text" ]; then
    rm -f "$dropin"
else
    mkdir -p "$(dirname "$dropin")"
    printf '%s' "$text" >"$dropin.tmp"
    chmod 644 "$dropin.tmp"
    mv "$dropin.tmp" "$dropin"
fi
systemctl daemon-reload
if systemctl is-active --quiet "$unit"; then
    systemctl restart "$unit"
fi

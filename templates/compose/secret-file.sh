#!/bin/sh
# Sent by tasks/kit/compose.py (secret_file) through ollama_fleet.tasks.kit.scripts.script_command; not installed
# on the host. POSIX sh.
#
# secret-file.sh stage STAGE
#   A fresh mode-700 directory STAGE, owned by the user pyinfra uploads as (the SSH user
#   that ran sudo, else whoever runs this): its upload lands there, unseen by others.
# secret-file.sh place STAGE STAGED DEST
#   STAGED (the upload, in STAGE) made root's, mode 600, renamed to DEST; STAGE removed.
# Exit: 0 done; 1 a step failed (its message on stderr); 2 a bad argument.
set -eu
case "${1:-}" in
    stage)
        [ $# -eq 2 ] || { echo "usage: $0 stage STAGE" >&2; exit 2; }
        rm -rf "$2"
        install -d -m 700 -o "${SUDO_USER:-$(id -un)}" "$2"
        ;;
    place)
        [ $# -eq 4 ] || { echo "usage: $0 place STAGE STAGED DEST" >&2; exit 2; }
        chown 0:0 "$3"
        chmod 600 "$3"
        mv "$3" "$4"
        rm -rf "$2"
        ;;
    *)
        echo "usage: $0 stage STAGE | place STAGE STAGED DEST" >&2
        exit 2
        ;;
esac

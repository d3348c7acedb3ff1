#!/bin/sh
# Sent by tasks/kit/lock.py through ollama_fleet.tasks.kit.scripts.script_command when a run starts on a host;
# not installed on the host. POSIX sh, flock, setsid and stat (util-linux, coreutils), /proc
# (Linux). Runs as root (ssh_user root, or _sudo).
#
# The lock lives in a directory only root can enter (mode 0700, owned by root, made here
# under /run, itself root's): no other local user can create, replace or link anything
# in it, so a lock or owner file cannot be planted, blocked or redirected. The lock must
# be a regular file owned by root and is never followed through a link.
#
# hold.sh take LOCK OWNER
# Takes the host's run lock (flock on the file LOCK) for as long as the SSH connection
# this command came over lasts: a holder process in the background keeps it until that
# connection's sshd process is gone (the run ended, or its machine or network went),
# then lets go. OWNER (who runs what) is kept in LOCK.owner meanwhile, with the holder's
# pid, so a second run can say who it waits for. The holder looks five times a second,
# so a run that follows one that just ended waits at most that long (up to 3 s are
# allowed); one held by a live run is not waited for, but one held by the host's health
# agent for a healing action (its owner line starts with ollama-fleet-health) is, for up
# to 10 minutes: the action is bounded and the run goes on once it is done.
# Exit: 0 held for this connection; 1 another run holds it (LOCK.owner on stdout);
# 2 no SSH connection found to hold it for; 3 the lock's directory or file is not root's
# alone, or this is not root (one line on stdout says which).
#
# hold.sh break LOCK HOLDER
# Ends the holder HOLDER of LOCK (a run that is known to be gone but whose connection
# the host has not noticed yet, after a network cut): its lock goes with it. Only when
# /proc shows HOLDER is that holder: root's process, started by this script for LOCK and
# for the connection LOCK.owner names, with LOCK open and locked. A pid from a file is
# never killed on the file's word alone.
# Exit: 0 ended; 1 HOLDER is not LOCK's holder.
mode=$1
lock=$2
dir=${lock%/*}
if [ "$mode" = break ]; then
    holder=$3
    case $holder in '' | *[!0-9]*) exit 1 ;; esac
    [ ! -L "$lock.owner" ] && [ -f "$lock.owner" ] || exit 1
    conn=$(sed -n "s/.* (holder $holder, connection \([0-9][0-9]*\))\$/\1/p" "$lock.owner")
    [ -n "$conn" ] || exit 1
    [ "$(stat -c %u "/proc/$holder" 2>/dev/null)" = 0 ] || exit 1
    # its arguments: sh -c SCRIPT hold LOCK OWNER CONNECTION READY (see take below)
    # (NULs between them; the script's own newlines made spaces first)
    args=$(tr '\n\000' ' \n' <"/proc/$holder/cmdline" 2>/dev/null | sed -n '4p;5p;7p' | tr '\n' ' ')
    [ "$args" = "hold $lock $conn " ] || exit 1
    [ "$(readlink "/proc/$holder/fd/9")" = "$lock" ] || exit 1
    inode=$(stat -c %i "$lock") || exit 1
    grep -Eq "^lock:.* FLOCK .*:$inode " "/proc/$holder/fdinfo/9" 2>/dev/null || exit 1
    kill "$holder" 2>/dev/null
    i=0
    while [ -e "/proc/$holder" ] && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    rm -f "$lock.owner"
    exit 0
fi
owner=$3

# This connection's sshd: the nearest ancestor named sshd (sshd-session from OpenSSH 9.8).
pid=$$
conn=
while [ -n "$pid" ] && [ "$pid" -gt 1 ]; do
    case $(cat "/proc/$pid/comm" 2>/dev/null) in
        sshd|sshd-session) conn=$pid; break ;;
    esac
    pid=$(sed -n 's/^PPid:[[:space:]]*//p' "/proc/$pid/status" 2>/dev/null)
done
if [ -z "$conn" ]; then
    echo "no SSH connection found to hold the run lock for"
    exit 2
fi

if [ "$(id -u)" != 0 ]; then
    echo "the run lock needs root: connect as root, or set _sudo"
    exit 3
fi
if [ -L "$dir" ] || { [ -e "$dir" ] && [ ! -d "$dir" ]; }; then
    echo "$dir is not a directory: the run lock is refused"
    exit 3
fi
(umask 077 && mkdir -p "$dir") || exit 3
[ "$(stat -c %u "$dir")" = 0 ] || { echo "$dir is not owned by root: the run lock is refused"; exit 3; }
chmod 0700 "$dir" || exit 3
if [ -L "$lock" ] || { [ -e "$lock" ] && { [ ! -f "$lock" ] || [ "$(stat -c %u "$lock")" != 0 ]; }; }; then
    echo "$lock is not a regular file of root's: the run lock is refused"
    exit 3
fi
ready="$lock.ready.$$"
rm -f "$ready"
# the holder: its own session, no terminal, nothing of the SSH channel kept open (its
# arguments are its $1..$4: the single quotes are on purpose)
# shellcheck disable=SC2016
setsid -w sh -c '
    exec 9>>"$1"
    if ! flock -w 3 9; then
        case $(cat "$1.owner" 2>/dev/null) in
            ollama-fleet-health*) flock -w 600 9 || exit 1 ;;
            *) exit 1 ;;
        esac
    fi
    printf "%s (holder %s, connection %s)\n" "$2" "$$" "$3" > "$1.owner"
    : > "$4"
    while [ -e "/proc/$3" ]; do sleep 0.2; done
    rm -f "$1.owner"
' hold "$lock" "$owner" "$conn" "$ready" </dev/null >/dev/null 2>&1 &
holder=$!
i=0
# at most 610 s: the holder takes the lock or gives up in 3 s (600 s for the agent)
while [ "$i" -lt 6100 ]; do
    if [ -e "$ready" ]; then
        rm -f "$ready"
        exit 0
    fi
    kill -0 "$holder" 2>/dev/null || break
    sleep 0.1
    i=$((i + 1))
done
kill "$holder" 2>/dev/null
rm -f "$ready"
cat "$lock.owner" 2>/dev/null || echo "another run (its owner not recorded)"
exit 1

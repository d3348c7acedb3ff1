#!/bin/sh
# The official redis image's entrypoint, for Debian's redis-server (lab stand-in).
set -e

# first arg is `-f` or `--some-option`, or `something.conf`: run redis-server with it
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
	set -- redis-server "$@"
fi

# The official image compiles protected mode off; Debian's build has it on, so say it on
# the command line: after a config file (which must come first) and before the caller's
# options, which still win. A config file that sets protected-mode itself is left alone;
# informational modes (only read as the first argument) are left as they are.
if [ "$1" = 'redis-server' ]; then
	shift
	case "${1:-}" in
	-v | --version | -h | --help | --test-memory | --check-system)
		set -- redis-server "$@"
		;;
	-* | '')
		set -- redis-server --protected-mode no "$@"
		;;
	*)
		conf=$1
		shift
		if [ -r "$conf" ] && grep -qiE '^[[:space:]]*protected-mode[[:space:]]' "$conf"; then
			set -- redis-server "$conf" "$@"
		else
			set -- redis-server "$conf" --protected-mode no "$@"
		fi
		;;
	esac
fi

# set an appropriate umask (if one isn't set already)
um="$(umask)"
if [ "$um" = '0022' ]; then
	umask 0077
fi

# as root (not started with `--user`): own /data and run redis-server as user redis
if [ "$1" = 'redis-server' ] && [ "$(id -u)" = '0' ]; then
	find . \! -user redis -exec chown redis '{}' +
	exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi

exec "$@"

#!/bin/sh
# Fabric Manager at the driver's version: it refuses to start with a driver of another
# version, and CUDA then fails on the NVSwitch board. Where apt's dependencies do not tie
# the two (NVIDIA's CUDA repository) an update of the driver alone leaves it behind; this
# installs the Fabric Manager version whose upstream part is the driver package's.
# fabricmanager-version.sh DRIVER FABRICMANAGER
#   DRIVER         the installed package whose version is the driver's
#   FABRICMANAGER  Fabric Manager's package
# Exit: 0 the versions match (now); 1 the driver is not installed, apt has no Fabric
# Manager of its version (named on stderr), or apt failed.
set -u
driver=$1
fm=$2
# upstream VERSION: without epoch and Debian revision (580.95.05-1 -> 580.95.05)
upstream() {
    v=${1#*:}
    printf '%s\n' "${v%-*}"
}
have_driver=$(dpkg-query -W -f='${Version}' "$driver" 2>/dev/null)
if [ -z "$have_driver" ]; then
    echo "$driver: not installed; Fabric Manager follows the driver's version" >&2
    exit 1
fi
want=$(upstream "$have_driver")
have_fm=$(dpkg-query -W -f='${Version}' "$fm" 2>/dev/null)
if [ -n "$have_fm" ] && [ "$(upstream "$have_fm")" = "$want" ]; then
    exit 0
fi
version=$(apt-cache madison "$fm" 2>/dev/null | awk -F '|' -v want="$want" '{
    v = $2; gsub(/ /, "", v); u = v; sub(/^[0-9]+:/, "", u); sub(/-[^-]*$/, "", u)
    if (u == want) { print v; exit } }')
if [ -z "$version" ]; then
    echo "$fm: no version $want in this host's apt sources; Fabric Manager must be the driver's version ($driver $have_driver) or it refuses to start" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    install --no-install-recommends --allow-downgrades --allow-change-held-packages \
    "$fm=$version"

#!/bin/sh
# Install the NVIDIA driver as NVIDIA's and Canonical's guides do: the running kernel's
# headers first (DKMS builds the module against them, and the driver packages only
# recommend them), then the package that holds the branch, then the driver itself.
# install.sh HEADERS HEADERS_META PIN PACKAGE...
#   HEADERS       the running kernel's headers package ('' where the modules come
#                 precompiled)
#   HEADERS_META  the headers of the kernels to come (their flavour's meta-package), so
#                 DKMS builds the module for the next kernel too; installed where apt has
#                 it, else said on stderr ('' none)
#   PIN           the package that pins the branch ('' where the names carry it)
#   PACKAGE       the driver's packages (Fabric Manager with them on NVSwitch boards)
# Before anything is installed it stops, with one line naming the package, where the
# headers are not in the host's apt sources (the module would silently not be built and
# nvidia-smi would fail after the reboot), where a precompiled module package of the
# running kernel (a PACKAGE named `...-$(uname -r)`: Canonical builds one per kernel it
# publishes) is not in them, or where a driver package is a transitional one (Canonical
# turns a retired branch into one that installs a newer branch).
# Exit: 0 installed; 1 a package named above is missing or transitional, or apt failed.
set -eu
headers=$1
meta=$2
pin=$3
shift 3
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq

candidate() {
    apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *//p'
}
if [ -n "$headers" ]; then
    found=$(candidate "$headers")
    if [ -z "$found" ] || [ "$found" = "(none)" ]; then
        echo "$headers: not in this host's apt sources; the driver's module cannot be built for the running kernel $(uname -r) (install its headers' source, or boot a kernel that has them)" >&2
        exit 1
    fi
fi
kernel=$(uname -r)
for package in "$@"; do
    case $package in
        *-"$kernel")
            found=$(candidate "$package")
            if [ -z "$found" ] || [ "$found" = "(none)" ]; then
                echo "$package: not in this host's apt sources; no precompiled NVIDIA module for the running kernel $kernel (boot a kernel the archive builds modules for, or take nvidia_driver_ubuntu_modules: dkms)" >&2
                exit 1
            fi
            ;;
    esac
done
for package in "$@"; do
    if apt-cache show --no-all-versions "$package" 2>/dev/null \
            | grep -qi '^Description:.*transitional'; then
        echo "nvidia_driver_branch: $package is a transitional package (its branch is retired and it installs a newer one); choose a supported branch" >&2
        exit 1
    fi
done

install() {
    apt-get -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        install --no-install-recommends --allow-downgrades --allow-change-held-packages "$@"
}
if [ -n "$headers" ]; then
    install "$headers"
fi
if [ -n "$meta" ]; then
    found=$(candidate "$meta")
    if [ -n "$found" ] && [ "$found" != "(none)" ]; then
        install "$meta"
    else
        echo "$meta: not in this host's apt sources; the next kernel's headers, and so its NVIDIA module, must be installed by hand" >&2
    fi
fi
if [ -n "$pin" ]; then
    install "$pin"
fi
install "$@"

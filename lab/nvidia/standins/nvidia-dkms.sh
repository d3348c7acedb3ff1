#!/bin/sh
# Fleet lab stand-in for what Debian's dkms (3.2, Debian 13's) does with NVIDIA's kernel
# module (package @PACKAGE@, @FLEETLAB_MODULE_FLAVOUR@ modules, version
# @FLEETLAB_DRIVER_VERSION@). Not dkms, not NVIDIA software: nothing is compiled.
# Installed as /usr/lib/fleetlab/nvidia-dkms:
# - `nvidia-dkms build`: what dkms's common.postinst does in the package's postinst,
#   for the running kernel and, where a newer one is installed (the newest
#   /boot/config-K whose /lib/modules/K exists, compared by version and ABI as dkms
#   does), for that kernel too;
# - `nvidia-dkms autoinstall KERNEL`: what dkms_autoinstaller does when KERNEL's image or
#   headers are installed later (dkms's /etc/kernel/postinst.d and header_postinst.d
#   hooks run it); nothing where this version is installed for KERNEL already;
# - `nvidia-dkms status`: like `dkms status`.
# The running kernel is the one the lab host booted (/run/fleetlab/booted-kernel, which
# `uname -r` reports there too), else `uname -r`.
# As dkms checks, the module is built only where /lib/modules/KERNEL/build/include
# exists (build links to /usr/src/linux-headers-KERNEL, the headers package's); without
# it the build is skipped with dkms's message and exit 0: the package install succeeds
# and the module is missing at the next boot. A built module is the file
# /lib/modules/KERNEL/updates/dkms/nvidia.ko holding "<version> <flavour>"; the
# package's postrm deletes it on remove and purge.
# Where the signing pair dkms uses on Debian exists (/var/lib/dkms/mok.key and its DER
# certificate /var/lib/dkms/mok.pub) the module is signed with it, as dkms signs each
# module it builds: a third word, the certificate's sha256, which the lab's module
# loading checks against the keys enrolled in MOK under Secure Boot (nvidia-kmod-load).
# Without the pair it stays unsigned, as dkms leaves it where it cannot sign (the lab's
# headers carry no sign-file, so nothing generates a pair).
# Paths are prefixed with $FLEETLAB_ROOT (default /). Exit: 0, 2 on a usage error.
set -e
R="${FLEETLAB_ROOT:-/}"
R="${R%/}"
NAME=nvidia
VERSION="@FLEETLAB_DRIVER_VERSION@"
FLAVOUR="@FLEETLAB_MODULE_FLAVOUR@"
ARCH=x86_64
MOK_KEY="$R/var/lib/dkms/mok.key"
MOK_CERT="$R/var/lib/dkms/mok.pub"

# dkms's _check_kernel_dir: /lib/modules/KERNEL/build/include exists (a link is
# resolved inside $FLEETLAB_ROOT).
have_headers() {
    build="$R/lib/modules/$1/build"
    if [ -L "$build" ]; then
        target=$(readlink "$build")
        case "$target" in
            /*) build="$R$target" ;;
            *) build="$R/lib/modules/$1/$target" ;;
        esac
    fi
    [ -e "$build/include" ]
}

running_kernel() {
    booted=$(cat "$R/run/fleetlab/booted-kernel" 2>/dev/null || true)
    if [ -n "$booted" ]; then echo "$booted"; else uname -r; fi
}

# dkms_common.postinst's _get_newest_kernel_debian: the newest /boot/config-K, compared
# as "<version>-<ABI>" with dpkg, from the running kernel up; '' unless /lib/modules/K
# exists
newest_kernel() {
    current=$1
    version=${current%%-*}
    abi=${current#*-}
    compare_to="$version-${abi%%-*}"
    newest=""
    for config in "$R"/boot/config-*; do
        [ -f "$config" ] || continue
        kernel=${config#"$R"/boot/config-}
        version=${kernel%%-*}
        abi=${kernel#*-}
        if dpkg --compare-versions "$version-${abi%%-*}" ge "$compare_to"; then
            newest=$kernel
            compare_to="$version-${abi%%-*}"
        fi
    done
    if [ -n "$newest" ] && [ ! -e "$R/lib/modules/$newest" ]; then
        newest=""
    fi
    echo "$newest"
}

# dkms build + dkms install
build_and_install() {
    kernel=$1
    dest="$R/lib/modules/$kernel/updates/dkms"
    mkdir -p "$dest"
    signer=""
    if [ -f "$MOK_KEY" ] && [ -f "$MOK_CERT" ]; then
        signer=" $(sha256sum "$MOK_CERT" | cut -d' ' -f1)"
    fi
    printf '%s %s%s\n' "$VERSION" "$FLAVOUR" "$signer" > "$dest/$NAME.ko.tmp"
    mv "$dest/$NAME.ko.tmp" "$dest/$NAME.ko"
    echo "Building module(s)... done."
    if [ -n "$signer" ]; then
        echo "Signing module /var/lib/dkms/$NAME/$VERSION/build/$NAME.ko"
    fi
    echo "Installing /lib/modules/$kernel/updates/dkms/$NAME.ko"
    echo "Running depmod... done."
}

case "${1:-}" in
    build)
        current=$(running_kernel)
        kernels=$current
        newest=$(newest_kernel "$current")
        if [ -n "$newest" ] && [ "$newest" != "$current" ]; then
            kernels="$current $newest"
        fi
        echo "Loading new $NAME/$VERSION DKMS files..."
        echo "Building for $(echo "$kernels" | sed 's/ / and /')"
        for kernel in $kernels; do
            echo ""
            if have_headers "$kernel"; then
                echo "Building initial module $NAME/$VERSION for $kernel"
                build_and_install "$kernel"
            else
                echo "Module build for kernel $kernel was skipped since the"
                echo "kernel headers for this kernel do not seem to be installed."
            fi
        done
        ;;
    autoinstall)
        kernel="${2:-$(running_kernel)}"
        module="$R/lib/modules/$kernel/updates/dkms/$NAME.ko"
        if [ -f "$module" ] && [ "$(cut -d' ' -f1 "$module")" = "$VERSION" ]; then
            :  # installed for this kernel already: dkms autoinstall skips it, silently
        elif have_headers "$kernel"; then
            echo "Autoinstall of module $NAME/$VERSION for kernel $kernel ($ARCH)"
            build_and_install "$kernel"
            echo ""
            echo "Autoinstall on $kernel succeeded for module(s) $NAME."
        else
            echo "Automatic installation of modules for kernel $kernel was skipped since the kernel headers for this kernel do not seem to be installed."
        fi
        ;;
    status)
        found=0
        for module in "$R"/lib/modules/*/updates/dkms/"$NAME".ko; do
            [ -e "$module" ] || continue
            kernel=${module#"$R"/lib/modules/}
            kernel=${kernel%%/*}
            echo "$NAME/$(cut -d' ' -f1 "$module"), $kernel, $ARCH: installed"
            found=1
        done
        [ "$found" = 1 ] || echo "$NAME/$VERSION: added"
        ;;
    *)
        echo "Usage: nvidia-dkms build | autoinstall KERNEL | status" >&2
        exit 2
        ;;
esac
exit 0

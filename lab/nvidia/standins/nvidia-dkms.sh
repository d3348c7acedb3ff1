#!/bin/sh
# Fleet lab stand-in for what Debian's dkms (3.2, Debian 13's) does with NVIDIA's kernel
# module (package @PACKAGE@, @FLEETLAB_MODULE_FLAVOUR@ modules, version
# @FLEETLAB_DRIVER_VERSION@). Not dkms, not NVIDIA software: nothing is compiled.
# Installed as /usr/lib/fleetlab/nvidia-dkms:
# - `nvidia-dkms build`: what dkms's common.postinst does in the package's postinst,
#   for the running kernel;
# - `nvidia-dkms autoinstall KERNEL`: what dkms_autoinstaller does when the headers of
#   KERNEL are installed later (the lab's headers package runs it, as Debian's runs
#   /etc/kernel/header_postinst.d/dkms);
# - `nvidia-dkms status`: like `dkms status`.
# As dkms checks, the module is built only where /lib/modules/KERNEL/build/include
# exists (build links to /usr/src/linux-headers-KERNEL, the headers package's); without
# it the build is skipped with dkms's message and exit 0: the package install succeeds
# and the module is missing at the next boot. A built module is the file
# /lib/modules/KERNEL/updates/dkms/nvidia.ko holding "<version> <flavour>"; the
# package's postrm deletes it on remove and purge.
# Paths are prefixed with $FLEETLAB_ROOT (default /). Exit: 0, 2 on a usage error.
set -e
R="${FLEETLAB_ROOT:-/}"
R="${R%/}"
NAME=nvidia
VERSION="@FLEETLAB_DRIVER_VERSION@"
FLAVOUR="@FLEETLAB_MODULE_FLAVOUR@"
ARCH=x86_64

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

# dkms build + dkms install
build_and_install() {
    kernel=$1
    dest="$R/lib/modules/$kernel/updates/dkms"
    mkdir -p "$dest"
    printf '%s %s\n' "$VERSION" "$FLAVOUR" > "$dest/$NAME.ko.tmp"
    mv "$dest/$NAME.ko.tmp" "$dest/$NAME.ko"
    echo "Building module(s)... done."
    echo "Installing /lib/modules/$kernel/updates/dkms/$NAME.ko"
    echo "Running depmod... done."
}

case "${1:-}" in
    build)
        kernel=$(uname -r)
        echo "Loading new $NAME/$VERSION DKMS files..."
        echo "Building for $kernel"
        echo ""
        if have_headers "$kernel"; then
            echo "Building initial module $NAME/$VERSION for $kernel"
            build_and_install "$kernel"
        else
            echo "Module build for kernel $kernel was skipped since the"
            echo "kernel headers for this kernel do not seem to be installed."
        fi
        ;;
    autoinstall)
        kernel="${2:-$(uname -r)}"
        if have_headers "$kernel"; then
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

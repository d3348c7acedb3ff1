#!/bin/sh
# Fleet lab stand-in for dkms's kernel hook (Debian's dkms 3.2 installs this one script
# as /etc/kernel/postinst.d/dkms and /etc/kernel/header_postinst.d/dkms), shipped by
# @PACKAGE@, which carries the lab's DKMS stand-in. A kernel's image or headers package
# runs it with the kernel's version: as dkms_autoinstaller, it skips the kernel without
# its headers (/lib/modules/K/build/include), else has DKMS build and install the NVIDIA
# module for it (autoinstall: nothing to do where it is installed already). Not dkms.
# Paths are prefixed with $FLEETLAB_ROOT (default /).
R="${FLEETLAB_ROOT:-/}"
R="${R%/}"
inst_kern=$1
if [ -x "$R/usr/lib/fleetlab/nvidia-dkms" ]; then
    exec "$R/usr/lib/fleetlab/nvidia-dkms" autoinstall "$inst_kern"
fi

#!/bin/sh
# Whether UEFI Secure Boot is on, and whether a certificate is enrolled in the MOK list
# (shim's Machine Owner Keys, which the kernel trusts for modules): what the driver step
# reads before it installs anything that DKMS builds.
# The state comes from `mokutil --sb-state` where mokutil is installed (shim-signed
# depends on it), else from the EFI variable SecureBoot (and SetupMode: a platform in
# setup mode does not enforce, as mokutil reads it); no EFI variables: no Secure Boot.
# secure-boot.sh HOST_CERT [CERT_BASE64]
#   HOST_CERT    the certificate DKMS signs with on this host (tested where it exists)
#   CERT_BASE64  a certificate (DER) from the operator, base64: tested too ('' none)
# Exit: 0 always; prints via=mokutil|efivars|none, sb=<mokutil's first line, or
# "SecureBoot enabled"/"SecureBoot disabled" from the variables>, and with Secure Boot
# on host=/given= lines: `mokutil --test-key` exit status and its first line (absent:
# no such certificate).
host_cert=$1
given=${2:-}
guid=8be4df61-93ca-11d2-aa0d-00e098032b8c  # EFI_GLOBAL_VARIABLE
shim=605dab50-e046-4300-abb6-3dd810dd8b23  # shim's own (MokSBStateRT)
vars=/sys/firmware/efi/efivars
# efi_byte NAME-GUID: the variable's value byte (after its 4 attribute bytes), '' if absent
efi_byte() {
    [ -r "$vars/$1" ] || return 0
    od -An -t u1 -j 4 -N 1 "$vars/$1" 2>/dev/null | tr -d ' \n'
}
if command -v mokutil >/dev/null 2>&1; then
    echo via=mokutil
    said=$(mokutil --sb-state 2>&1)
    state=$(printf '%s\n' "$said" | head -n 1)
    # MokSBState set: shim does not validate and the kernel does not enforce module
    # signatures (mokutil prints this second line; linux efi/libstub/secureboot.c)
    case $said in
    *"SecureBoot validation is disabled in shim"*) state="SecureBoot disabled" ;;
    esac
elif [ -d "$vars" ]; then
    echo via=efivars
    if [ "$(efi_byte "SecureBoot-$guid")" = 1 ] && [ "$(efi_byte "SetupMode-$guid")" != 1 ] &&
        [ "$(efi_byte "MokSBStateRT-$shim")" != 1 ]; then
        state="SecureBoot enabled"
    else
        state="SecureBoot disabled"
    fi
else
    echo via=none
    state=""
fi
printf 'sb=%s\n' "$state"
[ "$state" = "SecureBoot enabled" ] || exit 0
command -v mokutil >/dev/null 2>&1 || exit 0
# test_key NAME FILE: NAME=<exit status> <mokutil's first line>
test_key() {
    out=$(mokutil --test-key "$2" 2>&1)
    rc=$?
    printf '%s=%s %s\n' "$1" "$rc" "$(printf '%s\n' "$out" | head -n 1)"
}
if [ -e "$host_cert" ]; then
    test_key host "$host_cert"
fi
if [ -n "$given" ]; then
    tmp=$(mktemp) || exit 0
    if printf '%s' "$given" | base64 -d >"$tmp" 2>/dev/null; then
        test_key given "$tmp"
    else
        echo "given=2 the certificate could not be decoded on the host"
    fi
    rm -f "$tmp"
fi
exit 0

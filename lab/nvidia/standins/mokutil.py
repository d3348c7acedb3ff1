#!/usr/bin/python3
# Fleet lab stand-in for mokutil (package mokutil @FLEETLAB_MOKUTIL_VERSION@ of the
# Debian archive; not its code). A lab host is a container: it has no firmware, so the
# lab simulates an EFI machine with shim:
#   /etc/fleetlab/secureboot        "enabled": Secure Boot on (anything else or absent: off)
#   /etc/fleetlab/mok-enrolled/*    the certificates (DER) enrolled in MOK (MokListRT),
#                                   as after `mokutil --import` and the console's
#                                   confirmation at the next boot
# Like mokutil 0.7 (src/mokutil.c):
#   --sb-state       "SecureBoot enabled" or "SecureBoot disabled" (exit 0 either way)
#   --test-key FILE  "FILE is already enrolled" (exit 0), "FILE is not enrolled" (exit 1);
#                    a file that cannot be read: "Failed to open FILE", one that is no DER
#                    X.509 certificate: "Not a valid x509 certificate" (stderr, exit 255)
# Other commands are not simulated (a message, exit 1). Every absolute path is prefixed
# with $FLEETLAB_ROOT (default /).
import hashlib
import os
import sys

SECUREBOOT = "/etc/fleetlab/secureboot"
ENROLLED = "/etc/fleetlab/mok-enrolled"


def host_path(path):
    return os.path.join(os.environ.get("FLEETLAB_ROOT") or "/", path.lstrip("/"))


def secure_boot():
    try:
        with open(host_path(SECUREBOOT), encoding="utf-8") as f:
            return f.read().strip() == "enabled"
    except OSError:
        return False


def enrolled():
    """sha256 of each enrolled certificate."""
    found = set()
    directory = host_path(ENROLLED)
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        with open(os.path.join(directory, name), "rb") as f:
            found.add(hashlib.sha256(f.read()).hexdigest())
    return found


def is_der_certificate(data):
    # an X.509 certificate is a DER SEQUENCE with a long-form length (0x30 0x82 ...)
    return len(data) > 4 and data[0] == 0x30 and data[1] in (0x81, 0x82, 0x83)


def test_key(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        sys.stderr.write(f"Failed to open {path}\n")
        return 255
    if not is_der_certificate(data):
        sys.stderr.write("Not a valid x509 certificate\n")
        return 255
    if hashlib.sha256(data).hexdigest() in enrolled():
        print(f"{path} is already enrolled")
        return 0
    print(f"{path} is not enrolled")
    return 1


def main(argv):
    if argv[:1] == ["--sb-state"]:
        if secure_boot():
            print("SecureBoot enabled")
            return 0
        print("SecureBoot disabled")
        return 0  # as mokutil's sb_state: 0 either way (only --is-sb-enabled says by status)
    if argv[:1] in (["--test-key"], ["-t"]) and len(argv) == 2:
        return test_key(argv[1])
    sys.stderr.write("mokutil (fleet lab stand-in): only --sb-state and --test-key FILE "
                     "are simulated\n")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

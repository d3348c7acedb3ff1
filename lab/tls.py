"""The lab's certificate authority: certificates for lab hosts that clients verify.

Operators bring their own certificates (nginx_tls: files); in the lab this CA plays
the part of theirs. It lives in the lab's state directory and is made once.
"""

from __future__ import annotations

import fcntl
import subprocess
from pathlib import Path

from lab.engine import LabError
from lab.state import state_root


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"openssl {args[0]}: {proc.stderr.strip().splitlines()[-1:]}")


def ca(state_dir: Path) -> tuple[Path, Path]:
    """(certificate, key) of the lab's CA, made on first use."""
    directory = state_dir / "ca"
    cert, key = directory / "ca.pem", directory / "ca.key"
    if not cert.exists():
        directory.mkdir(parents=True, exist_ok=True)
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                 "-subj", "/CN=fleetlab CA", "-keyout", str(key), "-out", str(cert))
        key.chmod(0o600)
    return cert, key


def cloud_ca() -> Path:
    """The directory whose CA (`ca/ca.pem`) vouches for the cloud stand-in's `ollama.com`:
    one for every lab of this machine, so that the stand-in Ollama images, which trust it
    as the official image trusts the public CAs, are the same in every lab (built once,
    never rebuilt by a lab starting beside another). Made under a lock; renewed when it
    has less than 7 days left (the images then change with it)."""
    root = state_root() / "cloud-ca"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cert = root / "ca" / "ca.pem"
        if cert.exists() and subprocess.run(
                ["openssl", "x509", "-checkend", str(7 * 86400), "-noout", "-in", str(cert)],
                capture_output=True).returncode != 0:
            cert.unlink()
        ca(root)
    return root


def issue(state_dir: Path, name: str, address: str, dns_names: tuple[str, ...] = (),
          ca_dir: Path | None = None) -> dict[str, str]:
    """A certificate for lab host NAME at ADDRESS, and its DNS_NAMES (`gpu-1.<lab>.test`,
    the front door's `llm.<lab>.test`), in STATE_DIR, signed by the lab's CA (or the one
    in CA_DIR): paths of the CA certificate, the host's certificate and its key."""
    ca_cert, ca_key = ca(ca_dir or state_dir)
    directory = state_dir / "ca" / name
    directory.mkdir(parents=True, exist_ok=True)
    cert, key, csr = directory / "cert.pem", directory / "key.pem", directory / "req.csr"
    ext = directory / "ext.cnf"
    names = "".join(f",DNS:{n}" for n in dns_names)
    ext.write_text(f"subjectAltName=IP:{address},DNS:{name}{names}\n"
                   "extendedKeyUsage=serverAuth\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", str(key), "-out", str(csr))
    key.chmod(0o600)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", "7", "-extfile", str(ext), "-out", str(cert))
    return {"ca": str(ca_cert), "cert": str(cert), "key": str(key)}

"""Throwaway TLS material for tests: a CA, a server certificate for localhost / 127.0.0.1, a client certificate.

Made with the `openssl` CLI (the `cryptography` package is not a dependency). EC P-256 keys, valid one day.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    """Paths of PEM files; `other_ca` signed nothing here (a client trusting it must fail)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path

    def read(self, name: str) -> bytes:
        path: Path = getattr(self, name)
        return path.read_bytes()


def have_openssl() -> bool:
    return shutil.which("openssl") is not None


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _key(cwd: Path, name: str) -> None:
    _run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", name, cwd=cwd)


def _ca(cwd: Path, stem: str, subject: str) -> None:
    _key(cwd, f"{stem}.key")
    _run("req", "-x509", "-new", "-key", f"{stem}.key", "-sha256", "-days", "1", "-subj", subject,
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         "-out", f"{stem}.pem", cwd=cwd)


def _leaf(cwd: Path, stem: str, subject: str, extensions: str) -> None:
    _key(cwd, f"{stem}.key")
    _run("req", "-new", "-key", f"{stem}.key", "-subj", subject, "-out", f"{stem}.csr", cwd=cwd)
    (cwd / f"{stem}.ext").write_text(extensions)
    _run("x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-days", "1", "-sha256", "-extfile", f"{stem}.ext", "-out", f"{stem}.pem", cwd=cwd)


def make_certs(directory: Path) -> TlsFiles:
    """Write ca.pem, server.pem/key, client.pem/key and other-ca.pem into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    _ca(directory, "ca", "/CN=TradeGuard test CA")
    _ca(directory, "other-ca", "/CN=Some other CA")
    _leaf(directory, "server", "/CN=localhost",
          "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
          "keyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n")
    _leaf(directory, "client", "/CN=trader-bot",
          "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n")
    return TlsFiles(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        other_ca=directory / "other-ca.pem",
    )

"""A throwaway certificate authority and certificates for a local stack (`splitspec up --tls-dir DIR`).

DIR keeps the CA (ca.pem, and ca-key.pem readable by its owner only) across runs, so that clients
which trust ca.pem keep trusting the stack; the services' certificate (server.pem, server-key.pem,
valid for localhost, the loopback addresses and the host the stack listens on) and the gateway's
client certificate (client.pem, client-key.pem) are made again at each start. Not for production:
there, certificates come from the cluster's own authority (cert-manager, a service mesh, ...).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 365
LEAF_DAYS = 30


@dataclass(frozen=True)
class StackCertificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.touch(mode=0o600)
    os.chmod(path, 0o600)
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: x509.Name, public_key, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The CA kept in `directory`, made there when missing or expired."""
    cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if cert.not_valid_after_utc > datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=LEAF_DAYS):
            return load_pem_private_key(key_path.read_bytes(), password=None), cert
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=True,
        crl_sign=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        _builder("splitspec throwaway CA", _name("splitspec throwaway CA"), key.public_key(), CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(Encoding.PEM))
    return key, cert


def _subject_names(hosts: list[str], loopback: bool) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*(("localhost", "127.0.0.1", "::1") if loopback else ()), *hosts]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _leaf(
    directory: Path,
    name: str,
    hosts: list[str],
    usage,
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    loopback: bool = True,
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(f"splitspec {name}", ca.subject, key.public_key(), LEAF_DAYS)
        .add_extension(x509.SubjectAlternativeName(_subject_names(hosts, loopback)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(Encoding.PEM))
    return cert_path, key_path


def make_stack_certificates(directory: str | Path, hosts: list[str], loopback: bool = True) -> StackCertificates:
    """The CA in `directory` (kept, or made) and fresh service and client certificates signed by it,
    the service certificate valid for `hosts`, and for localhost and loopback unless `loopback` is False."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _ca(directory)
    server_cert, server_key = _leaf(directory, "server", hosts, ExtendedKeyUsageOID.SERVER_AUTH, ca_key, ca, loopback)
    client_cert, client_key = _leaf(directory, "client", [], ExtendedKeyUsageOID.CLIENT_AUTH, ca_key, ca)
    return StackCertificates(directory / "ca.pem", server_cert, server_key, client_cert, client_key)

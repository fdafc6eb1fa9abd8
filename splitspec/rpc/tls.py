"""TLS for the gRPC servers and the gateway's channels: certificates read from PEM files, checked when
given, and read again when they change on disk.

A server's certificate and CA are re-read at the next handshake after any of their files changes
(grpc.dynamic_ssl_server_credentials asks before every handshake; a stat of each file answers), so a
rotated certificate is served without a restart; connections already open keep theirs. A file caught
half-written keeps the last good pair in service until the next change. A server given a CA requires
its clients to present a certificate it signed (mutual TLS).

A client's credentials are fixed when its channel opens, so the gateway watches its own files
(ClientFilesWatch) and opens new channels when they change (gateway_svc.discovery.BackendPool.renew).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key

from splitspec.errors import SplitspecError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerTls:
    cert_file: str
    key_file: str
    ca_file: str | None = None
    """With a CA, clients must present a certificate it signed (mutual TLS)."""

    def check(self) -> None:
        """Raises SplitspecError naming the flag whose file is missing, unreadable or not what it should be."""
        _ReloadingServerFiles(self)

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials that re-read the files when they change; raises SplitspecError when they are unusable."""
        return _ReloadingServerFiles(self).credentials()


@dataclass(frozen=True)
class ClientTls:
    """How a client verifies the servers it calls (ca_file) and, for mutual TLS, proves who it is."""

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def paths(self) -> list[str]:
        return [p for p in (self.ca_file, self.cert_file, self.key_file) if p is not None]

    def credentials(self) -> grpc.ChannelCredentials:
        ca = read_certificates(self.ca_file, "--tls-ca-file")
        if self.cert_file is None:
            return grpc.ssl_channel_credentials(root_certificates=ca)
        key, chain = read_key_pair(self.cert_file, self.key_file, "--tls-client-cert-file", "--tls-client-key-file")
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=chain)


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SplitspecError(f"cannot read {flag} {path}: {exc.strerror}") from None


def read_certificates(path: str, flag: str) -> bytes:
    """The PEM certificates in `path`, checked to parse."""
    data = _read(path, flag)
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise SplitspecError(f"{flag} {path} holds no PEM certificate") from None
    return data


def read_key_pair(cert_file: str, key_file: str | None, cert_flag: str, key_flag: str) -> tuple[bytes, bytes]:
    """(private key, certificate chain) in PEM, checked to parse and to belong together."""
    if key_file is None:
        raise SplitspecError(f"{cert_flag} needs {key_flag}")
    chain = read_certificates(cert_file, cert_flag)
    key_pem = _read(key_file, key_flag)
    try:
        key = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise SplitspecError(f"{key_flag} {key_file} holds no unencrypted PEM private key") from None
    leaf = x509.load_pem_x509_certificates(chain)[0]
    public = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if leaf.public_key().public_bytes(*public) != key.public_key().public_bytes(*public):
        raise SplitspecError(f"{key_flag} {key_file} is not the key of {cert_flag} {cert_file}")
    return key_pem, chain


def _signature(paths: list[str]) -> tuple:
    """What changes when any of the files is replaced or rewritten."""
    signature = []
    for path in paths:
        try:
            st = os.stat(path)
            signature.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            signature.append(None)
    return tuple(signature)


class ClientFilesWatch:
    """Whether a client's TLS files changed on disk into a usable set since the last look."""

    def __init__(self, tls: ClientTls) -> None:
        self._tls = tls
        self._signature = _signature(tls.paths)

    def renewed(self) -> bool:
        """True once per change that reads well; a change caught half-written is logged and waited out
        (the next write changes the files again)."""
        signature = _signature(self._tls.paths)
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            self._tls.credentials()
        except SplitspecError as exc:
            log.warning("client TLS files changed but cannot be used (%s); keeping the open channels", exc)
            return False
        return True


class _ReloadingServerFiles:
    def __init__(self, tls: ServerTls) -> None:
        self._tls = tls
        self._paths = [p for p in (tls.cert_file, tls.key_file, tls.ca_file) if p is not None]
        self._lock = threading.Lock()
        self._signature = _signature(self._paths)
        self._initial = self._configuration()

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        key, chain = read_key_pair(self._tls.cert_file, self._tls.key_file, "--tls-cert-file", "--tls-key-file")
        ca = read_certificates(self._tls.ca_file, "--tls-ca-file") if self._tls.ca_file else None
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each handshake (on one of its threads): a new configuration when the
        files changed and read well, else None (keep the current one)."""
        with self._lock:
            signature = _signature(self._paths)
            if signature == self._signature:
                return None
            self._signature = signature
            try:
                configuration = self._configuration()
            except SplitspecError as exc:
                log.warning("TLS files changed but cannot be used (%s); serving the previous certificate", exc)
                return None
            log.warning("TLS certificate re-read from %s", self._tls.cert_file)
            return configuration

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self.fetch, require_client_authentication=self._tls.ca_file is not None
        )

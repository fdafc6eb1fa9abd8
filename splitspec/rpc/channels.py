"""How a service opens its client channels to other pods (the gateway to verifiers and proposers, a
verifier to proposers for remote drafts): message limits, keepalive, and TLS."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from splitspec.rpc.tls import ClientTls


@dataclass(frozen=True)
class Channels:
    options: list[tuple[str, int]]
    """Message limits, and keepalive: how soon a silent peer counts as gone."""
    tls: ClientTls | None = None
    """None: plaintext. The files are read for each new channel; when they change, the gateway opens new
    channels to every pod (gateway_svc.discovery.keep_resolving)."""

    def open(self, address: str, server_name: str | None = None) -> grpc.aio.Channel:
        """server_name: what the peer's certificate must name, when not the host in `address`."""
        if self.tls is None:
            return grpc.aio.insecure_channel(address, options=self.options)
        options = self.options + ([("grpc.ssl_target_name_override", server_name)] if server_name else [])
        return grpc.aio.secure_channel(address, self.tls.credentials(), options=options)

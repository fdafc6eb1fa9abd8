"""TLS on every port, mutual between the services (issue 17): a real stack with certificates from
`splitspec up --tls-dir`'s throwaway CA, clients with and without the right certificates, and a
certificate replaced on disk while a server runs."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
from cli_run import assert_one_line_error, splitspec
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_stack import running_stack, start_service, wait_for

from splitspec import LLM, SamplingParams
from splitspec.entrypoints.client import build_request, stream_generate
from splitspec.netdelay import DelayProxy
from splitspec.rpc.throwaway_certs import StackCertificates, make_stack_certificates
from splitspec.rpc.tls import ClientTls
from splitspec_protos import splitspec_v1_pb2 as pb
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc

PROMPT = [5, 6, 7, 8, 9, 5, 6, 7]
MAX_TOKENS = 12
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> StackCertificates:
    return make_stack_certificates(tmp_path_factory.mktemp("tls"), [])


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory) -> StackCertificates:
    """From another throwaway CA."""
    return make_stack_certificates(tmp_path_factory.mktemp("other-tls"), [])


def _health(address: str, credentials: grpc.ChannelCredentials | None) -> int | str:
    """SERVING or NOT_SERVING, or the name of the status code the call failed with."""
    options = [("grpc.use_local_subchannel_pool", 1)]  # a fresh connection, so a fresh handshake
    if credentials is None:
        channel = grpc.insecure_channel(address, options=options)
    else:
        channel = grpc.secure_channel(address, credentials, options=options)
    with channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        except grpc.RpcError as exc:
            return exc.code().name


def _mutual(certs: StackCertificates, client: StackCertificates | None = None) -> grpc.ChannelCredentials:
    """Trusting `certs`' CA and presenting `client`'s client certificate (by default certs' own)."""
    client = client or certs
    return ClientTls(str(certs.ca), str(client.client_cert), str(client.client_key)).credentials()


def test_throwaway_certificates_keep_their_ca_and_renew_the_rest(tmp_path):
    first = make_stack_certificates(tmp_path, ["10.1.2.3", "verifier.example"])
    ca, server = first.ca.read_bytes(), first.server_cert.read_bytes()
    second = make_stack_certificates(tmp_path, [])
    assert second.ca.read_bytes() == ca and second.server_cert.read_bytes() != server
    assert oct((tmp_path / "ca-key.pem").stat().st_mode & 0o777) == "0o600"
    assert oct(second.server_key.stat().st_mode & 0o777) == "0o600"


@pytest.mark.e2e
def test_bad_tls_flags_are_one_line_errors(certs, other_certs, tmp_path):
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    cases = [
        (["serve-verifier", "--tls-ca-file", str(certs.ca)], "--tls-ca-file (mutual TLS) needs --tls-cert-file"),
        (["serve-proposer", "--tls-key-file", str(certs.server_key)], "--tls-key-file needs --tls-cert-file"),
        (["serve-proposer", "--tls-cert-file", str(certs.server_cert)], "--tls-cert-file needs --tls-key-file"),
        (
            [
                "serve-proposer",
                "--tls-cert-file",
                str(certs.server_cert),
                "--tls-key-file",
                str(other_certs.server_key),
            ],
            "is not the key of --tls-cert-file",
        ),
        (["serve-proposer", "--tls-cert-file", str(not_pem), "--tls-key-file", str(certs.server_key)], "no PEM cert"),
        (["serve-gateway", "--tls-ca-file", str(tmp_path / "missing.pem")], "cannot read --tls-ca-file"),
        (["serve-gateway", "--tls-client-cert-file", str(certs.client_cert)], "needs --tls-ca-file"),
    ]
    for args, message in cases:
        assert_one_line_error(splitspec(*args), message)


@pytest.mark.e2e
def test_an_mtls_stack_serves_the_in_process_output_and_refuses_everyone_else(tiny_llama, tmp_path, certs, other_certs):
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    expected = LLM(str(tiny_llama)).generate([{"prompt_token_ids": PROMPT}], params)[0].outputs[0].token_ids
    with running_stack(tiny_llama, tmp_path, tls=certs) as stack:
        request = build_request(PROMPT, temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
        gateway_tls = ClientTls(str(certs.ca))
        streamed = [
            t for r in stream_generate(stack.gateway.address, request, 60, tls=gateway_tls) for t in r.token_ids
        ]
        assert streamed == expected
        assert "(mutual TLS)" in stack.verifier.logs() and "(TLS)" in stack.gateway.logs()

        for service in (stack.verifier, stack.proposers[0]):
            assert _health(service.address, _mutual(certs)) == SERVING, "the gateway's own way in"
            refused = {
                "plaintext": _health(service.address, None),
                "no client certificate": _health(service.address, grpc.ssl_channel_credentials(certs.ca.read_bytes())),
                "a certificate from another CA": _health(service.address, _mutual(certs, client=other_certs)),
                "a server from another CA": _health(service.address, _mutual(other_certs)),
            }
            assert refused == dict.fromkeys(refused, "UNAVAILABLE"), service.name
            assert _health(service.health_address, None) == SERVING, "the plaintext health port"
            with grpc.insecure_channel(service.health_address) as channel, pytest.raises(grpc.RpcError) as err:
                pb_grpc.VerifierStub(channel).GetInfo(pb.InfoRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED, "the health port serves nothing else"
        assert _health(stack.gateway.address, None) == "UNAVAILABLE", "the gateway serves TLS only"


def _replace(path: Path, data: bytes) -> None:
    """As a certificate manager renews a file: written aside, then moved over the old one."""
    aside = path.with_suffix(".new")
    aside.write_bytes(data)
    os.replace(aside, path)


@pytest.mark.e2e
def test_a_certificate_replaced_on_disk_is_served_without_a_restart(tmp_path, certs, other_certs):
    live = {name: tmp_path / f"{name}.pem" for name in ("cert", "key", "ca")}
    for name, source in zip(live, (certs.server_cert, certs.server_key, certs.ca)):
        live[name].write_bytes(source.read_bytes())
    files = ["--tls-cert-file", str(live["cert"]), "--tls-key-file", str(live["key"]), "--tls-ca-file", str(live["ca"])]
    proposer = start_service(
        "proposer", ["serve-proposer", "--method", "ngram", *files], tmp_path, health_port=True, timeout=60
    )
    try:
        assert _health(proposer.address, _mutual(certs)) == SERVING

        live["cert"].write_text("-----BEGIN CERTIFICATE-----\nhalf-writ")  # caught mid-write
        assert _health(proposer.address, _mutual(certs)) == SERVING, "the last good certificate stays in service"
        assert "cannot be used" in proposer.logs()

        for name, source in zip(live, (other_certs.server_cert, other_certs.server_key, other_certs.ca)):
            _replace(live[name], source.read_bytes())
        assert _health(proposer.address, _mutual(other_certs)) == SERVING, "the new certificate and CA, no restart"
        assert _health(proposer.address, _mutual(certs)) == "UNAVAILABLE", "the old CA no longer trusted"
        assert proposer.proc.poll() is None
    finally:
        proposer.stop()


@pytest.mark.e2e
def test_the_gateway_s_client_certificate_replaced_on_disk_is_presented_on_new_channels(
    tiny_llama, tmp_path, certs, other_certs
):
    """The verifier moves to another CA; the gateway's files follow. The link between them is cut after
    both changed, so the gateway must reconnect, which works only with the new files."""
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    expected = LLM(str(tiny_llama)).generate([{"prompt_token_ids": PROMPT}], params)[0].outputs[0].token_ids
    request = build_request(PROMPT, temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    verifier_files = {name: tmp_path / f"verifier-{name}.pem" for name in ("cert", "key", "ca")}
    gateway_files = {name: tmp_path / f"gateway-{name}.pem" for name in ("ca", "cert", "key")}

    def place(source: StackCertificates) -> None:
        pairs = zip(verifier_files.values(), (source.server_cert, source.server_key, source.ca))
        pairs = [*pairs, *zip(gateway_files.values(), (source.ca, source.client_cert, source.client_key))]
        for live, origin in pairs:
            _replace(live, origin.read_bytes())

    place(certs)
    tls = [f"--tls-{flag}-file" for flag in ("cert", "key", "ca")]
    verifier = start_service(
        "verifier",
        [
            "serve-verifier",
            "--model",
            str(tiny_llama),
            *[a for pair in zip(tls, map(str, verifier_files.values())) for a in pair],
        ],
        tmp_path,
        health_port=True,
    )
    stack = ExitStack()
    try:
        stack.callback(verifier.stop)
        host, port = verifier.address.rsplit(":", 1)
        link = stack.enter_context(DelayProxy((host, int(port)), 0.0))
        client_flags = ["--tls-ca-file", "--tls-client-cert-file", "--tls-client-key-file"]
        gateway_args = ["serve-gateway", "--model", str(tiny_llama), "--verifiers", link.address, "--proposers", ""]
        gateway_args += [a for pair in zip(client_flags, map(str, gateway_files.values())) for a in pair]
        gateway = start_service("gateway", [*gateway_args, "--resolve-interval-s", "0.2"], tmp_path)
        stack.callback(gateway.stop)

        def generated() -> list[int]:
            return [t for r in stream_generate(gateway.address, request, 30) for t in r.token_ids]

        assert generated() == expected
        place(other_certs)
        assert wait_for(lambda: "opening new channels" in gateway.logs(), timeout=10), "it saw its new files"
        link_port = int(link.address.rsplit(":", 1)[1])
        link.stop()  # every connection through it is cut
        stack.enter_context(DelayProxy((host, int(port)), 0.0, port=link_port))
        assert generated() == expected, "reconnected with the new certificate and CA"
        assert gateway.proc.poll() is None and verifier.proc.poll() is None
    finally:
        stack.close()


@pytest.mark.e2e
def test_a_pod_found_by_name_must_show_a_certificate_for_that_name(tiny_llama, tmp_path):
    """The verifier's certificate names "localhost" and no address: found as dns:///localhost:P it is
    trusted, reached at its address it is not."""
    named = make_stack_certificates(tmp_path / "named", ["localhost"], loopback=False)
    files = ["--tls-cert-file", str(named.server_cert), "--tls-key-file", str(named.server_key)]
    verifier = start_service(
        "verifier",
        ["serve-verifier", "--model", str(tiny_llama), *files, "--tls-ca-file", str(named.ca)],
        tmp_path,
        health_port=True,
    )
    stack = ExitStack()
    try:
        stack.callback(verifier.stop)
        port = verifier.address.rsplit(":", 1)[1]
        client = ["--tls-ca-file", str(named.ca), "--tls-client-cert-file", str(named.client_cert)]
        client += ["--tls-client-key-file", str(named.client_key), "--proposers", "", "--verifier-wait-s", "1"]
        by_name = start_service(
            "gateway", ["serve-gateway", "--model", str(tiny_llama), "--verifiers", f"dns:///localhost:{port}", *client],
            tmp_path,
            timeout=60,
        )  # fmt: skip
        stack.callback(by_name.stop)
        by_address = start_service(
            "gateway", ["serve-gateway", "--model", str(tiny_llama), "--verifiers", f"127.0.0.1:{port}", *client],
            tmp_path,
            wait=False,
        )  # fmt: skip
        stack.callback(by_address.stop)

        params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
        expected = LLM(str(tiny_llama)).generate([{"prompt_token_ids": PROMPT}], params)[0].outputs[0].token_ids
        request = build_request(PROMPT, temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
        assert [t for r in stream_generate(by_name.address, request, 30) for t in r.token_ids] == expected
        assert wait_for(lambda: _health(by_address.address, None) != "UNAVAILABLE", timeout=60), "it serves gRPC"
        with pytest.raises(grpc.RpcError) as refused:
            list(stream_generate(by_address.address, request, 30))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, "127.0.0.1 is not a name in the certificate"
        assert _health(by_address.address, None) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        stack.close()

"""A verifier calls only the proposers its --proposers lists (verifier_svc.proposer_allowlist): a step
whose remote_draft names any other is refused with PERMISSION_DENIED before anything connects to it."""

from __future__ import annotations

import asyncio
import queue
import select
import socket

import grpc
import pytest
from service_stack import start_service

import verifier_svc.proposer_allowlist as allowlist_module
from splitspec.entrypoints.cli import build_parser
from splitspec.entrypoints.cli_services import up_commands
from splitspec.errors import ServiceError
from splitspec.rpc.targets import Target, parse_targets
from splitspec_protos import splitspec_v1_pb2 as pb
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc
from verifier_svc.proposer_allowlist import RESOLVE_EVERY_S, ProposerAllowList


def _check(targets: str, address: str) -> None:
    asyncio.run(ProposerAllowList(parse_targets(targets)).check(address))


def _refusal(targets: str, address: str) -> ServiceError:
    with pytest.raises(ServiceError) as refused:
        _check(targets, address)
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    return refused.value


def test_a_listed_address_is_allowed():
    _check("10.0.0.1:50053,[fd00::7]:9", "10.0.0.1:50053")
    _check("10.0.0.1:50053,[fd00::7]:9", "[fd00::7]:9")


@pytest.mark.parametrize("address", ["10.1.2.3:50053", "10.0.0.1:50054", "10.0.0.10:50053"])
def test_an_unlisted_address_is_refused_by_name_and_the_message_says_how_to_allow_it(address):
    refused = _refusal("10.0.0.1:50053", address)
    assert refused.message == (
        f"remote_draft.proposer: {address} is not among the proposers this verifier may call; "
        "list it in serve-verifier --proposers"
    )


def test_a_dns_entry_allows_its_own_name_and_the_addresses_it_resolves_to():
    _check("dns:///localhost:7000", "127.0.0.1:7000")
    _check("dns:///localhost:7000", "localhost:7000")
    _refusal("dns:///localhost:7000", "127.0.0.1:7001")
    _refusal("dns:///localhost:7000", "10.1.2.3:7000")


@pytest.mark.parametrize("address", ["127.0.0.1:50053", "localhost:1"])
def test_with_no_proposers_every_remote_draft_is_refused(address):
    refused = _refusal("", address)
    assert address in refused.message and "remote drafts" in refused.message
    assert "serve-verifier --proposers" in refused.message


class _Resolver:
    """resolve_target's stand-in: answers from `addresses` (an OSError instance: fails), counting calls."""

    def __init__(self, addresses) -> None:
        self.addresses = addresses
        self.calls = 0

    async def __call__(self, target: Target) -> set[str]:
        self.calls += 1
        await asyncio.sleep(0.01)
        if isinstance(self.addresses, OSError):
            raise self.addresses
        return set(self.addresses)


def test_a_miss_resolves_again_at_most_once_a_second_and_a_failed_resolution_keeps_the_last_addresses(monkeypatch):
    resolver, now = _Resolver({"10.0.0.1:5"}), [100.0]
    monkeypatch.setattr(allowlist_module, "resolve_target", resolver)
    allow = ProposerAllowList(parse_targets("dns:///pods:5"), clock=lambda: now[0])

    async def allowed(address: str) -> bool:
        try:
            await allow.check(address)
        except ServiceError:
            return False
        return True

    async def main() -> None:
        assert await allowed("10.0.0.1:5") and resolver.calls == 1
        assert await allowed("10.0.0.1:5") and resolver.calls == 1, "a hit resolves nothing"
        resolver.addresses = {"10.0.0.1:5", "10.0.0.2:5"}  # a pod joined
        now[0] += RESOLVE_EVERY_S / 2
        assert not await allowed("10.0.0.2:5") and resolver.calls == 1, "resolved less than a second ago"
        now[0] += RESOLVE_EVERY_S
        assert await allowed("10.0.0.2:5") and resolver.calls == 2
        now[0] += RESOLVE_EVERY_S
        resolver.addresses = {"10.0.0.3:5"}
        assert await asyncio.gather(allowed("10.0.0.3:5"), allowed("10.0.0.3:5")) == [True, True]
        assert resolver.calls == 3, "misses while the name resolves wait for that answer"
        now[0] += RESOLVE_EVERY_S
        resolver.addresses = OSError("resolver down")
        assert not await allowed("10.0.0.9:5") and resolver.calls == 4
        assert await allowed("10.0.0.3:5"), "a name that fails to resolve keeps its last addresses"

    asyncio.run(main())


def test_serve_verifier_takes_proposers_like_the_gateway_and_from_the_environment(monkeypatch):
    monkeypatch.delenv("SPLITSPEC_PROPOSERS", raising=False)
    assert build_parser().parse_args(["serve-verifier"]).proposers == ()
    given = "10.0.0.1:50053,dns:///splitspec-proposer:50053"
    assert build_parser().parse_args(["serve-verifier", "--proposers", given]).proposers == parse_targets(given)
    monkeypatch.setenv("SPLITSPEC_PROPOSERS", given)
    assert build_parser().parse_args(["serve-verifier"]).proposers == parse_targets(given)


@pytest.mark.parametrize("links", [None, {"proposer": "127.0.0.1:41000"}])
def test_up_lets_the_verifier_call_the_proposers_the_gateway_names(links):
    commands = up_commands(build_parser().parse_args(["up", "--direct-drafts"]), links)
    served = {n: build_parser().parse_args(c[c.index(f"serve-{n}") :]) for n, c in commands.items()}
    assert served["verifier"].proposers == served["gateway"].proposers
    assert served["verifier"].proposers == parse_targets((links or {}).get("proposer", "127.0.0.1:50053"))


def _listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()
    return f"{host}:{port}"


def _connected(sock: socket.socket, wait_s: float) -> bool:
    return bool(select.select([sock], [], [], wait_s)[0])


class _VerifyStream:
    """One Verify stream, one request at a time: each call returns that request's response."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._requests: queue.Queue = queue.Queue()
        self._responses = pb_grpc.VerifierStub(channel).Verify(iter(self._requests.get, None), timeout=120)
        self._call_id = 0

    def call(self, request: pb.VerifierRequest) -> pb.VerifierResponse:
        self._call_id += 1
        request.call_id = self._call_id
        self._requests.put(request)
        response = next(self._responses)
        assert response.call_id == self._call_id
        return response

    def close(self) -> None:
        self._requests.put(None)


def _step(proposer: str) -> pb.VerifierRequest:
    request = pb.VerifierRequest(seq_id="s")
    request.step.committed_len = len(PROMPT)
    request.step.remote_draft.num_tokens = 3
    request.step.remote_draft.proposer = proposer
    request.step.remote_draft.timeout_s = 5.0
    return request


PROMPT = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]


@pytest.mark.e2e
def test_a_verifier_refuses_a_remote_draft_from_an_unlisted_proposer_and_never_connects_to_it(tiny_llama, tmp_path):
    """One proposer listed, its steps drafted there; a step naming a listening socket that is not listed
    is refused by name, and the socket sees no connection."""
    unlisted = _listening_socket()
    proposer = start_service("proposer", ["serve-proposer", "--method", "ngram", "-k", "3"], tmp_path)
    args = ["serve-verifier", "--model", str(tiny_llama), "--proposers", proposer.address]
    verifier = start_service("verifier", args, tmp_path)
    try:
        with grpc.insecure_channel(verifier.address) as channel:
            stream = _VerifyStream(channel)
            start = pb.VerifierRequest(seq_id="s")
            start.start.token_ids.extend(PROMPT)
            assert stream.call(start).WhichOneof("kind") == "ack"
            refused = stream.call(_step(_address(unlisted)))
            drafted = stream.call(_step(proposer.address))
            stream.close()
        assert refused.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
        assert refused.error.message == (
            f"remote_draft.proposer: {_address(unlisted)} is not among the proposers this verifier may call; "
            "list it in serve-verifier --proposers"
        )
        assert drafted.WhichOneof("kind") == "result", drafted.error.message
        assert not drafted.result.proposer_failed and drafted.result.committed_len == len(PROMPT)
        assert drafted.result.num_drafted > 0, "the listed proposer drafted"
        assert not _connected(unlisted, wait_s=1.0), "the verifier connected to the unlisted address"
    finally:
        verifier.stop()
        proposer.stop()
        unlisted.close()

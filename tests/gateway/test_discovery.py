"""The gateway's view of its pods: targets as flags give them, the pool that follows what names resolve
to, and the choice of a verifier by the load every gateway puts on it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc
import pytest

from gateway_svc.backends import ProposerBackend, VerifierBackend
from gateway_svc.discovery import BackendPool
from gateway_svc.generation import GatewayCore
from splitspec.drafter_traits import DrafterTraits
from splitspec.errors import ServiceError
from splitspec.rpc.channels import Channels
from splitspec.rpc.grpc_server import channel_options
from splitspec.rpc.targets import Target, parse_targets, resolve_target
from splitspec.sampling_params import SamplingParams
from splitspec_protos import splitspec_v1_pb2 as pb


def test_targets_are_fixed_addresses_or_names_to_resolve():
    assert parse_targets("10.0.0.1:50052, dns:///splitspec-verifier.prod.svc:50052,[fd00::7]:9,") == (
        Target("10.0.0.1", 50052, resolve=False),
        Target("splitspec-verifier.prod.svc", 50052, resolve=True),
        Target("fd00::7", 9, resolve=False),
    )
    assert Target("fd00::7", 9, resolve=False).address == "[fd00::7]:9"
    assert parse_targets("") == ()


@pytest.mark.parametrize("bad", ["verifier", "dns:///verifier", "dns:///:50052", "host:0", "host:65536", "host:x"])
def test_a_target_without_a_usable_port_is_refused_by_name(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("[", r"\[")):
        parse_targets(f"127.0.0.1:1,{bad}")


def test_a_name_resolves_through_the_system_resolver():
    addresses = asyncio.run(resolve_target(Target("localhost", 7000, resolve=True)))
    assert "127.0.0.1:7000" in addresses
    assert asyncio.run(resolve_target(Target("10.9.8.7", 1, resolve=False))) == {"10.9.8.7:1"}


@dataclass
class FakeBackend:
    address: str
    server_name: str | None = None
    num_sequences: int = 0
    retired: bool = False
    superseded: bool = False
    closed: bool = False
    refreshed: bool = False

    def retire(self) -> None:
        self.retired = True

    async def refresh(self) -> bool:
        self.refreshed = True
        return True

    async def close(self) -> None:
        self.closed = True


def _pool_of_two() -> tuple[BackendPool, list[FakeBackend]]:
    """A pool following a name that resolves to 10.0.0.1 and 10.0.0.2, the backends in that order."""
    backends: list[FakeBackend] = []
    pool = BackendPool((Target("pods", 1, resolve=True),), FakeBackend, backends, "verifier")
    pool.apply({"10.0.0.1:1", "10.0.0.2:1"})
    backends.sort(key=lambda x: x.address)
    return pool, backends


def test_the_pool_adds_new_addresses_and_drains_vanished_ones_before_closing_them():
    pool, backends = _pool_of_two()
    a, b = backends
    a.num_sequences = 2
    pool.apply({"10.0.0.2:1", "10.0.0.3:1"})
    assert a.retired and not b.retired and [x.address for x in backends][-1] == "10.0.0.3:1"
    asyncio.run(pool.close_drained())
    assert a in backends and not a.closed, "a retired backend still holding sequences stays until they move"
    a.num_sequences = 0
    asyncio.run(pool.close_drained())
    assert a not in backends and a.closed
    b.retire()
    pool.apply({"10.0.0.2:1", "10.0.0.3:1"})
    assert not b.retired, "listed again before it closed: it serves again"


def test_renewed_client_files_give_every_address_a_new_backend_and_the_old_ones_close_when_empty():
    pool, backends = _pool_of_two()
    busy, idle = backends
    busy.num_sequences = 1
    asyncio.run(pool.renew())
    old, new = backends[:2], backends[2:]
    assert all(b.superseded and not b.retired for b in old), "their sequences run to their end"
    assert [b.address for b in new] == ["10.0.0.1:1", "10.0.0.2:1"] and all(b.refreshed for b in new)
    assert not any(b.superseded or b.retired for b in new), "checked before they take sequences"
    asyncio.run(pool.close_drained())
    assert idle.closed and idle not in backends and busy in backends and not busy.closed
    pool.apply({"10.0.0.2:1"})
    assert busy.retired and new[0].retired and not new[1].retired, "a vanished pod drains on either channel"
    pool.apply({"10.0.0.1:1", "10.0.0.2:1"})
    assert not new[0].retired and busy.retired, "listed again: the new backend serves, the old one still not"


def test_a_superseded_proposer_drafts_for_its_sequences_and_takes_no_new_ones():
    async def check() -> None:
        old, new = (ProposerBackend("127.0.0.1:1", Channels(channel_options())) for _ in range(2))
        old.superseded = True
        for backend in (old, new):
            backend.traits = DrafterTraits("ngram", 4, 128)  # reported and admitted
        core = GatewayCore([], [old, new], None, set(), 1 << 20)
        assert old.available and not old.takes_new, "its sequences stay, with what it holds of them"
        new.num_sequences = 5
        assert core.placement.next_proposer() is new, "though it serves more"
        for backend in (old, new):
            await backend.close()

    asyncio.run(check())


def test_a_name_that_stops_resolving_keeps_its_last_addresses():
    backends: list[FakeBackend] = []
    pool = BackendPool(
        (Target("localhost", 5, resolve=True), Target("no-such-name.invalid", 6, resolve=True)),
        FakeBackend,
        backends,
        "proposer",
    )
    pool._last[Target("no-such-name.invalid", 6, resolve=True)] = {"10.1.1.1:6"}
    asyncio.run(pool.refresh())
    addresses = {b.address for b in backends}
    assert "127.0.0.1:5" in addresses and "10.1.1.1:6" in addresses
    assert not any(b.retired for b in backends)


def test_a_pod_found_by_name_must_show_a_certificate_for_that_name_and_a_fixed_address_for_its_own_host():
    backends: list[FakeBackend] = []
    pool = BackendPool(
        (Target("localhost", 5, resolve=True), Target("10.9.8.7", 6, resolve=False)), FakeBackend, backends, "verifier"
    )
    asyncio.run(pool.refresh())
    names = {b.address: b.server_name for b in backends}
    assert names["127.0.0.1:5"] == "localhost" and names["10.9.8.7:6"] is None


def _verifier_reporting(address: str, num_sequences: int, max_num_seqs: int = 8) -> VerifierBackend:
    backend = VerifierBackend(address, Channels(channel_options()))
    backend.info = pb.VerifierInfo(num_sequences=num_sequences, max_num_seqs=max_num_seqs)
    return backend


def test_load_counts_other_gateways_sequences_and_this_gateway_s_since_the_last_report():
    async def check() -> None:
        busy = _verifier_reporting("127.0.0.1:1", num_sequences=6)  # six from other gateways
        idle = _verifier_reporting("127.0.0.1:2", num_sequences=0)
        assert busy.load == 6 / 8 and idle.load == 0
        busy.info.num_free_blocks, busy.info.num_total_blocks = 30, 120
        assert busy.kv_free_share == 0.25 and idle.kv_free_share == 0.0
        idle.num_sequences = 3  # started here since the report
        assert idle.load == 3 / 8
        busy._own_at_refresh = busy.num_sequences = 2  # two of the six reported are this gateway's
        busy.num_sequences = 0  # and they have ended since
        assert busy.load == 4 / 8
        await busy.close()
        await idle.close()

    asyncio.run(check())


@dataclass
class StartOnly:
    """A verifier as Placement.start_on_a_verifier sees it: its load, and an answer to StartSequence."""

    address: str
    load: float
    answer: ServiceError | None = None
    kv_free_share: float = 0.5
    started: list[str] = field(default_factory=list)
    num_sequences: int = 0
    info: pb.VerifierInfo = field(default_factory=pb.VerifierInfo)
    superseded: bool = False

    def mark_down(self) -> None:
        self.info = None

    async def start(self, seq_id, token_ids, params, seed, *args) -> None:
        if self.answer is not None:
            raise self.answer
        self.started.append(seq_id)


def _start(verifiers) -> StartOnly:
    from splitspec.sequence import Sequence

    core = GatewayCore(verifiers, [], None, set(), 1 << 20)
    seq = Sequence("s", None, [1, 2, 3], SamplingParams(temperature=0), 0)
    return asyncio.run(core.placement.start_on_a_verifier(seq, deadline=0, trace_context=None))


def test_a_sequence_starts_on_the_least_loaded_verifier_and_passes_over_full_or_lost_ones():
    """Load first, then free KV cache; full or lost verifiers are passed over."""
    full = ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, "no free KV blocks")
    lost = ServiceError(grpc.StatusCode.UNAVAILABLE, "going away")
    assert _start([StartOnly("a", 0.5), StartOnly("b", 0.25), StartOnly("c", 0.75)]).address == "b"
    tied = [StartOnly("a", 0.25, kv_free_share=0.2), StartOnly("b", 0.25, kv_free_share=0.9)]
    assert _start(tied).address == "b", "at equal load, the one with more free KV cache"
    assert _start([StartOnly("a", 0.5), StartOnly("b", 0.25, full), StartOnly("c", 0.75)]).address == "a"
    down = StartOnly("b", 0.0, lost)
    assert _start([StartOnly("a", 0.5), down]).address == "a" and down.info is None
    superseded = StartOnly("b", 0.25, superseded=True)
    assert _start([StartOnly("a", 0.5), superseded]).address == "a", "a new channel to b would take it"
    with pytest.raises(ServiceError) as raised:
        _start([StartOnly("a", 0.5, full), StartOnly("b", 0.25, full)])
    assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
